//! `fanout` and `slow`: N clients in `crypto.global`, M ticker events/s injected through the
//! admin publish hook or produced to Kafka, latency = receive time − `lg_ts`. In `slow`, a
//! share of the clients stop reading after joining (their TCP connections stay open).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, ErrorCounts, Sampler, TICKER_TOPIC, TickerTemplate, TimelineRow};
use crate::eio::{Packet, TimestampScanner};
use crate::gateway::Publisher;
use crate::kafka::{KafkaInjector, Probe};
use crate::stats::{DeliveryStats, DurationHistogram, LatencySummary, unix_micros};

/// Parameters of `fanout` / `slow`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutArgs {
    /// Connected clients, all in `crypto.global`.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Ticker events injected per second (deliveries/s = rate × clients).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Injection time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// After injection, wait at most this long (s) for the remaining deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Injection tick, ms: one ndjson POST (in Kafka mode: one produce request per
    /// partition) per tick carries every event due.
    #[arg(long = "tick-ms", default_value_t = 10)]
    pub tick_ms: u64,
    /// Distinct ticker products (product_id rotates per event).
    #[arg(long, default_value_t = 10)]
    pub products: usize,
    /// Filler bytes per ticker (field `lg_pad`); the default gives the ~520-byte frame
    /// of the issue 5 anchors.
    #[arg(long, default_value_t = 33)]
    pub pad: usize,
    /// A delivery slower than this (ms) counts as late.
    #[arg(long = "late-ms", default_value_t = 1000.0)]
    pub late_ms: f64,
    /// Wait at most this long (s) for each client's join confirmation (hydration reply).
    #[arg(long = "join-timeout", default_value_t = 5.0)]
    pub join_timeout: f64,
}

/// Extra parameter of `slow`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SlowArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Share of clients (0..1) that stop reading from their socket after joining.
    #[arg(long = "slow-share", default_value_t = 0.1)]
    pub slow_share: f64,
}

#[derive(Debug, Default, Serialize)]
struct ClientOutcome {
    received: u64,
    /// Bytes read from the socket while deliveries were recorded.
    read_bytes: u64,
    /// permessage-deflate negotiated.
    deflate: bool,
    /// Messages read while deliveries were recorded, and how many arrived compressed.
    messages: u64,
    compressed: u64,
    ready: bool,
    confirmed: bool,
    slow: bool,
    error: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
struct InjectOutcome {
    events: u64,
    requests: u64,
    elapsed_s: f64,
    /// Duration of each tick's injection (the POST, or every produce request of the tick).
    tick_request: LatencySummary,
    /// CPU of the broker this tool started, % of one core, over the injection.
    broker_cpu_pct: Option<f64>,
}

/// The result line of a fanout / slow run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    /// `admin-publish` (embedded bus) or `kafka`.
    pub injection: &'static str,
    /// Kafka mode: the spawned gateway's `FLUX_KAFKA__FETCH_MAX_WAIT`, when set by this tool.
    pub kafka_fetch_max_wait: Option<String>,
    /// The spawned gateway's extra environment (`--gateway-env`), to tell runs apart.
    pub gateway_env: Vec<String>,
    pub params: FanoutArgs,
    pub slow_share: f64,
    pub clients_ready: u64,
    pub clients_slow: u64,
    pub joins_unconfirmed: u64,
    pub connect_errors: ErrorCounts,
    pub receive_errors: ErrorCounts,
    pub frame_bytes: usize,
    pub events_injected: u64,
    pub inject_elapsed_s: f64,
    /// How long each tick's injection took until acknowledged (admin POST answered, or
    /// Kafka produce acknowledged): the part of the latency before the gateway's consumer.
    pub inject_request: LatencySummary,
    /// Kafka mode with --spawn-kafka: the broker's CPU, % of one core, during injection.
    pub broker_cpu_pct_avg: Option<f64>,
    /// Kafka mode: fetch time − `lg_ts` seen by a plain consumer of the ticker topic with the
    /// gateway's fetch max wait (`kafka_probe_max_wait_ms`): the broker's share of the latency.
    pub kafka_probe: Option<LatencySummary>,
    pub kafka_probe_max_wait_ms: Option<u64>,
    pub kafka_probe_errors: u64,
    pub offered_deliveries_per_s: f64,
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub missing_deliveries: u64,
    pub missing_pct: f64,
    pub late_deliveries: u64,
    pub deliveries_per_s: f64,
    pub steady_deliveries_per_s: f64,
    pub per_client_min: u64,
    pub per_client_max: u64,
    pub latency: LatencySummary,
    pub gw_cpu_pct_avg: f64,
    pub gw_cpu_us_per_delivery: f64,
    pub gw_rss_mb_max: f64,
    /// Bytes the clients read from their sockets while deliveries were recorded (WebSocket
    /// frames as the gateway wrote them, pings included), per delivery received.
    pub client_read_bytes_per_delivery: f64,
    /// Clients that offered permessage-deflate (`--deflate`), and those whose offer the
    /// gateway accepted.
    pub client_deflate_offered: bool,
    pub clients_deflate: u64,
    /// Share of the messages read while deliveries were recorded that arrived compressed, %.
    pub client_compressed_pct: f64,
    /// Compressed messages this tool really inflated over the run; the others were the same
    /// bytes as one inflated before on the same thread (a broadcast), and reused.
    pub client_inflations: u64,
    pub lg_cpu_pct_avg: f64,
    pub timeline: Vec<TimelineRow>,
}

