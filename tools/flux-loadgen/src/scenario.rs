//! What every scenario shares: the gateway target (and the Kafka broker, if any), payload
//! templates, connecting many clients with bounded concurrency, the once-a-second /proc
//! sampler and the JSON line.

pub mod connect;
pub mod fanout;
pub mod floor;
pub mod hostile;
pub mod idle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientError, SioClient};
use crate::gateway::{Gateway, Publisher};
use crate::kafka::{KafkaInjector, KafkaProcess};
use crate::procfs::{CpuMeter, ProcSample};

pub const TICKER_TOPIC: &str = "crypto.ticker.event.updated";
pub const TOPCOINS_TOPIC: &str = "crypto.topcoins.event.updated";
pub const NEWS_TOPIC: &str = "news.service.event.updated";
pub const MOVERS_TOPIC: &str = "crypto.movers.event.updated";
pub const STOCKS_TOPIC: &str = "stock.service.event.updated";

/// The replies a joining client gets when all four snapshots are cached (hydration).
pub const HYDRATION_EVENTS: [&str; 4] = [
    "newsUpdate",
    "cryptoTopCoinsResponse",
    "cryptoTopMoversResponse",
    "stockTopPerformersResponse",
];

/// A valid location: passes D7, joins `weather.Pune` and the three global rooms.
pub const LOCATION: &str = r#"{"city":"Pune","region":"Maharashtra","country":"IN","lat":18.52,"lon":73.85,"ip":"127.0.0.1"}"#;

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Common {
    /// Gateway address (ignored with --spawn, which picks a free port).
    #[arg(long, global = true, default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// Pid of the gateway, to sample its CPU and RSS from /proc.
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    /// Spawn this flux-bff binary in embedded benchmark mode (admin publish on, simulator
    /// off, free loopback port) and stop it at the end.
    #[arg(long, global = true)]
    pub spawn: Option<PathBuf>,
    /// Extra KEY=VALUE environment for the spawned gateway (repeatable).
    #[arg(long = "gateway-env", global = true)]
    pub gateway_env: Vec<String>,
    /// Write the spawned gateway's stdout/stderr here.
    #[arg(long = "gateway-log", global = true)]
    pub gateway_log: Option<PathBuf>,
    /// Spread client sockets over 127.0.0.1 ..= 127.0.0.N (bind before connect).
    #[arg(long, global = true, default_value_t = 8)]
    pub sources: usize,
    /// Tokio worker threads of the load generator (default: number of CPUs).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Initial read buffer per client socket, bytes.
    #[arg(long = "buf-size", global = true, default_value_t = 16 * 1024)]
    pub buf_size: usize,
    /// Send the headers Chromium sends with a socket.io-client WebSocket upgrade (user agent,
    /// origin, languages, a session cookie, extensions), not just the ones the upgrade needs.
    /// Engine.IO keeps each session's request head, so they cost memory per connection.
    #[arg(long = "browser-headers", global = true)]
    pub browser_headers: bool,
    /// Offer permessage-deflate on every upgrade (as browsers and Node's `ws` do) and inflate
    /// the compressed messages of a server that accepts it. `--browser-headers` offers it
    /// too. Without either, no extension is offered and every message arrives plain.
    #[arg(long, global = true)]
    pub deflate: bool,
    /// How many connection attempts run at once.
    #[arg(long = "connect-concurrency", global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Append the result as one JSON line to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Kafka mode: produce the events to this bootstrap broker (`host:port`) instead of
    /// `POST /admin/publish`; with --spawn, the gateway runs in Kafka mode against it.
    #[arg(long, global = true, conflicts_with = "spawn_kafka")]
    pub kafka: Option<String>,
    /// Kafka mode against an Apache Kafka broker (`scripts/kafka.sh run`, data in a temporary
    /// directory) started on a free loopback port for the run and stopped at the end.
    #[arg(long = "spawn-kafka", global = true)]
    pub spawn_kafka: bool,
    /// The script for --spawn-kafka (default: scripts/kafka.sh under the working directory,
    /// else in the source tree the executable was built in).
    #[arg(long = "kafka-script", global = true)]
    pub kafka_script: Option<PathBuf>,
    /// Write the spawned broker's output here.
    #[arg(long = "kafka-log", global = true)]
    pub kafka_log: Option<PathBuf>,
    /// Kafka mode: the spawned gateway's `FLUX_KAFKA__FETCH_MAX_WAIT` (e.g. `20ms`), how long
    /// the broker may hold a fetch that finds nothing new. Default: the gateway's.
    #[arg(long = "fetch-max-wait", global = true)]
    pub fetch_max_wait: Option<String>,
}

