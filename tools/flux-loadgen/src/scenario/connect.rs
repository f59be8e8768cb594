//! `connect`: a connection storm. Each client measures the time from TCP connect to
//! `session:init`, then from its `userLocationUpdate` to the first hydration reply
//! (`newsUpdate` / `cryptoTopCoinsResponse`, seeded beforehand). Connections are held until
//! the storm is over.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Common, ErrorCounts, LOCATION};
use crate::client::{self, SioClient};
use crate::eio::Packet;
use crate::procfs::CpuMeter;
use crate::stats::{DurationHistogram, LatencySummary};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ConnectArgs {
    /// Clients to connect.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients in flight at once (connect + handshake + hydration).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Per-client deadline for the whole sequence, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub scenario: &'static str,
    pub params: ConnectArgs,
    pub connected: u64,
    pub hydrated: u64,
    pub errors: ErrorCounts,
    pub wall_s: f64,
    pub connects_per_s: f64,
    pub session_init: LatencySummary,
    pub hydration: LatencySummary,
    pub gw_cpu_pct_avg: f64,
    pub gw_cpu_ms_per_connect: f64,
    pub gw_rss_mb_end: f64,
}

pub async fn run(common: &Common, args: &ConnectArgs) -> anyhow::Result<ConnectReport> {
    let gw = super::target(common).await?;
    let r = run_against(common, args, gw.addr, gw.pid, gw.kafka.as_deref()).await;
    gw.stop().await;
    r
}

async fn run_against(
    common: &Common,
    args: &ConnectArgs,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    kafka: Option<&str>,
) -> anyhow::Result<ConnectReport> {
    super::seed_snapshots(addr, kafka, false).await?;
    let init_h = Arc::new(DurationHistogram::default());
    let hyd_h = Arc::new(DurationHistogram::default());
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut gw_cpu = pid.map(|p| CpuMeter::new(Some(p)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (limit, init_h, hyd_h) = (limit.clone(), init_h.clone(), hyd_h.clone());
        let (sources, buf, timeout) = (common.sources, common.buf_size.min(8192), args.timeout);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            let deadline = client::deadline_in(timeout);
            let t0 = Instant::now();
            let mut c = SioClient::connect(
                client::source_addr(i, sources),
                addr,
                &format!("lg-connect-{i}"),
                buf,
                deadline,
            )
            .await?;
            init_h.record_us(t0.elapsed().as_micros() as u64);
            let t1 = Instant::now();
            c.emit("userLocationUpdate", LOCATION).await?;
            let hydrated = c
                .wait_until(deadline, "hydration", |p| {
                    matches!(p, Packet::Event { name, .. }
                        if name == b"newsUpdate" || name == b"cryptoTopCoinsResponse")
                })
                .await;
            if hydrated.is_ok() {
                hyd_h.record_us(t1.elapsed().as_micros() as u64);
            }
            Ok::<_, client::ClientError>((c, hydrated.is_ok()))
        }));
    }
    let mut errors = ErrorCounts::default();
    let (mut connected, mut hydrated) = (0u64, 0u64);
    // Hold every connection until the storm is over, then close them together.
    let mut held = Vec::with_capacity(args.clients);
    for t in tasks {
        match t.await {
            Ok(Ok((c, h))) => {
                connected += 1;
                hydrated += u64::from(h);
                held.push(c);
            }
            Ok(Err(e)) => errors.add(e.kind()),
            Err(_) => errors.add("task-panicked"),
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    // CPU over the whole storm (one interval: storms are often shorter than a second).
    let gw = gw_cpu
        .as_mut()
        .and_then(CpuMeter::sample)
        .unwrap_or_default();
    let gw_rss_mb_end = super::rss_mb(pid).unwrap_or(0.0);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(ConnectReport {
        scenario: "connect",
        params: args.clone(),
        connected,
        hydrated,
        errors,
        wall_s,
        connects_per_s: if wall_s > 0.0 {
            connected as f64 / wall_s
        } else {
            0.0
        },
        session_init: init_h.summary(),
        hydration: hyd_h.summary(),
        gw_cpu_pct_avg: gw.cpu_pct,
        gw_cpu_ms_per_connect: if connected > 0 {
            gw.cpu_s * 1000.0 / connected as f64
        } else {
            0.0
        },
        gw_rss_mb_end,
    })
}

pub fn print(r: &ConnectReport) {
    println!();
    println!(
        "== connect : {} clients, {} in flight ==",
        r.params.clients, r.params.concurrency
    );
    println!(
        "connected {}   hydrated {}   errors {} ({})",
        r.connected,
        r.hydrated,
        r.errors.total(),
        r.errors
    );
    println!(
        "wall {:.2} s   {:.0} connections/s   gateway CPU avg {:.0} % ({:.3} ms CPU/connection)   RSS at end {:.1} MB",
        r.wall_s, r.connects_per_s, r.gw_cpu_pct_avg, r.gw_cpu_ms_per_connect, r.gw_rss_mb_end
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "ms", "p50", "p90", "p99", "max"
    );
    for (name, s) in [
        ("connect -> session:init", &r.session_init),
        ("location -> hydration", &r.hydration),
    ] {
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
}
