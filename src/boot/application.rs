//! The gateway assembled: the services on the ports, the Socket.IO and HTTP adapters in
//! front of them; start-up, run and shutdown (D17–D19). The HTTP server listens at once; the
//! consumers start, then the four refresh commands go out once; on SIGTERM readiness goes
//! off, clients are disconnected, consumers stop, the producer is flushed and the process
//! exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::Settings;
use super::wiring::Ports;
use crate::adapters::http::{self, Joined, PollingHandshake, Routes};
use crate::adapters::socketio::{self, Inbound, SocketIoFanout};
use crate::app::auth::Authenticator;
use crate::app::clients::ClientService;
use crate::app::health::{Health, Status};
use crate::app::ingest::Ingestor;
use crate::app::recovery::Recovery;
use crate::app::snapshots::{self, LocalSnapshots, SnapshotWriter};
use crate::app::weather::WeatherDesk;
use crate::ports::{Authenticate, EventSourceError, SessionRecovery};

/// How often a producer marked down is probed (`ClientService::watch_producer`).
const PRODUCER_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

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
    recovery: Option<Arc<Recovery>>,
    /// Sockets on the polling transport, recounted every second (`socketio.max_polling_sessions`).
    polling_sessions: Arc<AtomicUsize>,
    /// The client events being handled, which a shutdown lets finish (D19).
    handling: TaskTracker,
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
        declare_metrics();
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
        let auth = Authenticator::from_settings(&settings.auth)?
            .map(|a| Arc::new(a) as Arc<dyn Authenticate>);
        let recovery = Recovery::from_settings(
            &settings.recovery,
            settings.socketio.connect_timeout,
            settings.socketio.max_buffer + settings.socketio.max_backlog,
            Arc::new(fanout.clone()),
        )?;
        let handling = TaskTracker::new();
        socketio::register(
            &io,
            &settings.socketio,
            Inbound {
                requests: service.clone(),
                auth,
                recovery: recovery.clone().map(|r| r as Arc<dyn SessionRecovery>),
                // The HTTP server counts WebSocket sessions that never join the namespace.
                on_join: Some(Arc::new(|head: &axum::http::request::Parts| {
                    if let Some(joined) = head.extensions.get::<Joined>() {
                        joined.mark();
                    }
                    if let Some(polling) = head.extensions.get::<PollingHandshake>() {
                        polling.joined();
                    }
                })),
                handling: handling.clone(),
            },
        );
        let polling_sessions = Arc::new(AtomicUsize::new(0));
        let router = http::router(
            &settings.http,
            Routes {
                readiness: Arc::new(Status::new(health.clone(), ports.cache.clone())),
                publisher: ports.publisher.clone().filter(|_| settings.admin.publish),
                socketio: layer,
                polling_sessions: polling_sessions.clone(),
                max_polling_sessions: settings.socketio.max_polling_sessions,
            },
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
            handling,
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
            handling,
        } = self;
        let background = CancellationToken::new();
        tokio::spawn(crate::telemetry::metrics::run_upkeep(background.clone()));
        let (writes, writer) =
            SnapshotWriter::spawn_with(ports.cache.clone(), local.clone(), background.clone());
        tokio::spawn(fanout.clone().run_drainer(background.clone()));
        tokio::spawn(socketio::count_polling(
            io.clone(),
            polling_sessions,
            background.clone(),
        ));
        let ingestor = Ingestor::new(
            ports.source.clone(),
            Arc::new(fanout),
            writes,
            weather,
            health.clone(),
            settings.lifecycle.max_backoff,
            settings.ingest.conflate_after,
        )
        .with_recovery(recovery);
        let mut subscribed = ingestor.subscribed();
        let last_error = ingestor.last_error();
        // The in-process tier first hears of each snapshot from the end of its topic (D24),
        // read once the consumer took its start positions.
        tokio::spawn(snapshots::warm_up(
            ports.source.clone(),
            local,
            settings.lifecycle.max_backoff,
            ingestor.subscribed(),
            background.clone(),
        ));
        // The consumers stop first at shutdown, before the Socket.IO server closes.
        let consuming = background.child_token();
        let consumers = tokio::spawn(ingestor.run(consuming.clone()));

        let http_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve_with(
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
        // `stop` may fire before the consumers ever subscribe: then shut down at once (it is
        // not awaited a second time: a finished future must not be polled again).
        let stopped_early = tokio::select! {
            r = startup => {
                if r.is_err() {
                    background.cancel();
                    http_stop.cancel();
                    let cause = last_error.borrow().clone();
                    anyhow::bail!(
                        "{}",
                        startup_failure(
                            &ports.source_name,
                            settings.lifecycle.startup_deadline,
                            cause.as_ref()
                        )
                    );
                }
                false
            }
            () = &mut stop => true,
        };
        let refreshes = if stopped_early {
            None
        } else {
            tokio::spawn(socketio::export_room_sizes(io.clone(), background.clone()));
            {
                let (service, stop) = (service.clone(), background.clone());
                tokio::spawn(async move { service.watch_producer(stop, PRODUCER_PROBE).await });
            }
            let (service, stop) = (service.clone(), background.clone());
            let max_backoff = settings.lifecycle.max_backoff;
            Some(tokio::spawn(async move {
                service.send_startup_refreshes(stop, max_backoff).await
            }))
        };
        if !stopped_early {
            stop.await;
        }
        tracing::info!("shutting down");
        let deadline = settings.lifecycle.shutdown_deadline;
        let graceful = async {
            health.set_shutting_down();
            http_stop.cancel(); // stop accepting connections
            // Stop the consumers before closing the server, so that no batch is emitted into
            // a closed server (issue 19).
            consuming.cancel();
            let _ = consumers.await;
            io.close().await; // disconnect every client
            // Client events received before the close finish, and send their commands.
            handling.close();
            handling.wait().await;
            background.cancel(); // stop refreshes, the fan-out's tasks and the snapshot writer
            if let Some(refreshes) = refreshes {
                let _ = refreshes.await;
            }
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

/// Every series the dashboard and the alerts read exists from start-up, at zero until
/// something happens: each component declares its own.
fn declare_metrics() {
    crate::app::ingest::declare_metrics();
    crate::app::clients::declare_metrics();
    crate::app::auth::declare_metrics();
    crate::app::recovery::declare_metrics();
    socketio::declare_metrics();
    http::declare_metrics();
}

/// Why the start-up gave up: the consumers did not subscribe within `deadline`. The cause
/// and the fix depend on the last subscription error: a missing topic is no unreachable
/// broker.
fn startup_failure(
    source: &str,
    deadline: std::time::Duration,
    last_error: Option<&EventSourceError>,
) -> String {
    match last_error {
        Some(EventSourceError::UnknownTopic(topic)) => format!(
            "Kafka topic {topic} does not exist on {source} (within {deadline:?}): create it, or set FLUX_KAFKA__CREATE_TOPICS=true if topic creation is off (if it is on, the topic did not show in the brokers' metadata after its creation: see the warnings above)"
        ),
        Some(EventSourceError::TopicNotCreated { topic, reason }) => format!(
            "Kafka topic {topic} does not exist and could not be created on {source} ({reason}): create it (partitions and replication as the domain services need), or set FLUX_KAFKA__TOPIC_PARTITIONS / FLUX_KAFKA__REPLICATION_FACTOR to what the brokers allow"
        ),
        cause => {
            let cause = cause.map_or_else(|| "no answer".to_owned(), ToString::to_string);
            let fix = crate::adapters::kafka::fix_for(&cause);
            if fix.starts_with("check kafka.brokers") {
                format!(
                    "Kafka unreachable: no answer from {source} within {deadline:?} ({cause}); check FLUX_KAFKA__BROKERS / KAFKA_BROKER_ADDRESS and that the brokers are up, or raise FLUX_LIFECYCLE__STARTUP_DEADLINE"
                )
            } else {
                // The brokers were reached and refused the handshake: the address is right.
                format!("Kafka refused the connection: {source} within {deadline:?} ({cause})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_start_up_failure_names_the_cause_and_the_fix() {
        let deadline = Duration::from_secs(30);
        let fails = |e: Option<EventSourceError>| startup_failure("b1:9092", deadline, e.as_ref());
        let missing = fails(Some(EventSourceError::UnknownTopic("news".into())));
        assert!(missing.contains("topic news does not exist"), "{missing}");
        assert!(missing.contains("FLUX_KAFKA__CREATE_TOPICS"), "{missing}");
        assert!(!missing.contains("unreachable"), "{missing}");
        let refused = fails(Some(EventSourceError::TopicNotCreated {
            topic: "news".into(),
            reason: "replication factor 3 larger than available brokers 1".into(),
        }));
        assert!(refused.contains("replication factor 3"), "{refused}");
        assert!(
            refused.contains("FLUX_KAFKA__REPLICATION_FACTOR"),
            "{refused}"
        );
        assert!(!refused.contains("unreachable"), "{refused}");
        for lost in [
            None,
            Some(EventSourceError::Unavailable("connection refused".into())),
        ] {
            let lost = fails(lost);
            assert!(
                lost.starts_with("Kafka unreachable: no answer from b1:9092"),
                "{lost}"
            );
        }
        // A refused TLS handshake: the address is right, the certificate is not.
        let tls = fails(Some(EventSourceError::Unavailable(
            "no Kafka broker answered within 10s (tried b1:9093): invalid peer certificate: UnknownIssuer; check kafka.tls: …".into(),
        )));
        assert!(tls.starts_with("Kafka refused the connection"), "{tls}");
        assert!(!tls.contains("FLUX_KAFKA__BROKERS"), "{tls}");
    }
}
