//! Start-up, run and shutdown (D17–D19): the HTTP server listens at once; the consumers
//! start, then the four refresh commands go out once; on SIGTERM readiness goes off, clients
//! are disconnected, consumers stop, the producer is flushed and the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::adapters::memory::{MemoryBus, MemoryCache};
use crate::adapters::socketio::{self, SocketIoFanout};
use crate::domain::commands;
use crate::domain::topics::{ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK};
use crate::ports::{CommandSink, EventSource, SnapshotCache};

use super::clients::ClientService;
use super::config::{Config, Settings};
use super::health::Health;
use super::ingest::Ingestor;
use super::snapshots::{LocalSnapshots, SnapshotWriter};
use super::weather::WeatherDesk;

/// The adapters the application runs on.
#[derive(Clone)]
pub struct Ports {
    pub source: Arc<dyn EventSource>,
    pub sink: Arc<dyn CommandSink>,
    pub cache: Arc<dyn SnapshotCache>,
    /// The in-process bus in embedded mode (for the admin publish hook).
    pub bus: Option<MemoryBus>,
    /// What the event source is, for messages (`Kafka brokers a:9092,b:9092`).
    pub source_name: String,
}

impl Ports {
    /// Everything in memory: one bus for events and commands, one cache.
    pub fn in_memory() -> Self {
        let bus = MemoryBus::new();
        Self {
            source: Arc::new(bus.clone()),
            sink: Arc::new(bus.clone()),
            cache: Arc::new(MemoryCache::default()),
            bus: Some(bus),
            source_name: "the in-process bus".into(),
        }
    }
}

/// A built gateway: bound to its port, not yet running.
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    ports: Ports,
    health: Arc<Health>,
    io: SocketIo,
    router: axum::Router,
    service: Arc<ClientService>,
    fanout: SocketIoFanout,
    weather: Arc<WeatherDesk>,
    local: Arc<LocalSnapshots>,
    /// Connection-state recovery (D26), when on.
    recovery: Option<Arc<super::recovery::Recovery>>,
    /// Sockets on the polling transport, recounted every second (`socketio.max_polling_sessions`).
    polling_sessions: Arc<std::sync::atomic::AtomicUsize>,
}

impl Application {
    /// Binds the listener and wires the services on `ports`.
    ///
    /// # Errors
    /// When the address cannot be bound (names it), or the `auth` key cannot be loaded.
    pub async fn build(settings: Settings, ports: Ports) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(settings.http.host, settings.http.port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr}: {e} (set FLUX_HTTP__PORT or SERVER_PORT to a free port)"
            )
        })?;
        let health = Arc::new(Health::new());
        let (layer, io) = socketio::layer(&settings.socketio);
        let fanout = SocketIoFanout::new(io.clone(), &settings.socketio);
        let weather = Arc::new(WeatherDesk::new(ports.cache.clone(), &settings.limits));
        let local = Arc::new(LocalSnapshots::default());
        let service = Arc::new(ClientService::new(
            local.clone(),
            ports.cache.clone(),
            ports.sink.clone(),
            Arc::new(fanout.clone()),
            health.clone(),
            weather.clone(),
            &settings.limits,
        ));
        let auth = super::auth::Authenticator::from_settings(&settings.auth)?.map(Arc::new);
        let recovery = super::recovery::Recovery::from_settings(&settings.socketio)?;
        socketio::register(
            &io,
            service.clone(),
            &settings.socketio,
            auth,
            recovery.clone(),
            fanout.clone(),
        );
        let polling_sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = super::http::router(
            &settings,
            health.clone(),
            ports.cache.clone(),
            ports.bus.clone(),
            layer,
            polling_sessions.clone(),
        );
        Ok(Self {
            settings,
            listener,
            ports,
            health,
            io,
            router,
            service,
            fanout,
            weather,
            local,
            recovery,
            polling_sessions,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `stop` resolves, then shuts down gracefully within the deadline.
    ///
    /// # Errors
    /// When the event consumers could not start within the start-up deadline (D17).
    pub async fn run_until_stopped(
        self,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            listener,
            ports,
            health,
            io,
            router,
            service,
            fanout,
            weather,
            local,
            recovery,
            polling_sessions,
        } = self;
        let background = CancellationToken::new();
        let (snapshots, writer) =
            SnapshotWriter::spawn_with(ports.cache.clone(), local.clone(), background.clone());
        // The in-process tier first hears of each snapshot from the end of its topic (D24).
        tokio::spawn(super::snapshots::warm_up(
            ports.source.clone(),
            local,
            settings.lifecycle.max_backoff,
            background.clone(),
        ));
        tokio::spawn(fanout.clone().run_drainer(background.clone()));
        tokio::spawn(socketio::count_polling(
            io.clone(),
            polling_sessions,
            background.clone(),
        ));
        let ingestor = Ingestor::new(
            ports.source.clone(),
            Arc::new(fanout),
            snapshots,
            weather,
            health.clone(),
            settings.lifecycle.max_backoff,
            settings.socketio.conflate_after,
        )
        .with_recovery(recovery);
        let mut subscribed = ingestor.subscribed();
        let last_error = ingestor.last_error();
        let consumers = tokio::spawn(ingestor.run(background.clone()));

        let http_stop = CancellationToken::new();
        let server = tokio::spawn(super::http::serve_with(
            listener,
            router,
            http_stop.clone(),
            settings.http.clone(),
        ));

        // Consumers first, then the start-up refreshes, once per process (D12).
        let startup = tokio::time::timeout(
            settings.lifecycle.startup_deadline,
            subscribed.wait_for(|s| *s),
        );
        tokio::pin!(stop);
        let started = tokio::select! {
            r = startup => r.is_ok(),
            () = &mut stop => true,
        };
        if !started {
            background.cancel();
            http_stop.cancel();
            let cause = last_error
                .borrow()
                .clone()
                .unwrap_or_else(|| "no answer".into());
            anyhow::bail!(
                "Kafka unreachable: no answer from {} within {:?} ({cause}); check FLUX_KAFKA__BROKERS / KAFKA_BROKER_ADDRESS and that the brokers are up, or raise FLUX_LIFECYCLE__STARTUP_DEADLINE",
                ports.source_name,
                settings.lifecycle.startup_deadline
            );
        }
        tokio::spawn(export_room_sizes(io.clone(), background.clone()));
        let refreshes = tokio::spawn(send_startup_refreshes(
            service.clone(),
            background.clone(),
            settings.lifecycle.max_backoff,
        ));

        stop.await;
        tracing::info!("shutting down");
        let deadline = settings.lifecycle.shutdown_deadline;
        let graceful = async {
            health.set_shutting_down();
            http_stop.cancel(); // stop accepting connections
            io.close().await; // disconnect every client
            background.cancel(); // stop consumers, refreshes and the snapshot writer
            let _ = consumers.await;
            let _ = refreshes.await;
            if let Err(e) = ports.sink.flush().await {
                tracing::warn!(error = %e, "commands may be lost: producer flush failed");
            }
            let _ = writer.await;
            let _ = server.await;
        };
        if tokio::time::timeout(deadline, graceful).await.is_err() {
            tracing::warn!(
                ?deadline,
                "graceful shutdown exceeded its deadline; exiting anyway"
            );
        }
        Ok(())
    }
}