impl Common {
    /// How events reach the gateway: `kafka` or `admin-publish`.
    pub fn injection(&self) -> &'static str {
        if self.kafka.is_some() || self.spawn_kafka {
            "kafka"
        } else {
            "admin-publish"
        }
    }

    /// The fetch max wait the spawned gateway runs with, when this tool sets it.
    pub fn gateway_fetch_max_wait(&self) -> Option<String> {
        let from_env = self.gateway_env.iter().rev().find_map(|kv| {
            kv.strip_prefix("FLUX_KAFKA__FETCH_MAX_WAIT=")
                .map(str::to_owned)
        });
        from_env.or_else(|| self.fetch_max_wait.clone())
    }
}

/// The gateway resolved from the options.
pub async fn target(common: &Common) -> anyhow::Result<Gateway> {
    let broker = if common.spawn_kafka {
        let t = KafkaProcess::spawn(common.kafka_script.as_deref(), common.kafka_log.as_deref())
            .await?;
        eprintln!(
            "flux-loadgen: spawned Apache Kafka (pid {}) on {}",
            t.pid.unwrap_or(0),
            t.bootstrap
        );
        Some(t)
    } else {
        None
    };
    let kafka = broker
        .as_ref()
        .map(|t| t.bootstrap.clone())
        .or_else(|| common.kafka.clone());
    let gw = match &common.spawn {
        Some(bin) => {
            let mut env = Vec::new();
            if let Some(wait) = &common.fetch_max_wait {
                env.push(format!("FLUX_KAFKA__FETCH_MAX_WAIT={wait}"));
            }
            env.extend(common.gateway_env.iter().cloned());
            let gw =
                Gateway::spawn(bin, kafka.as_deref(), &env, common.gateway_log.as_deref()).await?;
            eprintln!(
                "flux-loadgen: spawned {} (pid {}) on {}{}",
                bin.display(),
                gw.pid.unwrap_or(0),
                gw.addr,
                match &kafka {
                    Some(k) => format!(" in Kafka mode against {k}"),
                    None => String::new(),
                }
            );
            gw
        }
        None => Gateway::attach(common.addr, common.pid),
    };
    Ok(match kafka {
        Some(k) => gw.with_kafka(k, broker),
        None => gw,
    })
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixtures are valid JSON (checked by a unit test)")
}

/// A compact fixture value, ready to publish.
pub fn topcoins_value() -> String {
    fixture(include_str!(
        "../../../fixtures/crypto.topcoins.event.updated.json"
    ))
    .to_string()
}

pub fn news_value() -> String {
    fixture(include_str!(
        "../../../fixtures/news.service.event.updated.json"
    ))
    .to_string()
}

pub fn movers_value() -> String {
    fixture(include_str!(
        "../../../fixtures/crypto.movers.event.updated.json"
    ))
    .to_string()
}

pub fn stocks_value() -> String {
    fixture(include_str!(
        "../../../fixtures/stock.service.event.updated.json"
    ))
    .to_string()
}

/// Product ids used for tickers.
pub fn products(n: usize) -> Vec<String> {
    const KNOWN: [&str; 10] = [
        "BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD", "AVAX-USD", "DOT-USD",
        "LINK-USD", "LTC-USD",
    ];
    (0..n.max(1))
        .map(|i| match KNOWN.get(i) {
            Some(p) => (*p).to_owned(),
            None => format!("COIN{i}-USD"),
        })
        .collect()
}

/// `len` letters and digits, the same for the same `seed` (an xorshift on its bytes).
fn filler(len: usize, seed: &str) -> String {
    const CHARS: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            CHARS[(x % 36) as usize] as char
        })
        .collect()
}

/// Ticker record values shaped like the fixture with `lg_ts` (µs) as the first field, so
/// the receive-side scan finds it early. Split around the timestamp to build lines cheaply.
pub struct TickerTemplate {
    /// Per product: the text after `{"lg_ts":<us>`.
    tails: Vec<String>,
}

impl TickerTemplate {
    /// `pad` bytes of filler go into a trailing `lg_pad` field (to match a frame size). The
    /// filler is pseudo-random letters and digits, not one repeated character, so that it
    /// does not compress better than the prices it stands for (permessage-deflate).
    pub fn new(products: &[String], pad: usize) -> Self {
        let base = fixture(include_str!(
            "../../../fixtures/crypto.ticker.event.updated.json"
        ));
        let tails = products
            .iter()
            .map(|p| {
                let mut v = base.clone();
                v["data"]["product_id"] = Value::String(p.clone());
                if pad > 0 {
                    v["lg_pad"] = Value::String(filler(pad, p));
                }
                let obj = v.to_string();
                // obj starts with `{"source":…`; the line is `{"lg_ts":N,` + obj[1..].
                format!(",{}", &obj[1..])
            })
            .collect();
        Self { tails }
    }

