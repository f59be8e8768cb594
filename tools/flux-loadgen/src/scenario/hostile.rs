//! `hostile`: attacks on the gateway at once, from 127.0.0.1, while one observer (from
//! 127.0.0.2, so that a per-address limit does not count it with the attackers) receives
//! tickers injected at a steady rate: half-open WebSockets (upgraded, never joining the
//! namespace), slowloris request heads, 10 MB WebSocket frames, deeply nested JSON, a flood of
//! client events, and stalled readers. Each attacker reconnects as soon as it is closed. The
//! report gives the observer's longest gap between tickers, the gateway's RSS peak, and what
//! the gateway counted per attack (`/metrics`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, LOCATION, TickerTemplate};
use crate::client::{self, SioClient};
use crate::eio::{self, Packet};
use crate::gateway::{HttpClient, Publisher};
use crate::procfs::CpuMeter;
use crate::ws::WsStream;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct HostileArgs {
    /// WebSockets that upgrade and never send the namespace connect.
    #[arg(long, default_value_t = 5000)]
    pub half_open: usize,
    /// Connections that send a request head a byte at a time.
    #[arg(long, default_value_t = 1000)]
    pub slowloris: usize,
    /// Sockets that send 10 MB WebSocket frames, one a second.
    #[arg(long, default_value_t = 4)]
    pub big_frames: usize,
    /// Sockets that send deeply nested JSON as `userLocationUpdate`, one a second.
    #[arg(long, default_value_t = 10)]
    pub deep_json: usize,
    /// Sockets that flood client events.
    #[arg(long, default_value_t = 200)]
    pub flood_sockets: usize,
    /// Client events per second over all the flood sockets.
    #[arg(long, default_value_t = 10_000)]
    pub flood_rate: u64,
    /// Sockets that join and then never read.
    #[arg(long, default_value_t = 100)]
    pub stalled: usize,
    /// How long the attacks last, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Tickers per second injected for the observer.
    #[arg(long, default_value_t = 20.0)]
    pub tick_rate: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct AttackCounts {
    /// Connection attempts.
    pub attempts: u64,
    /// Attempts refused or closed before the attack got going (limit at accept, upgrade).
    pub refused: u64,
    /// Attacks the gateway ended (closed the connection).
    pub closed_by_gateway: u64,
}

#[derive(Debug, Serialize)]
pub struct HostileReport {
    pub scenario: &'static str,
    pub params: HostileArgs,
    pub ticks_injected: u64,
    pub observer_ticks: u64,
    /// The longest time between two tickers (and from the last one to the end).
    pub observer_max_gap_ms: f64,
    /// From the start (attacks starting meanwhile) to the observer's first ticker.
    pub observer_first_tick_ms: Option<f64>,
    pub observer_connected: bool,
    pub gw_rss_mb_start: f64,
    pub gw_rss_mb_peak: f64,
    pub gw_rss_mb_end: f64,
    pub gw_cpu_pct_avg: f64,
    pub half_open: AttackCounts,
    pub slowloris: AttackCounts,
    pub big_frames: AttackCounts,
    pub deep_json: AttackCounts,
    pub flood: AttackCounts,
    pub flood_events_sent: u64,
    pub stalled: AttackCounts,
    /// The gateway's counters at the end: refusals, disconnections, dropped events.
    pub gateway_counters: std::collections::BTreeMap<String, f64>,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
}

impl Counters {
    fn report(&self) -> AttackCounts {
        AttackCounts {
            attempts: self.attempts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            closed_by_gateway: self.closed.load(Ordering::Relaxed),
        }
    }
}

/// The event tickers reach clients as.
const TICKER_EVENT: &str = "cryptoTickerResponse";
const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OBSERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

pub async fn run(common: &Common, args: &HostileArgs) -> anyhow::Result<HostileReport> {
    let gw = super::target(common).await?;
    let r = run_against(args, gw.addr, gw.pid).await;
    gw.stop().await;
    r
}

async fn run_against(
    args: &HostileArgs,
    addr: SocketAddr,
    pid: Option<u32>,
) -> anyhow::Result<HostileReport> {
    super::seed_snapshots(addr, None, false).await?;
    let mut meter = CpuMeter::new(pid);
    let rss_start = meter.sample().map_or(0.0, |s| s.rss_mb);
    let stop = CancellationToken::new();

    // The observer, connected first.
    let mut observer = SioClient::connect(
        Some(OBSERVER),
        addr,
        "lg-observer",
        8192,
        client::deadline_in(10.0),
    )
    .await?;
    observer.emit("userLocationUpdate", LOCATION).await?;
    let observed = tokio::spawn(observe(observer, stop.clone()));

    let [half_open, slowloris, big, deep, flood, stalled]: [Arc<Counters>; 6] = Default::default();
    let flood_sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.half_open {
        tasks.push(tokio::spawn(half_open_loop(
            addr,
            half_open.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..args.slowloris {
        tasks.push(tokio::spawn(slowloris_loop(
            addr,
            slowloris.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..args.big_frames {
        tasks.push(tokio::spawn(big_frame_loop(
            addr,
            big.clone(),
            stop.clone(),
        )));
    }
    let deep_payload = deep_json(30_000);
    for i in 0..args.deep_json {
        let step = Step::DeepJson(deep_payload.clone());
        tasks.push(tokio::spawn(sio_attack(
            addr,
            format!("lg-deep-{i}"),
            step,
            deep.clone(),
            stop.clone(),
        )));
    }
    let per_socket = (args.flood_rate as f64 / args.flood_sockets.max(1) as f64).max(1.0);
    for i in 0..args.flood_sockets {
        let step = Step::Flood {
            period: Duration::from_secs_f64(1.0 / per_socket),
            sent: flood_sent.clone(),
        };
        tasks.push(tokio::spawn(sio_attack(
            addr,
            format!("lg-flood-{i}"),
            step,
            flood.clone(),
            stop.clone(),
        )));
    }
    for i in 0..args.stalled {
        tasks.push(tokio::spawn(sio_attack(
            addr,
            format!("lg-stalled-{i}"),
            Step::Stall,
            stalled.clone(),
            stop.clone(),
        )));
    }

    // Tickers for the observer, and the gateway's RSS, once a tick.
    let mut publisher = Publisher::connect(addr).await?;
    let template = TickerTemplate::new(&super::products(1), 0);
    let period = Duration::from_secs_f64(1.0 / args.tick_rate.max(0.1));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let (mut ticks, mut rss_peak, mut cpu_sum, mut cpu_n) = (0u64, rss_start, 0.0, 0u32);
    let mut next_sample = started + Duration::from_secs(1);
    while Instant::now() < end {
        let mut value = Vec::new();
        template.push_value(&mut value, 0, crate::stats::unix_micros());
        if publisher
            .publish_one(super::TICKER_TOPIC, Some("BTC-USD"), &value)
            .await
            .is_ok()
        {
            ticks += 1;
        }
        if Instant::now() >= next_sample {
            if let Some(s) = meter.sample() {
                rss_peak = f64::max(rss_peak, s.rss_mb);
                cpu_sum += s.cpu_pct;
                cpu_n += 1;
            }
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep(period).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let observed = observed.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = meter.sample().map_or(0.0, |s| s.rss_mb);
    Ok(HostileReport {
        scenario: "hostile",
        params: args.clone(),
        ticks_injected: ticks,
        observer_ticks: observed.ticks,
        observer_max_gap_ms: observed.max_gap.as_secs_f64() * 1000.0,
        observer_first_tick_ms: observed.first.map(|d| d.as_secs_f64() * 1000.0),
        observer_connected: observed.connected,
        gw_rss_mb_start: rss_start,
        gw_rss_mb_peak: rss_peak.max(rss_end),
        gw_rss_mb_end: rss_end,
        gw_cpu_pct_avg: if cpu_n > 0 {
            cpu_sum / f64::from(cpu_n)
        } else {
            0.0
        },
        half_open: half_open.report(),
        slowloris: slowloris.report(),
        big_frames: big.report(),
        deep_json: deep.report(),
        flood: flood.report(),
        flood_events_sent: flood_sent.load(Ordering::Relaxed),
        stalled: stalled.report(),
        gateway_counters: gateway_counters(addr).await.unwrap_or_default(),
    })
}

/// What the observer saw.
struct Observed {
    ticks: u64,
    /// The longest time between two tickers, and from the last one to the end.
    max_gap: Duration,
    /// From the start of the observation to the first ticker (attacks starting meanwhile).
    first: Option<Duration>,
    connected: bool,
}

/// Receives until `stop`: tickers counted, the longest gap between two, and whether the
/// observer stayed connected.
async fn observe(mut c: SioClient, stop: CancellationToken) -> Observed {
    let started = Instant::now();
    let mut seen = Observed {
        ticks: 0,
        max_gap: Duration::ZERO,
        first: None,
        connected: true,
    };
    let mut last: Option<Instant> = None;
    loop {
        let mut got = 0u64;
        let batch = c.next_batch(|p| {
            if let Packet::Event { name, .. } = p
                && name == TICKER_EVENT.as_bytes()
            {
                got += 1;
            }
        });
        let result = tokio::select! {
            () = stop.cancelled() => None,
            r = batch => Some(r),
        };
        if !matches!(result, Some(Ok(_))) {
            seen.connected = result.is_none();
            if let Some(last) = last {
                seen.max_gap = seen.max_gap.max(last.elapsed());
            }
            return seen;
        }
        if got > 0 {
            match last {
                Some(last) => seen.max_gap = seen.max_gap.max(last.elapsed()),
                None => seen.first = Some(started.elapsed()),
            }
            last = Some(Instant::now());
            seen.ticks += got;
        }
    }
}

async fn tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ATTACKER, 0))?;
    socket.connect(addr).await
}

/// A pause before reconnecting, so that a refused attacker does not spin.
async fn pause(stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
}

async fn half_open_loop(addr: SocketAddr, n: Arc<Counters>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        n.attempts.fetch_add(1, Ordering::Relaxed);
        match WsStream::connect(Some(ATTACKER), addr, eio::WS_PATH, 4096).await {
            Ok(mut ws) => {
                // Never send the namespace connect; read (the engine open, pings) until closed.
                let closed = loop {
                    tokio::select! {
                        () = stop.cancelled() => break false,
                        r = ws.read_batch(|_, _| {}) => if r.is_err() { break true },
                    }
                };
                if closed {
                    n.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                n.refused.fetch_add(1, Ordering::Relaxed);
                pause(&stop).await;
            }
        }
    }
}

async fn slowloris_loop(addr: SocketAddr, n: Arc<Counters>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        n.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(mut io) = tcp(addr).await else {
            n.refused.fetch_add(1, Ordering::Relaxed);
            pause(&stop).await;
            continue;
        };
        if io
            .write_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            n.refused.fetch_add(1, Ordering::Relaxed);
            pause(&stop).await;
            continue;
        }
        // One more header byte every 2 s, never the end of the head.
        let (mut reader, mut writer) = io.into_split();
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if writer.write_all(b"X").await.is_err() {
                    return;
                }
            }
        };
        let mut buf = [0u8; 1024];
        let closed = tokio::select! {
            () = stop.cancelled() => false,
            () = trickle => true,
            // A close, or an answer (the gateway ended the attempt either way).
            _ = reader.read(&mut buf) => true,
        };
        if closed {
            n.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn big_frame_loop(addr: SocketAddr, n: Arc<Counters>, stop: CancellationToken) {
    let frame = vec![b'a'; 10 * 1024 * 1024];
    while !stop.is_cancelled() {
        n.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(mut ws) = WsStream::connect(Some(ATTACKER), addr, eio::WS_PATH, 4096).await else {
            n.refused.fetch_add(1, Ordering::Relaxed);
            pause(&stop).await;
            continue;
        };
        let _ = ws.send_text(b"40").await;
        let sent = ws.send_text(&frame).await;
        let closed = sent.is_err() || {
            tokio::select! {
                () = stop.cancelled() => false,
                () = async { while ws.read_batch(|_, _| {}).await.is_ok() {} } => true,
            }
        };
        if closed {
            n.closed.fetch_add(1, Ordering::Relaxed);
        }
        pause(&stop).await;
    }
}

/// `[[[…]]]` `depth` deep: within `socketio.max_payload`, far beyond serde_json's recursion limit.
fn deep_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// What a Socket.IO attacker does on its connection, over and over.
enum Step {
    /// `userLocationUpdate` with this (deeply nested) payload, once a second.
    DeepJson(String),
    /// `cryptoTopCoinsRequest` every `period`, reading what is there meanwhile.
    Flood {
        period: Duration,
        sent: Arc<AtomicU64>,
    },
    /// Joins, then never reads again.
    Stall,
}

impl Step {
    async fn run(&self, c: &mut SioClient) -> Result<(), client::ClientError> {
        match self {
            Step::DeepJson(payload) => {
                c.emit("userLocationUpdate", payload).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Step::Flood { period, sent } => {
                c.emit("cryptoTopCoinsRequest", "{}").await?;
                sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(r) = tokio::time::timeout(*period, c.next_batch(|_| {})).await {
                    r?;
                }
            }
            Step::Stall => {
                c.emit("userLocationUpdate", LOCATION).await?;
                // The gateway's queue for this socket fills up.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Ok(())
    }
}

/// Connects a Socket.IO client from the attacker's address and repeats `step` on it until
/// `stop`; reconnects when the gateway closes it.
async fn sio_attack(
    addr: SocketAddr,
    name: String,
    step: Step,
    n: Arc<Counters>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        n.attempts.fetch_add(1, Ordering::Relaxed);
        let connected =
            SioClient::connect(Some(ATTACKER), addr, &name, 4096, client::deadline_in(10.0)).await;
        let Ok(mut c) = connected else {
            n.refused.fetch_add(1, Ordering::Relaxed);
            pause(&stop).await;
            continue;
        };
        loop {
            let r = tokio::select! {
                () = stop.cancelled() => return,
                r = step.run(&mut c) => r,
            };
            if r.is_err() {
                n.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        pause(&stop).await;
    }
}

/// The gateway's counters of refusals, disconnections and dropped events.
async fn gateway_counters(
    addr: SocketAddr,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut http = HttpClient::connect(addr).await?;
    let (_, body) = http.request("GET", "/metrics", b"").await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| {
            [
                "flux_http_connections_refused_total",
                "flux_socket_disconnects_total",
                "flux_client_events_dropped_total",
                "flux_slow_socket_disconnects_total",
                "flux_locations_invalid_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

pub fn print(r: &HostileReport) {
    println!(
        "observer: {} of {} tickers, longest gap {:.0} ms, first after {:.0} ms, connected to the end: {}",
        r.observer_ticks,
        r.ticks_injected,
        r.observer_max_gap_ms,
        r.observer_first_tick_ms.unwrap_or(f64::NAN),
        r.observer_connected
    );
    println!(
        "gateway RSS: {:.1} MB at start, {:.1} MB peak, {:.1} MB at end; CPU {:.0} %",
        r.gw_rss_mb_start, r.gw_rss_mb_peak, r.gw_rss_mb_end, r.gw_cpu_pct_avg
    );
    for (name, c) in [
        ("half-open", &r.half_open),
        ("slowloris", &r.slowloris),
        ("big frames", &r.big_frames),
        ("deep json", &r.deep_json),
        ("flood", &r.flood),
        ("stalled", &r.stalled),
    ] {
        println!(
            "{name:>10}: {} attempts, {} refused, {} closed by the gateway",
            c.attempts, c.refused, c.closed_by_gateway
        );
    }
    println!("flood events sent: {}", r.flood_events_sent);
    for (name, value) in &r.gateway_counters {
        println!("  {name} {value}");
    }
}