pub async fn run(
    common: &Common,
    args: &FanoutArgs,
    slow_share: f64,
    name: &'static str,
) -> anyhow::Result<FanoutReport> {
    if args.rate <= 0.0 || args.duration <= 0.0 || args.clients == 0 {
        bail!("--clients, --rate and --duration must be positive");
    }
    let gw = super::target(common).await?;
    let result = run_against(common, args, slow_share, name, &gw).await;
    gw.stop().await;
    let mut report = result?;
    if report.kafka_probe.is_some() {
        report.kafka_probe_max_wait_ms = Some(probe_max_wait(common)?.as_millis() as u64);
    }
    report.injection = common.injection();
    report.kafka_fetch_max_wait = if report.injection == "kafka" {
        common.gateway_fetch_max_wait()
    } else {
        None
    };
    report.gateway_env = common.gateway_env.clone();
    Ok(report)
}

async fn run_against(
    common: &Common,
    args: &FanoutArgs,
    slow_share: f64,
    name: &'static str,
    gw: &crate::gateway::Gateway,
) -> anyhow::Result<FanoutReport> {
    let (addr, pid) = (gw.addr, gw.pid);
    // Seed a snapshot so every join is confirmed by its hydration reply.
    let kafka = super::seed_snapshots(addr, gw.kafka.as_deref(), false).await?;
    let slow_every = if slow_share > 0.0 {
        (1.0 / slow_share.min(1.0)).round().max(1.0) as usize
    } else {
        0
    };
    let is_slow = |i: usize| slow_every > 0 && i % slow_every == slow_every - 1;

    let cancel = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let scanner = Arc::new(TimestampScanner::default());
    let total_received = Arc::new(AtomicU64::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let max_secs = (args.duration + args.drain).ceil() as usize + 2;
    // The recorder (and second 0 of the timeline) is created when injection starts.
    let (stats_tx, stats_rx) = tokio::sync::watch::channel::<Option<Arc<DeliveryStats>>>(None);

    eprintln!(
        "flux-loadgen: connecting {} clients to {addr}",
        args.clients
    );
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (common, limit, cancel, scanner) = (
            common.clone(),
            limit.clone(),
            cancel.clone(),
            scanner.clone(),
        );
        let (total_received, settled, mut stats_rx) =
            (total_received.clone(), settled.clone(), stats_rx.clone());
        let join_timeout = args.join_timeout;
        let slow = is_slow(i);
        tasks.push(tokio::spawn(async move {
            let mut out = ClientOutcome { slow, ..ClientOutcome::default() };
            let joined = super::connect_and_join(addr, &common, i, &limit, join_timeout).await;
            settled.fetch_add(1, Ordering::Relaxed);
            let mut c = match joined {
                Ok((c, confirmed)) => {
                    out.ready = true;
                    out.confirmed = confirmed;
                    c
                }
                Err(e) => {
                    out.error = Some(e.kind());
                    return out;
                }
            };
            if slow {
                // Keep the connection open without reading a byte.
                cancel.cancelled().await;
                drop(c);
                return out;
            }
            // Wait for the recorder to exist (it is created when injection starts), reading
            // meanwhile so pings are answered.
            let stats = loop {
                if let Some(s) = stats_rx.borrow_and_update().clone() {
                    break s;
                }
                tokio::select! {
                    () = cancel.cancelled() => return out,
                    r = stats_rx.changed() => if r.is_err() { return out },
                    r = c.next_batch(|_| {}) => if let Err(e) = r { out.error = Some(e.kind()); return out; },
                }
            };
            let read_start = c.read_bytes();
            let (messages_start, compressed_start) = c.messages();
            out.deflate = c.deflate();
            let mut batch: Vec<(u64, u64)> = Vec::with_capacity(64);
            loop {
                let mut now = 0u64;
                let r = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    r = c.next_batch(|p| {
                        if let Packet::Event { name, raw } = p
                            && name == b"cryptoTickerResponse"
                            && let Some(ts) = scanner.scan(raw)
                        {
                            if now == 0 {
                                now = unix_micros();
                            }
                            batch.push((now, now.saturating_sub(ts)));
                        }
                    }) => r,
                };
                if !batch.is_empty() {
                    stats.record_batch(i, &batch);
                    out.received += batch.len() as u64;
                    total_received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                }
                if let Err(e) = r {
                    out.error = Some(e.kind());
                    break;
                }
            }
            out.read_bytes = c.read_bytes() - read_start;
            let (messages, compressed) = c.messages();
            out.messages = messages - messages_start;
            out.compressed = compressed - compressed_start;
            out
        }));
    }
    // Wait (bounded) until every client has connected or failed.
    let connect_deadline = Instant::now() + Duration::from_secs(60 + args.clients as u64 / 50);
    while settled.load(Ordering::Relaxed) < args.clients as u64 && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "flux-loadgen: {} clients settled in {:.1} s; injecting {} events/s for {} s",
        settled.load(Ordering::Relaxed),
        connect_started.elapsed().as_secs_f64(),
        args.rate,
        args.duration
    );

    let stats = Arc::new(DeliveryStats::new(
        64,
        unix_micros(),
        max_secs,
        (args.late_ms * 1000.0) as u64,
    ));
    let _ = stats_tx.send(Some(stats.clone()));
    let sampler = Sampler::start(pid, max_secs + 2);
    let probe = match (&kafka, &gw.kafka) {
        (Some(k), Some(bootstrap)) => {
            let limit = Duration::from_secs_f64(args.duration * 3.0 + args.drain + 20.0);
            let wait = probe_max_wait(common)?;
            Some(
                Probe::start(
                    bootstrap,
                    TICKER_TOPIC,
                    k.partitions(TICKER_TOPIC),
                    wait,
                    limit,
                )
                .await?,
            )
        }
        _ => None,
    };
    let inject = inject(addr, kafka, gw.broker_pid(), args).await;
    let inject = match inject {
        Ok(o) => o,
        Err(e) => {
            cancel.cancel();
            let _ = sampler.stop().await;
            return Err(e);
        }
    };

    // Drain: wait for the deliveries still in flight (bounded by --drain).
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let mut last = total_received.load(Ordering::Relaxed);
    let mut still = 0;
    while Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = total_received.load(Ordering::Relaxed);
        // Stop early once nothing has arrived for a full second.
        if now == last {
            still += 1;
            if still >= 5 {
                break;
            }
        } else {
            still = 0;
        }
        last = now;
    }
    cancel.cancel();
    let procs = sampler.stop().await;
    let probe = match probe {
        Some(p) => Some(p.stop().await),
        None => None,
    };
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_default());
    }
    let mut report = build_report(name, args, slow_share, &outcomes, &inject, &stats, &procs);
    if let Some((summary, errors)) = probe {
        report.kafka_probe = Some(summary);
        report.kafka_probe_errors = errors;
    }
    Ok(report)
}