/// Exports room membership every few seconds (`flux_room_members{room}`; weather rooms are
/// summed, their names are client-chosen and unbounded).
async fn export_room_sizes(io: SocketIo, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for room in [ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK] {
            let members = io.to(room).sockets().len();
            metrics::gauge!(crate::telemetry::metrics::ROOM_MEMBERS, "room" => room)
                .set(members as f64);
        }
        let weather: usize = match io.rooms().await {
            Ok(rooms) => rooms
                .iter()
                .filter(|r| r.starts_with("weather."))
                .map(|r| io.to(r.to_string()).sockets().len())
                .sum(),
            Err(_) => 0,
        };
        metrics::gauge!(crate::telemetry::metrics::ROOM_MEMBERS, "room" => "weather.*")
            .set(weather as f64);
    }
}

/// The delays of every retry loop after a lost dependency (consumers, start-up refreshes,
/// snapshot warm-up): from 200 ms, doubling to `max_backoff` (`lifecycle.max_backoff`), with
/// jitter, for ever.
pub(crate) fn reconnect_backoff(max_backoff: Duration) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sends the four start-up refreshes in order, retrying each with back-off (reusing its
/// idempotency key) until it is accepted or the process stops.
async fn send_startup_refreshes(
    service: Arc<ClientService>,
    stop: CancellationToken,
    max_backoff: Duration,
) {
    for command in commands::startup_refreshes(SystemTime::now()) {
        let mut delays = reconnect_backoff(max_backoff);
        while service.send(command.clone()).await.is_err() {
            let delay = delays.next().unwrap_or(max_backoff);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
    tracing::info!("start-up refresh commands sent");
}

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
    let adapters = match super::wiring::AdapterSettings::from_config(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flux-bff: {e:#}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::logging::init(&config.settings.log);
    let _ = crate::telemetry::metrics::handle();
    match run(config, adapters).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "flux-bff stopped");
            eprintln!("flux-bff: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, adapters: super::wiring::AdapterSettings) -> anyhow::Result<()> {
    let wired = super::wiring::wire(&adapters).await?;
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
    use crate::adapters::kafka::{self, KafkaSettings};
    use crate::sim::SimSettings;

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
    crate::telemetry::logging::init(&config.settings.log);
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
