//! `idle`: connects clients in steps (each joins its rooms, then only answers pings) and
//! samples the gateway's RSS after each step: memory per connected, idle client.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Common, ErrorCounts};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    /// Clients connected at the end.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Clients added per step.
    #[arg(long, default_value_t = 1000)]
    pub step: usize,
    /// Wait after each step before sampling RSS, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Connect only (no `userLocationUpdate`, so no room membership).
    #[arg(long = "no-join", conflicts_with = "hydrate")]
    pub no_join: bool,
    /// Publish all four snapshots (news, top coins, movers, stocks) before connecting, and
    /// have each client wait for its four hydration replies when it joins, as every real
    /// frontend gets them. RSS with no client is read after the snapshots are cached.
    #[arg(long)]
    pub hydrate: bool,
}

#[derive(Debug, Serialize, Clone)]
pub struct IdleStep {
    pub clients: u64,
    pub gw_rss_mb: f64,
    pub kb_per_client: f64,
    pub lg_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub params: IdleArgs,
    pub gw_rss_mb_idle: f64,
    pub connected: u64,
    pub errors: ErrorCounts,
    pub kb_per_client: f64,
    pub mb_per_1000_clients: f64,
    /// With --hydrate: clients that got all four hydration replies.
    pub hydrated: u64,
    /// With --hydrate: each hydration reply's size on the wire (frame headers included), as
    /// the first hydrated client read it.
    pub hydration_frame_bytes: super::HydrationFrames,
    pub steps: Vec<IdleStep>,
}

pub async fn run(common: &Common, args: &IdleArgs) -> anyhow::Result<IdleReport> {
    let gw = super::target(common).await?;
    let r = run_against(common, args, gw.addr, gw.pid).await;
    gw.stop().await;
    r
}

async fn run_against(
    common: &Common,
    args: &IdleArgs,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    if pid.is_none() {
        anyhow::bail!("idle needs the gateway's pid to read its RSS: pass --pid or --spawn");
    }
    if args.hydrate {
        super::seed_snapshots(addr, None, true).await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss0 = super::rss_mb(pid).unwrap_or(0.0);
    let cancel = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut errors = ErrorCounts::default();
    let mut steps = vec![IdleStep {
        clients: 0,
        gw_rss_mb: rss0,
        kb_per_client: 0.0,
        lg_rss_mb: super::rss_mb(Some(std::process::id())).unwrap_or(0.0),
    }];
    let mut connected = 0u64;
    let mut hydrated = 0u64;
    let mut frame_bytes = super::HydrationFrames::new();
    let mut readers = Vec::new();
    let mut next = 0usize;
    let step = args.step.max(1);
    while next < args.clients {
        let end = (next + step).min(args.clients);
        let mut batch = Vec::with_capacity(end - next);
        for i in next..end {
            let (common, limit, cancel) = (common.clone(), limit.clone(), cancel.clone());
            let (join, hydrate) = (!args.no_join, args.hydrate);
            batch.push(tokio::spawn(async move {
                let mut frames = super::HydrationFrames::new();
                let mut c = if hydrate {
                    let (c, f) = super::connect_and_hydrate(addr, &common, i, &limit, 30.0).await?;
                    frames = f;
                    c
                } else if join {
                    super::connect_and_join(addr, &common, i, &limit, 0.5)
                        .await?
                        .0
                } else {
                    let _p = limit.acquire().await;
                    crate::client::SioClient::connect(
                        crate::client::source_addr(i, common.sources),
                        addr,
                        &format!("lg-idle-{i}"),
                        4096,
                        crate::client::deadline_in(30.0),
                    )
                    .await?
                };
                let reader = tokio::spawn(async move {
                    // Idle: read only to answer engine pings, until the run ends.
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            r = c.next_batch(|_| {}) => if r.is_err() { break },
                        }
                    }
                });
                Ok::<_, crate::client::ClientError>((reader, frames))
            }));
        }
        for t in batch {
            match t.await {
                Ok(Ok((reader, frames))) => {
                    connected += 1;
                    if frames.len() == super::HYDRATION_EVENTS.len() {
                        hydrated += 1;
                    }
                    if frame_bytes.is_empty() {
                        frame_bytes = frames;
                    }
                    readers.push(reader);
                }
                Ok(Err(e)) => errors.add(e.kind()),
                Err(_) => errors.add("task-panicked"),
            }
        }
        next = end;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let rss = super::rss_mb(pid).unwrap_or(0.0);
        let kb = if connected > 0 {
            (rss - rss0) * 1024.0 / connected as f64
        } else {
            0.0
        };
        eprintln!(
            "flux-loadgen: {connected} idle clients, gateway RSS {rss:.1} MB ({kb:.1} KB/client)"
        );
        steps.push(IdleStep {
            clients: connected,
            gw_rss_mb: rss,
            kb_per_client: kb,
            lg_rss_mb: super::rss_mb(Some(std::process::id())).unwrap_or(0.0),
        });
    }
    cancel.cancel();
    for r in readers {
        let _ = r.await;
    }
    let last = steps.last().cloned().map_or(0.0, |s| s.kb_per_client);
    Ok(IdleReport {
        scenario: "idle",
        params: args.clone(),
        gw_rss_mb_idle: rss0,
        connected,
        errors,
        kb_per_client: last,
        mb_per_1000_clients: last * 1000.0 / 1024.0,
        hydrated,
        hydration_frame_bytes: frame_bytes,
        steps,
    })
}

pub fn print(r: &IdleReport) {
    println!();
    println!(
        "== idle : {} clients in steps of {}{} ==",
        r.params.clients,
        r.params.step,
        if r.params.no_join {
            ", no room joins"
        } else if r.params.hydrate {
            ", joined and hydrated (four snapshots each)"
        } else {
            ", joined to their rooms"
        }
    );
    if r.params.hydrate {
        let frames: Vec<String> = r
            .hydration_frame_bytes
            .iter()
            .map(|(k, v)| format!("{k} {v} B"))
            .collect();
        println!(
            "hydrated {} of {}; replies on the wire: {}",
            r.hydrated,
            r.connected,
            frames.join(", ")
        );
    }
    println!(
        "gateway RSS idle {:.1} MB   connected {}   errors {} ({})",
        r.gw_rss_mb_idle,
        r.connected,
        r.errors.total(),
        r.errors
    );
    println!(
        "per client {:.1} KB   ({:.1} MB per 1000 clients)",
        r.kb_per_client, r.mb_per_1000_clients
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10}",
        "clients", "gw RSS MB", "KB/client", "lg RSS MB"
    );
    for s in &r.steps {
        println!(
            "{:>8} {:>10.1} {:>12.1} {:>10.1}",
            s.clients, s.gw_rss_mb, s.kb_per_client, s.lg_rss_mb
        );
    }
}