/// The fetch max wait of the probe consumer: the spawned gateway's, else the gateway's default.
fn probe_max_wait(common: &Common) -> anyhow::Result<Duration> {
    match common.gateway_fetch_max_wait() {
        Some(text) => humantime::parse_duration(&text).map_err(|e| {
            anyhow::anyhow!("--fetch-max-wait {text:?}: {e}; write it like `20ms` or `1s`")
        }),
        None => Ok(crate::kafka::GATEWAY_FETCH_MAX_WAIT),
    }
}

/// Where the events go: the admin hook, or a Kafka producer.
enum Injector {
    Admin(Publisher),
    Kafka(KafkaInjector),
}

/// Injects `rate` events/s for `duration` s, one ndjson POST per tick (in Kafka mode, one
/// produce request per partition per tick, each record keyed by its product id).
async fn inject(
    addr: std::net::SocketAddr,
    kafka: Option<KafkaInjector>,
    broker_pid: Option<u32>,
    args: &FanoutArgs,
) -> anyhow::Result<InjectOutcome> {
    let mut broker_cpu = broker_pid.map(|p| crate::procfs::CpuMeter::new(Some(p)));
    let tick_request = DurationHistogram::default();
    let products = super::products(args.products);
    let template = TickerTemplate::new(&products, args.pad);
    let mut injector = match kafka {
        Some(k) => Injector::Kafka(k),
        None => Injector::Admin(Publisher::connect(addr).await?),
    };
    let total = (args.rate * args.duration).round() as u64;
    let started = Instant::now();
    let hard_stop = started + Duration::from_secs_f64(args.duration * 3.0 + 10.0);
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = InjectOutcome::default();
    let mut body = Vec::with_capacity(64 * 1024);
    while out.events < total {
        tick.tick().await;
        if Instant::now() > hard_stop {
            eprintln!(
                "flux-loadgen: injection could not keep up; stopped at {} of {total} events",
                out.events
            );
            break;
        }
        let due = ((started.elapsed().as_secs_f64() * args.rate) as u64).min(total);
        if due <= out.events {
            continue;
        }
        let ts = unix_micros();
        let sent = Instant::now();
        match &mut injector {
            Injector::Admin(publisher) => {
                body.clear();
                let first = out.events as usize;
                for k in out.events..due {
                    template.push_line(&mut body, k as usize, ts);
                }
                let key = &products[first % template.products()];
                publisher.publish_ndjson(TICKER_TOPIC, key, &body).await?;
                out.requests += 1;
            }
            Injector::Kafka(producer) => {
                let records = (out.events..due)
                    .map(|k| {
                        let mut value = Vec::with_capacity(512);
                        template.push_value(&mut value, k as usize, ts);
                        let key = products[k as usize % template.products()].clone();
                        (Some(key), value)
                    })
                    .collect();
                out.requests += producer.produce(TICKER_TOPIC, records).await?;
            }
        }
        tick_request.record_us(sent.elapsed().as_micros() as u64);
        out.events = due;
    }
    out.elapsed_s = started.elapsed().as_secs_f64();
    out.tick_request = tick_request.summary();
    out.broker_cpu_pct = broker_cpu
        .as_mut()
        .and_then(crate::procfs::CpuMeter::sample)
        .map(|s| s.cpu_pct);
    Ok(out)
}

