//! The HTTP surface (axum): health, readiness, metrics, the Socket.IO layer, and the optional
//! admin publish hook of embedded mode.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use socketioxide::layer::SocketIoLayer;
use tower_http::cors::CorsLayer;

use crate::adapters::memory::MemoryBus;
use crate::ports::SnapshotCache;

use super::config::Settings;
use super::health::Health;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    cache: Arc<dyn SnapshotCache>,
    bus: Option<MemoryBus>,
}

/// The router: `/healthz`, `/readyz`, `/metrics`, the dashboard (`/` and its socket.io-client
/// bundle), `/socket.io/`, and `/admin/publish` when enabled in embedded mode.
pub fn router(
    settings: &Settings,
    health: Arc<Health>,
    cache: Arc<dyn SnapshotCache>,
    bus: Option<MemoryBus>,
    socketio: SocketIoLayer,
) -> Router {
    let bus = bus.filter(|_| settings.admin.publish);
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/assets/socket.io.min.js", get(socketio_client));
    if bus.is_some() {
        app = app.route("/admin/publish", post(publish));
    }
    let mut app = app
        .with_state(AppState { health, cache, bus })
        .layer(socketio);
    if let Some(origin) = settings
        .http
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
        include_str!("../../assets/dashboard.html"),
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
        include_str!("../../assets/socket.io.min.js"),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let h = &state.health;
    let body = json!({
        "ready": h.ready(),
        "kafka_consumer": h.consuming(),
        "kafka_producer": h.producing(),
        "cache": state.cache.is_available(),
    });
    let status = if h.ready() {
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
        super::metrics::render(),
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

/// Appends records to the in-process bus, as a domain service would produce them.
async fn publish(
    State(state): State<AppState>,
    Query(q): Query<PublishQuery>,
    body: Bytes,
) -> Response {
    let Some(bus) = state.bus else {
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
