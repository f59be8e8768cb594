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
    #[arg(long = "no-join")]
    pub no_join: bool,
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
    let mut readers = Vec::new();
    let mut next = 0usize;
    let step = args.step.max(1);
    while next < args.clients {
        let end = (next + step).min(args.clients);
        let mut batch = Vec::with_capacity(end - next);
        for i in next..end {
            let (common, limit, cancel) = (common.clone(), limit.clone(), cancel.clone());
            let join = !args.no_join;
            batch.push(tokio::spawn(async move {
                let mut c = if join {
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
                Ok::<_, crate::client::ClientError>(tokio::spawn(async move {
                    // Idle: read only to answer engine pings, until the run ends.
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            r = c.next_batch(|_| {}) => if r.is_err() { break },
                        }
                    }
                }))
            }));
        }
        for t in batch {
            match t.await {
                Ok(Ok(reader)) => {
                    connected += 1;
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
        } else {
            ", joined to their rooms"
        }
    );
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