fn build_report(
    name: &'static str,
    args: &FanoutArgs,
    slow_share: f64,
    outcomes: &[ClientOutcome],
    inject: &InjectOutcome,
    stats: &DeliveryStats,
    procs: &[(crate::procfs::ProcSample, crate::procfs::ProcSample)],
) -> FanoutReport {
    let mut connect_errors = ErrorCounts::default();
    let mut receive_errors = ErrorCounts::default();
    let (mut ready, mut slow, mut unconfirmed, mut received) = (0u64, 0u64, 0u64, 0u64);
    let mut read_bytes = 0u64;
    let (mut deflate, mut messages, mut compressed) = (0u64, 0u64, 0u64);
    let (mut min_c, mut max_c) = (u64::MAX, 0u64);
    for o in outcomes {
        match (o.ready, o.error) {
            (false, Some(e)) => connect_errors.add(e),
            (true, Some(e)) => receive_errors.add(e),
            _ => {}
        }
        if !o.ready {
            continue;
        }
        ready += 1;
        if !o.confirmed {
            unconfirmed += 1;
        }
        if o.slow {
            slow += 1;
            continue;
        }
        received += o.received;
        read_bytes += o.read_bytes;
        deflate += u64::from(o.deflate);
        messages += o.messages;
        compressed += o.compressed;
        min_c = min_c.min(o.received);
        max_c = max_c.max(o.received);
    }
    let normal = ready - slow;
    let expected = inject.events * normal;
    let missing = expected.saturating_sub(received);
    let (total, per_sec, late) = stats.merge();
    let mut timeline: Vec<TimelineRow> = Vec::new();
    let secs = per_sec.len().max(procs.len());
    for s in 0..secs {
        let l = per_sec.get(s).copied().unwrap_or_default();
        let (g, m) = procs.get(s).copied().unwrap_or_default();
        timeline.push(TimelineRow {
            t_s: s as u64,
            deliveries: l.count,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
            gw_cpu_pct: g.cpu_pct,
            gw_rss_mb: g.rss_mb,
            lg_cpu_pct: m.cpu_pct,
        });
    }
    // Steady state: the full injection seconds after the first.
    let inj_secs = args.duration.floor() as usize;
    let steady: Vec<&TimelineRow> = timeline
        .iter()
        .skip(1)
        .take(inj_secs.saturating_sub(1))
        .collect();
    let steady_rate = if steady.is_empty() {
        0.0
    } else {
        steady.iter().map(|r| r.deliveries as f64).sum::<f64>() / steady.len() as f64
    };
    let active: Vec<&(crate::procfs::ProcSample, crate::procfs::ProcSample)> =
        procs.iter().take(inj_secs.max(1)).collect();
    let avg = |f: &dyn Fn(&(crate::procfs::ProcSample, crate::procfs::ProcSample)) -> f64| {
        if active.is_empty() {
            0.0
        } else {
            active.iter().map(|p| f(p)).sum::<f64>() / active.len() as f64
        }
    };
    let gw_cpu_s: f64 = procs.iter().map(|p| p.0.cpu_s).sum();
    FanoutReport {
        scenario: name,
        injection: "admin-publish",
        kafka_fetch_max_wait: None,
        gateway_env: Vec::new(),
        params: args.clone(),
        slow_share,
        clients_ready: ready,
        clients_slow: slow,
        joins_unconfirmed: unconfirmed,
        connect_errors,
        receive_errors,
        frame_bytes: TickerTemplate::new(&super::products(1), args.pad).frame_bytes(),
        events_injected: inject.events,
        inject_elapsed_s: inject.elapsed_s,
        inject_request: inject.tick_request,
        broker_cpu_pct_avg: inject.broker_cpu_pct,
        kafka_probe: None,
        kafka_probe_max_wait_ms: None,
        kafka_probe_errors: 0,
        offered_deliveries_per_s: args.rate * normal as f64,
        expected_deliveries: expected,
        received_deliveries: received,
        missing_deliveries: missing,
        missing_pct: if expected > 0 {
            100.0 * missing as f64 / expected as f64
        } else {
            0.0
        },
        late_deliveries: late,
        deliveries_per_s: if inject.elapsed_s > 0.0 {
            received as f64 / inject.elapsed_s
        } else {
            0.0
        },
        steady_deliveries_per_s: steady_rate,
        per_client_min: if min_c == u64::MAX { 0 } else { min_c },
        per_client_max: max_c,
        latency: LatencySummary::of(&total),
        gw_cpu_pct_avg: avg(&|p| p.0.cpu_pct),
        gw_cpu_us_per_delivery: if received > 0 {
            gw_cpu_s * 1e6 / received as f64
        } else {
            0.0
        },
        gw_rss_mb_max: procs.iter().map(|p| p.0.rss_mb).fold(0.0, f64::max),
        client_read_bytes_per_delivery: if received > 0 {
            read_bytes as f64 / received as f64
        } else {
            0.0
        },
        client_deflate_offered: crate::ws::DEFLATE.load(std::sync::atomic::Ordering::Relaxed)
            || crate::ws::BROWSER_HEADERS.load(std::sync::atomic::Ordering::Relaxed),
        clients_deflate: deflate,
        client_compressed_pct: if messages > 0 {
            100.0 * compressed as f64 / messages as f64
        } else {
            0.0
        },
        client_inflations: crate::ws::INFLATIONS.load(std::sync::atomic::Ordering::Relaxed),
        lg_cpu_pct_avg: avg(&|p| p.1.cpu_pct),
        timeline,
    }
}