    /// Appends one record line (with a trailing newline) for product `index`.
    pub fn push_line(&self, out: &mut Vec<u8>, index: usize, lg_ts_us: u64) {
        self.push_value(out, index, lg_ts_us);
        out.push(b'\n');
    }

    /// Appends one record value (no newline) for product `index`.
    pub fn push_value(&self, out: &mut Vec<u8>, index: usize, lg_ts_us: u64) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{{\"lg_ts\":{lg_ts_us}");
        out.extend_from_slice(self.tails[index % self.tails.len()].as_bytes());
    }

    pub fn products(&self) -> usize {
        self.tails.len()
    }

    /// The size of the Socket.IO text message the gateway sends for one record
    /// (`42["cryptoTickerResponse",{"status":"success","data":<value>,"error":null}]`).
    pub fn frame_bytes(&self) -> usize {
        let mut line = Vec::new();
        self.push_line(&mut line, 0, 1_764_201_600_000_000);
        let wrapper = r#"42["cryptoTickerResponse",{"status":"success","data":,"error":null}]"#;
        wrapper.len() + line.len() - 1
    }
}

/// Publishes the cached snapshots hydration sends back (news, top coins; with `all`, movers
/// and stocks too, as a real deployment has them): through the admin hook, or in Kafka mode
/// (`kafka` = bootstrap) through Kafka, returning the producer then.
pub async fn seed_snapshots(
    addr: SocketAddr,
    kafka: Option<&str>,
    all: bool,
) -> anyhow::Result<Option<KafkaInjector>> {
    let mut snapshots: Vec<(&str, Option<&str>, String, &str)> = vec![
        (TOPCOINS_TOPIC, None, topcoins_value(), "top-coins"),
        (NEWS_TOPIC, Some("globalnews"), news_value(), "news"),
    ];
    if all {
        snapshots.push((MOVERS_TOPIC, None, movers_value(), "movers"));
        snapshots.push((STOCKS_TOPIC, None, stocks_value(), "stocks"));
    }
    if let Some(bootstrap) = kafka {
        let mut topics = vec![TICKER_TOPIC];
        topics.extend(snapshots.iter().map(|s| s.0));
        let mut k = KafkaInjector::connect(bootstrap, &topics, Duration::from_secs(30)).await?;
        for (topic, key, value, what) in snapshots {
            k.produce(topic, vec![(key.map(str::to_owned), value.into_bytes())])
                .await
                .with_context(|| format!("seeding the {what} snapshot"))?;
        }
        // The consumers see them within a fetch max wait; the gateway's snapshot consumers may
        // still be starting.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        return Ok(Some(k));
    }
    let mut p = Publisher::connect(addr).await?;
    for (topic, key, value, what) in snapshots {
        p.publish_one(topic, key, value.as_bytes())
            .await
            .with_context(|| format!("seeding the {what} snapshot"))?;
    }
    // Let the consumers write the cache before clients ask for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(None)
}

/// Connects client `index` and sends `userLocationUpdate`; with `await_join` it also waits
/// (up to `join_timeout_s`) for the hydration reply that follows the room joins.
/// Returns the client and whether the join was confirmed.
pub async fn connect_and_join(
    addr: SocketAddr,
    common: &Common,
    index: usize,
    limit: &Semaphore,
    join_timeout_s: f64,
) -> Result<(SioClient, bool), ClientError> {
    let mut c = connect_located(addr, common, index, limit).await?;
    let confirmed = c
        .wait_until(client::deadline_in(join_timeout_s), "hydration", |p| {
            matches!(p, crate::eio::Packet::Event { name, .. }
                if name == b"cryptoTopCoinsResponse" || name == b"newsUpdate")
        })
        .await;
    match confirmed {
        Ok(()) => Ok((c, true)),
        Err(ClientError::Timeout(_)) => Ok((c, false)),
        Err(e) => Err(e),
    }
}

/// Connects client `index` (at most `limit` connections at once) and sends its
/// `userLocationUpdate`, which joins its rooms and asks for hydration.
async fn connect_located(
    addr: SocketAddr,
    common: &Common,
    index: usize,
    limit: &Semaphore,
) -> Result<SioClient, ClientError> {
    let mut c = {
        let _permit = limit.acquire().await;
        SioClient::connect(
            client::source_addr(index, common.sources),
            addr,
            &format!("lg-{index}"),
            common.buf_size,
            client::deadline_in(30.0),
        )
        .await?
    };
    c.emit("userLocationUpdate", LOCATION).await?;
    Ok(c)
}

