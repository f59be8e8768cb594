//! The programs' entry points: command line, configuration, logging and metrics set-up, then
//! the gateway (`flux-bff`) or the simulator on a real Kafka (`flux-sim`); exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::application::Application;
use super::config::Config;
use super::wiring::{self, AdapterSettings};
use crate::adapters::kafka::{self, KafkaSettings};
use crate::ports::CommandSink;
use crate::sim::SimSettings;
use crate::telemetry;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Command-line options.
#[derive(Debug, clap::Parser)]
#[command(
    name = "flux-bff",
    version,
    about = "Real-time Backend-for-Frontend of the Flux platform: Kafka events to Socket.IO rooms.",
    after_help = "Configuration: defaults, then the TOML file, then KAFKA_BROKER_ADDRESS, SERVER_PORT, \
VALKEY_HOST, VALKEY_PORT, VALKEY_PASSWORD(_FILE), FRONTEND_URL, then FLUX_* variables nested with \
__ (e.g. FLUX_HTTP__PORT=3000, FLUX_KAFKA__BROKERS='[\"kafka:9092\"]'). With no Kafka brokers \
configured, flux-bff runs in embedded mode: in-process bus and cache plus a simulator of the \
domain services. See README.md for every setting."
)]
pub struct Cli {
    /// Configuration file (TOML); read only if it exists unless given explicitly.
    #[arg(long, short, env = "FLUX_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The whole program: exit code 2 for bad configuration, 1 when start-up fails, 0 after a
/// graceful shutdown.
pub async fn main_entry(cli: Cli) -> ExitCode {
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("flux.toml");
        default.exists().then_some(default)
    });
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flux-bff: {e:#}");
            return ExitCode::from(2);
        }
    };
    let adapters = match AdapterSettings::from_config(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flux-bff: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::logging::init(&config.settings.log);
    warn_unknown_keys(&config);
    if let Some(limit) = raise_open_files_limit() {
        warn_if_too_few_files(limit, config.settings.http.max_connections);
    }
    let _ = telemetry::metrics::handle();
    match run(config, adapters).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "flux-bff stopped");
            eprintln!("flux-bff: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One warning per key of the file or the variables that no section reads (a misspelt or
/// removed setting changes nothing; it should not do so silently).
fn warn_unknown_keys(config: &Config) {
    for line in config.unknown_keys(&super::config::known_sections()) {
        tracing::warn!("unknown setting: {line}");
    }
}

/// Descriptors a replica holds besides its clients' connections: standard streams, the
/// listener, the runtime's, Kafka's and Valkey's connections, files it reads, and connections
/// accepted over `http.max_connections` until they are closed.
const FD_HEADROOM: u64 = 512;

/// Raises the open-files soft limit to the hard one, as Node.js, Go and the JVM do at start-up
/// and Rust does not: containerd 2 and Docker 29 start containers with a soft limit of 1024,
/// and a replica that runs out of descriptors stops accepting clients, then fails its own
/// probes. The limit in effect, unless it could not be read.
fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-files limit");
            Some(limit)
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-files limit to its hard limit");
            None
        }
    }
}

/// A warning naming the fix when `limit` cannot hold `max_connections` clients.
fn warn_if_too_few_files(limit: u64, max_connections: usize) {
    let needed = (max_connections as u64).saturating_add(FD_HEADROOM);
    if limit < needed {
        tracing::warn!(
            limit,
            max_connections,
            needed,
            "open-files limit below http.max_connections plus headroom: the gateway stops \
             accepting clients when it runs out; raise the nofile hard limit of the container or \
             host (the container runtime's default, `ulimits: nofile` in compose, \
             `--ulimit nofile=` for docker run, LimitNOFILE for systemd) or lower \
             http.max_connections"
        );
    }
}

async fn run(config: Config, adapters: AdapterSettings) -> anyhow::Result<()> {
    let wired = wiring::wire(&adapters).await?;
    let app = Application::build(config.settings.clone(), wired.ports).await?;
    let addr = app.local_addr();
    tracing::info!(%addr, mode = wired.mode, "flux-bff listening");
    if wired.mode == "embedded" {
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        tracing::info!("dashboard: http://{shown}/");
    }
    let result = app.run_until_stopped(shutdown_signal()).await;
    wired.background.cancel();
    result
}

/// `flux-sim`: the simulator of the four domain services on a real Kafka (same
/// configuration as the gateway: `FLUX_KAFKA__*`, `FLUX_SIM__*`). Exit 2 for bad
/// configuration, 1 when no broker answers within the start-up deadline, 0 on SIGTERM.
pub async fn sim_entry(cli: Cli) -> ExitCode {
    let loaded = Config::load(cli.config.as_deref()).and_then(|config| {
        let kafka: KafkaSettings = config.section("kafka")?;
        kafka
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if !kafka.is_enabled() {
            anyhow::bail!(
                "invalid configuration: kafka.brokers is empty; flux-sim drives a real Kafka: set FLUX_KAFKA__BROKERS='[\"host:9092\"]' or KAFKA_BROKER_ADDRESS"
            );
        }
        let sim: SimSettings = config.section("sim")?;
        Ok((config, kafka, sim))
    });
    let (config, kafka_settings, sim) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("flux-sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::logging::init(&config.settings.log);
    warn_unknown_keys(&config);
    raise_open_files_limit();
    let deadline = config.settings.lifecycle.startup_deadline;
    let client = match tokio::time::timeout(deadline, kafka::connect(&kafka_settings)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            eprintln!("flux-sim: {e}");
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!(
                "flux-sim: no Kafka broker answered within {deadline:?} (tried {})",
                kafka_settings.brokers.join(",")
            );
            return ExitCode::from(1);
        }
    };
    tracing::info!(brokers = ?kafka_settings.brokers, "flux-sim playing the domain services");
    let sink = Arc::new(client.command_sink());
    let stop = CancellationToken::new();
    let task = crate::sim::spawn(
        sim,
        sink.clone(),
        Arc::new(client.event_source()),
        stop.clone(),
    );
    shutdown_signal().await;
    tracing::info!("flux-sim shutting down");
    stop.cancel();
    let _ = tokio::time::timeout(config.settings.lifecycle.shutdown_deadline, async {
        let _ = task.await;
        let _ = sink.flush().await;
    })
    .await;
    ExitCode::SUCCESS
}