/// Prints the human table of a fanout / slow run.
pub fn print(r: &FanoutReport) {
    let p = &r.params;
    println!();
    println!(
        "== {} : {} clients ({} slow), {} events/s for {} s ==",
        r.scenario, p.clients, r.clients_slow, p.rate, p.duration
    );
    println!(
        "clients ready            {:>12}   (join unconfirmed: {})",
        r.clients_ready, r.joins_unconfirmed
    );
    println!(
        "connect errors           {:>12}   ({})",
        r.connect_errors.total(),
        r.connect_errors
    );
    println!(
        "receive errors           {:>12}   ({})",
        r.receive_errors.total(),
        r.receive_errors
    );
    println!(
        "events injected          {:>12}   in {:.2} s   ({} B frames)",
        r.events_injected, r.inject_elapsed_s, r.frame_bytes
    );
    let q = &r.inject_request;
    println!(
        "injection ({}) per tick  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms{}",
        r.injection,
        q.p50_ms,
        q.p99_ms,
        q.max_ms,
        match r.broker_cpu_pct_avg {
            Some(c) => format!("   broker CPU avg {c:.0} %"),
            None => String::new(),
        }
    );
    println!(
        "offered deliveries/s     {:>12.0}",
        r.offered_deliveries_per_s
    );
    println!("delivered/s (whole run)  {:>12.0}", r.deliveries_per_s);
    println!(
        "delivered/s (steady)     {:>12.0}",
        r.steady_deliveries_per_s
    );
    println!(
        "expected / received      {:>12} / {}",
        r.expected_deliveries, r.received_deliveries
    );
    println!(
        "missing (lost/conflated) {:>12}   ({:.3} %)",
        r.missing_deliveries, r.missing_pct
    );
    println!(
        "late (> {} ms)         {:>12}",
        p.late_ms, r.late_deliveries
    );
    println!(
        "per-client received      {:>12} .. {}",
        r.per_client_min, r.per_client_max
    );
    if let Some(k) = &r.kafka_probe {
        println!(
            "broker alone (probe, max wait {} ms)  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms   ({} records, {} fetch errors)",
            r.kafka_probe_max_wait_ms.unwrap_or(0),
            k.p50_ms,
            k.p90_ms,
            k.p99_ms,
            k.max_ms,
            k.count,
            r.kafka_probe_errors
        );
    }
    let l = &r.latency;
    println!(
        "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    println!(
        "gateway CPU avg {:.0} %   {:.2} µs CPU/delivery   RSS max {:.1} MB   load generator CPU avg {:.0} %",
        r.gw_cpu_pct_avg, r.gw_cpu_us_per_delivery, r.gw_rss_mb_max, r.lg_cpu_pct_avg
    );
    println!(
        "bytes per delivery: clients read {:.1} (the ticker's Socket.IO message alone: {} B)",
        r.client_read_bytes_per_delivery, r.frame_bytes
    );
    println!(
        "permessage-deflate: {}; {} clients negotiated it; {:.1} % of messages arrived compressed ({} inflated, the rest reused)",
        if r.client_deflate_offered {
            "offered"
        } else {
            "not offered"
        },
        r.clients_deflate,
        r.client_compressed_pct,
        r.client_inflations
    );
    println!();
    println!(
        "{:>4} {:>10} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}",
        "s", "deliv/s", "p50 ms", "p99 ms", "max ms", "gw CPU%", "gw RSS", "lg CPU%"
    );
    for t in &r.timeline {
        println!(
            "{:>4} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>7.0} {:>8.1} {:>7.0}",
            t.t_s,
            t.deliveries,
            t.p50_ms,
            t.p99_ms,
            t.max_ms,
            t.gw_cpu_pct,
            t.gw_rss_mb,
            t.lg_cpu_pct
        );
    }
}