/// What a hydrated join brought: the four replies' sizes on the wire, by event name.
pub type HydrationFrames = std::collections::BTreeMap<String, usize>;

/// Connects client `index`, sends `userLocationUpdate` and waits (up to `timeout_s`) until
/// all four hydration replies ([`HYDRATION_EVENTS`]) have arrived; returns the client and
/// the size on the wire of each reply received.
pub async fn connect_and_hydrate(
    addr: SocketAddr,
    common: &Common,
    index: usize,
    limit: &Semaphore,
    timeout_s: f64,
) -> Result<(SioClient, HydrationFrames), ClientError> {
    let mut c = connect_located(addr, common, index, limit).await?;
    let deadline = client::deadline_in(timeout_s);
    let mut frames = HydrationFrames::new();
    while frames.len() < HYDRATION_EVENTS.len() {
        let batch = c.next_batch_sized(|p, wire| {
            if let crate::eio::Packet::Event { name, .. } = p
                && let Some(event) = HYDRATION_EVENTS.iter().find(|e| e.as_bytes() == name)
            {
                frames.insert((*event).to_owned(), wire);
            }
        });
        match tokio::time::timeout_at(deadline, batch).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(ClientError::Timeout("the four hydration replies")),
        }
    }
    Ok((c, frames))
}

/// One second of the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelineRow {
    pub t_s: u64,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub gw_cpu_pct: f64,
    pub gw_rss_mb: f64,
    pub lg_cpu_pct: f64,
}

/// Samples the gateway and this process once a second until cancelled.
pub struct Sampler {
    rows: Arc<Mutex<Vec<(ProcSample, ProcSample)>>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(gw_pid: Option<u32>, max_secs: usize) -> Self {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (r, c) = (rows.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut gw = gw_pid.map(|p| CpuMeter::new(Some(p)));
            let mut me = CpuMeter::new(None);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for _ in 0..max_secs {
                tokio::select! {
                    () = c.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let g = gw.as_mut().and_then(CpuMeter::sample).unwrap_or_default();
                let m = me.sample().unwrap_or_default();
                if let Ok(mut rows) = r.lock() {
                    rows.push((g, m));
                }
            }
        });
        Self { rows, cancel, task }
    }

    /// Stops sampling; returns (gateway, load generator) samples, one per second.
    pub async fn stop(self) -> Vec<(ProcSample, ProcSample)> {
        self.cancel.cancel();
        let _ = self.task.await;
        self.rows.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The RSS of `pid` in MB, if readable.
pub fn rss_mb(pid: Option<u32>) -> Option<f64> {
    crate::procfs::read(Some(pid?)).map(|r| r.rss_kb as f64 / 1024.0)
}

/// Writes `value` as one JSON line to `--json`, if given.
pub fn write_json(common: &Common, value: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    if let Some(path) = &common.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "{line}")?;
    }
    println!("JSON {line}");
    Ok(())
}

/// Counts errors by kind for the report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorCounts(pub std::collections::BTreeMap<String, u64>);

impl ErrorCounts {
    pub fn add(&mut self, kind: &str) {
        *self.0.entry(kind.to_owned()).or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_parse_and_ticker_lines_are_valid_json() {
        assert!(topcoins_value().starts_with("{\"topCoins\""));
        assert!(news_value().contains("\"payload\""));
        let products = products(12);
        assert_eq!(products[0], "BTC-USD");
        assert_eq!(products[11], "COIN11-USD");
        let t = TickerTemplate::new(&products, 0);
        assert!(
            t.frame_bytes() > 400 && t.frame_bytes() < 520,
            "{}",
            t.frame_bytes()
        );
        let padded = TickerTemplate::new(&products, 44);
        let pad_field = r#","lg_pad":"""#.len() + 44;
        assert_eq!(padded.frame_bytes(), t.frame_bytes() + pad_field);
        let mut out = Vec::new();
        t.push_line(&mut out, 1, 1_764_201_600_123_456);
        t.push_line(&mut out, 13, 7);
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_slice(lines[0]).unwrap();
        assert_eq!(v["lg_ts"], 1_764_201_600_123_456u64);
        assert_eq!(v["data"]["product_id"], "ETH-USD");
        assert_eq!(v["data"]["type"], "ticker");
        assert_eq!(v["source"], "coinbase");
        let v: Value = serde_json::from_slice(lines[1]).unwrap();
        assert_eq!(v["data"]["product_id"], "ETH-USD");
        let scanner = crate::eio::TimestampScanner::default();
        assert_eq!(scanner.scan(lines[1]), Some(7));
    }
}
