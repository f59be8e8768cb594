//! `flux-loadgen`: the load generator and measuring instrument for flux-bff (issue 5).
//! Speaks just enough Engine.IO 4 / Socket.IO 5 over a lean WebSocket client to drive many
//! loopback sockets cheaply; scenarios `fanout`, `connect`, `idle`, `slow`, `hostile` (and `floor`,
//! which runs no gateway: the cost of the TCP writes alone); events injected
//! through the embedded bus's admin hook or produced to Kafka (`--kafka`, `--spawn-kafka`).
//! See BENCHMARKS.md.

mod client;
mod eio;
mod gateway;
mod kafka;
mod process;
mod procfs;
mod scenario;
mod stats;
mod ws;

use clap::{Parser, Subcommand};

use scenario::Common;
use scenario::connect::ConnectArgs;
use scenario::fanout::{FanoutArgs, SlowArgs};
use scenario::floor::FloorArgs;
use scenario::hostile::HostileArgs;
use scenario::idle::IdleArgs;

/// Load generator for flux-bff: Socket.IO clients on loopback, events injected through the
/// embedded bus's admin hook (or produced to Kafka with --kafka / --spawn-kafka),
/// latency/throughput/CPU/RSS printed as a table and a JSON line.
#[derive(Debug, Parser)]
#[command(name = "flux-loadgen", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N clients in crypto.global, M ticker events/s: deliveries/s, latency, loss.
    Fanout(FanoutArgs),
    /// Connection storm: time to session:init and to hydration.
    Connect(ConnectArgs),
    /// Idle clients added in steps: gateway RSS per connected client.
    Idle(IdleArgs),
    /// Like fanout, but a share of the clients stop reading their socket.
    Slow(SlowArgs),
    /// Attacks at once (half-open WebSockets, slowloris, 10 MB frames, deep JSON, an event
    /// flood, stalled readers) while an observer receives tickers: its longest gap, the
    /// gateway's RSS peak and counters.
    Hostile(HostileArgs),
    /// No gateway: one thread writes a frame to N loopback sockets M times a second; its CPU
    /// per delivery is what the TCP writes alone cost here (the floor under `fanout`).
    Floor(FloorArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ws::BROWSER_HEADERS.store(
        cli.common.browser_headers,
        std::sync::atomic::Ordering::Relaxed,
    );
    ws::DEFLATE.store(cli.common.deflate, std::sync::atomic::Ordering::Relaxed);
    match procfs::raise_nofile_limit() {
        Ok((before, after)) if after > before => {
            eprintln!("flux-loadgen: raised RLIMIT_NOFILE from {before} to {after}");
        }
        Ok((_, after)) => eprintln!("flux-loadgen: RLIMIT_NOFILE is {after}"),
        Err(e) => eprintln!("flux-loadgen: cannot read/raise RLIMIT_NOFILE: {e}"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.common.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flux-loadgen: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // SIGINT/SIGTERM end the run early; dropping it stops a spawned gateway.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flux-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = &cli.common;
    match &cli.scenario {
        Scenario::Fanout(a) => {
            let r = scenario::fanout::run(common, a, 0.0, "fanout").await?;
            scenario::fanout::print(&r);
            scenario::write_json(common, &r)?;
        }
        Scenario::Slow(a) => {
            let r = scenario::fanout::run(common, &a.fanout, a.slow_share, "slow").await?;
            scenario::fanout::print(&r);
            scenario::write_json(common, &r)?;
        }
        Scenario::Connect(a) => {
            let r = scenario::connect::run(common, a).await?;
            scenario::connect::print(&r);
            scenario::write_json(common, &r)?;
        }
        Scenario::Idle(a) => {
            let r = scenario::idle::run(common, a).await?;
            scenario::idle::print(&r);
            scenario::write_json(common, &r)?;
        }
        Scenario::Hostile(a) => {
            let r = scenario::hostile::run(common, a).await?;
            scenario::hostile::print(&r);
            scenario::write_json(common, &r)?;
        }
        Scenario::Floor(a) => {
            let r = scenario::floor::run(a).await?;
            scenario::floor::print(&r);
            scenario::write_json(common, &r)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "flux-loadgen",
            "fanout",
            "--clients",
            "200",
            "--rate",
            "2000",
            "--duration",
            "5",
            "--spawn",
            "target/release/flux-bff",
            "--json",
            "/tmp/x.json",
        ])
        .unwrap();
        assert!(
            matches!(cli.scenario, Scenario::Fanout(ref a) if a.clients == 200 && a.rate == 2000.0)
        );
        assert!(cli.common.spawn.is_some());
        assert_eq!(cli.common.injection(), "admin-publish");
        let cli = Cli::try_parse_from(["flux-loadgen", "slow", "--slow-share", "0.2"]).unwrap();
        assert!(matches!(cli.scenario, Scenario::Slow(ref a) if a.slow_share == 0.2));
        let cli = Cli::try_parse_from([
            "flux-loadgen",
            "--kafka",
            "127.0.0.1:9092",
            "fanout",
            "--fetch-max-wait",
            "100ms",
            "--gateway-env",
            "FLUX_KAFKA__FETCH_MAX_WAIT=20ms",
        ])
        .unwrap();
        assert_eq!(cli.common.injection(), "kafka");
        assert_eq!(cli.common.gateway_fetch_max_wait().as_deref(), Some("20ms"));
        let cli = Cli::try_parse_from([
            "flux-loadgen",
            "--spawn-kafka",
            "--fetch-max-wait",
            "5ms",
            "slow",
        ])
        .unwrap();
        assert_eq!(cli.common.injection(), "kafka");
        assert_eq!(cli.common.gateway_fetch_max_wait().as_deref(), Some("5ms"));
        assert!(
            Cli::try_parse_from(["flux-loadgen", "--kafka", "a:1", "--spawn-kafka", "fanout"])
                .is_err(),
            "a given broker and a spawned one exclude each other"
        );
    }
}
