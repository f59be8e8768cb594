//! The routes: `/healthz`, `/readyz`, `/metrics`, the dashboard, the Socket.IO layer at
//! `/socket.io/` (with the polling-session limit in front of it), and the admin publish hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use socketioxide::layer::SocketIoLayer;
use tower_http::cors::CorsLayer;

use super::Refused;
use super::head::{engine_handshake, trim_socketio_head};
use super::settings::HttpSettings;
use crate::ports::{EventPublisher, Readiness};
use crate::telemetry::metrics;

/// The request extension of a polling handshake the limit let through, kept with the head
/// Engine.IO keeps for the session's life: it counts the session as polling until the
/// namespace connect marks it [`joined`](Self::joined) (from then the Socket.IO adapter's
/// count has it) or the session ends without joining (closed after `connect_timeout`).
/// Handshakes that never join would otherwise escape `socketio.max_polling_sessions`.
#[derive(Clone, Debug)]
pub struct PollingHandshake(Arc<Unjoined>);

#[derive(Debug)]
struct Unjoined {
    count: Arc<AtomicUsize>,
    /// The polling sockets, recounted every second.
    sockets: Arc<AtomicUsize>,
    joined: std::sync::atomic::AtomicBool,
}

impl PollingHandshake {
    /// A new polling handshake counted among the open sessions, unless `max` are open. Taken
    /// before the check (and given back when over), so that handshakes on other threads at
    /// the same moment cannot all pass one check (found by review).
    fn admit(count: &Arc<AtomicUsize>, sockets: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let unjoined = count.fetch_add(1, Ordering::Relaxed) + 1;
        if sockets.load(Ordering::Relaxed) + unjoined > max {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(Arc::new(Unjoined {
            count: Arc::clone(count),
            sockets: Arc::clone(sockets),
            joined: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// The session joined the namespace: counted among its sockets from now on (at once: the
    /// recount comes up to a second later, and sessions joining meanwhile were counted
    /// nowhere).
    pub fn joined(&self) {
        if !self.0.joined.swap(true, Ordering::Relaxed) {
            self.0.sockets.fetch_add(1, Ordering::Relaxed);
            self.0.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Unjoined {
    fn drop(&mut self) {
        if !*self.joined.get_mut() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the routes serve besides static files.
pub struct Routes {
    /// What `/readyz` reports.
    pub readiness: Arc<dyn Readiness>,
    /// Where `/admin/publish` appends records; `None` leaves the route out.
    pub publisher: Option<Arc<dyn EventPublisher>>,
    /// The Socket.IO layer, mounted at `/socket.io/`.
    pub socketio: SocketIoLayer,
    /// Sockets on the polling transport now, kept up to date by the Socket.IO adapter.
    pub polling_sessions: Arc<AtomicUsize>,
    /// New polling sessions are refused (503) at this many; 0: no limit.
    pub max_polling_sessions: usize,
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<dyn Readiness>,
    publisher: Option<Arc<dyn EventPublisher>>,
}

/// The router: `/healthz`, `/readyz`, `/metrics`, the dashboard (`/` and its socket.io-client
/// bundle), `/socket.io/`, and `/admin/publish` when a publisher is given (embedded mode with
/// `admin.publish`).
pub fn router(settings: &HttpSettings, routes: Routes) -> Router {
    let Routes {
        readiness,
        publisher,
        socketio,
        polling_sessions,
        max_polling_sessions: max_polling,
    } = routes;
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/assets/socket.io.min.js", get(socketio_client));
    if publisher.is_some() {
        app = app.route("/admin/publish", post(publish));
    }
    // Polling sessions not joined yet (each counted by its `PollingHandshake`).
    let unjoined = Arc::new(AtomicUsize::new(0));
    let mut app = app
        .with_state(AppState {
            readiness,
            publisher,
        })
        .layer(socketio)
        // Inside CORS, which still sees every header.
        .layer(tower::util::MapRequestLayer::new(trim_socketio_head))
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: Next| {
                let polling = max_polling > 0 && engine_handshake(&req) == Some("polling");
                let mut over = false;
                if polling {
                    match PollingHandshake::admit(&unjoined, &polling_sessions, max_polling) {
                        Some(handshake) => {
                            req.extensions_mut().insert(handshake);
                        }
                        None => over = true,
                    }
                }
                async move {
                    if over {
                        Refused::MaxPollingSessions.count();
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many polling sessions; connect with the websocket transport\n",
                        )
                            .into_response();
                    }
                    next.run(req).await
                }
            },
        ));
    if let Some(origin) = settings
        .cors_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST])
                .allow_credentials(true),
        );
    }
    app
}

/// The embedded dashboard (a self-contained page).
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../../assets/dashboard.html"),
    )
        .into_response()
}

/// The socket.io-client browser bundle the dashboard loads (vendored from npm).
async fn socketio_client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../../assets/socket.io.min.js"),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.readiness();
    let body = json!({
        "ready": report.ready,
        "kafka_consumer": report.kafka_consumer,
        "kafka_producer": report.kafka_producer,
        "cache": report.cache,
    });
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PublishQuery {
    topic: String,
    key: Option<String>,
    /// `ndjson`: one record value per line.
    format: Option<String>,
}

/// Appends records to the event topics, as a domain service would produce them.
async fn publish(
    State(state): State<AppState>,
    Query(q): Query<PublishQuery>,
    body: Bytes,
) -> Response {
    let Some(bus) = state.publisher else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut count = 0usize;
    if q.format.as_deref() == Some("ndjson") {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            bus.publish(&q.topic, q.key.as_deref(), Some(line));
            count += 1;
        }
    } else {
        let value = (!body.is_empty()).then_some(&body[..]);
        bus.publish(&q.topic, q.key.as_deref(), value);
        count = 1;
    }
    axum::Json(json!({"published": count})).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::PollingHandshake;

    #[test]
    fn a_polling_handshake_is_admitted_up_to_the_limit_and_counted_once_joined() {
        let (unjoined, sockets) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
        let first = PollingHandshake::admit(&unjoined, &sockets, 3).expect("two of three open");
        let second = PollingHandshake::admit(&unjoined, &sockets, 3).expect("three of three");
        assert!(PollingHandshake::admit(&unjoined, &sockets, 3).is_none());
        assert_eq!(
            unjoined.load(Ordering::Relaxed),
            2,
            "a refused one is not counted"
        );
        // Joined: a socket at once, before the next recount; still no room for another.
        first.joined();
        first.joined();
        assert_eq!(
            (
                unjoined.load(Ordering::Relaxed),
                sockets.load(Ordering::Relaxed)
            ),
            (1, 2)
        );
        assert!(PollingHandshake::admit(&unjoined, &sockets, 3).is_none());
        drop(second); // closed without joining
        assert_eq!(unjoined.load(Ordering::Relaxed), 0);
        assert!(PollingHandshake::admit(&unjoined, &sockets, 3).is_some());
    }
}
