//! Test support for the gateway on in-memory adapters: a running app on a random port and
//! a Socket.IO client (rust_socketio, websocket transport) that records what it receives.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flux_bff::adapters::memory::{MemoryBus, MemoryCache};
use flux_bff::boot::{Application, Ports, Settings};
use flux_bff::ports::SnapshotCache;
use futures::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestApp {
    pub addr: SocketAddr,
    pub bus: MemoryBus,
    pub cache: Arc<dyn SnapshotCache>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Settings::default()).await
    }

    /// Starts the gateway on a fresh in-memory bus and cache.
    pub async fn spawn_with(settings: Settings) -> Self {
        let bus = MemoryBus::new();
        let cache = Arc::new(MemoryCache::default());
        Self::spawn_on(settings, bus, cache).await
    }

    /// Starts the gateway on the given bus and cache (several apps may share them).
    pub async fn spawn_on(
        settings: Settings,
        bus: MemoryBus,
        cache: Arc<dyn SnapshotCache>,
    ) -> Self {
        let ports = Ports {
            source: Arc::new(bus.clone()),
            sink: Arc::new(bus.clone()),
            cache,
            publisher: Some(Arc::new(bus.clone())),
            source_name: "the test bus".into(),
        };
        let me = Self::start(settings, ports, bus).await;
        // Ready once the start-up refreshes went out (consumers run by then).
        me.wait_records(flux_bff::domain::topics::NEWS_REFRESH, 1)
            .await;
        me
    }

    /// Starts the gateway on any ports (Kafka in the Kafka tests) and waits until `/readyz`
    /// answers 200. `bus` of the result is an unused stand-in.
    pub async fn spawn_ports(settings: Settings, ports: Ports) -> Self {
        let me = Self::start(settings, ports, MemoryBus::new()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while me.readyz().await != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }

    async fn start(mut settings: Settings, ports: Ports, bus: MemoryBus) -> Self {
        let _ = flux_bff::telemetry::metrics::handle();
        settings.http.host = [127, 0, 0, 1].into();
        settings.http.port = 0;
        let cache = ports.cache.clone();
        let app = Application::build(settings, ports)
            .await
            .expect("app builds");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            bus,
            cache,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn readyz(&self) -> u16 {
        match reqwest::get(format!("{}readyz", self.url())).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Publishes an event value (compact JSON) as a domain service would.
    pub fn publish(&self, topic: &str, key: Option<&str>, value: &Value) {
        self.bus
            .publish(topic, key, Some(value.to_string().as_bytes()));
    }

    /// Publishes the fixture of `topic` (not waiting for anything) and returns it.
    pub async fn publish_fixture(&self, topic: &str) -> Value {
        let value = fixture(&format!("{topic}.json"));
        self.publish(topic, None, &value);
        value
    }

    /// Publishes the four snapshot fixtures and waits until all four are cached.
    pub async fn cache_every_snapshot(&self) {
        use flux_bff::domain::topics::*;
        for topic in [MOVERS_EVENTS, TOPCOINS_EVENTS, NEWS_EVENTS, STOCK_EVENTS] {
            self.publish_fixture(topic).await;
        }
        for snapshot in [SNAP_MOVERS, SNAP_TOPCOINS, SNAP_NEWS, SNAP_STOCKS] {
            self.wait_cached(snapshot.key).await;
        }
    }

    /// Waits until `key` is cached.
    pub async fn wait_cached(&self, key: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(v)) = self.cache.get(key).await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{key} never cached");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `topic` holds at least `n` records and returns their values.
    pub async fn wait_records(&self, topic: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let records = self.records(topic);
            if records.len() >= n {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topic}: {} records, expected {n}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The values of the records on `topic`.
    pub fn records(&self, topic: &str) -> Vec<Value> {
        self.bus
            .records(topic)
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).unwrap())
            .collect()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The sum of a counter's samples whose line contains every one of `labels`.
/// Runs `test` on a current-thread runtime (so that the background tasks it starts, a whole
/// gateway's included, run on this thread too) with a Prometheus recorder of its own: its
/// series are no other test's (the binary's global recorder is shared by the tests running
/// beside it). Returns the recorder's handle.
pub fn with_own_metrics<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(metrics_exporter_prometheus::PrometheusHandle) -> F,
) -> metrics_exporter_prometheus::PrometheusHandle {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test(handle.clone()));
    });
    handle
}

pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Socket.IO client that records every event it receives, in order.
pub struct TestClient {
    pub client: Client,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    notify: Arc<Notify>,
}

impl TestClient {
    pub async fn connect(app: &TestApp, guest_id: Option<&str>) -> Self {
        let auth = match guest_id {
            Some(id) => serde_json::json!({ "guestId": id }),
            None => serde_json::json!({}),
        };
        Self::connect_with_auth(app, auth).await
    }

    pub async fn connect_with_auth(app: &TestApp, auth: Value) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (r1, n1, r2, n2) = (
            received.clone(),
            notify.clone(),
            received.clone(),
            notify.clone(),
        );
        let client = ClientBuilder::new(app.url())
            .transport_type(TransportType::Websocket)
            .auth(auth)
            .reconnect(false)
            .on_any(move |event: Event, payload: Payload, _c: Client| {
                let (received, notify) = (r1.clone(), n1.clone());
                async move {
                    let value = match payload {
                        Payload::Text(mut args) if args.len() == 1 => args.remove(0),
                        // A room event's last argument is its recovery offset (D26), which
                        // socket.io-client keeps for itself: the payload is the first one.
                        Payload::Text(mut args) if args.len() == 2 && args[1].is_string() => {
                            args.remove(0)
                        }
                        Payload::Text(args) => Value::Array(args),
                        _ => Value::Null,
                    };
                    received.lock().unwrap().push((String::from(event), value));
                    notify.notify_waiters();
                }
                .boxed()
            })
            .on(Event::Close, move |_p: Payload, _c: Client| {
                let (received, notify) = (r2.clone(), n2.clone());
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push(("__close".into(), Value::Null));
                    notify.notify_waiters();
                }
                .boxed()
            })
            .connect()
            .await
            .expect("socket.io client connects");
        let me = Self {
            client,
            received,
            notify,
        };
        // Like the real frontend, nothing is sent before `session:init` (rust_socketio would
        // otherwise send before the namespace connect completed).
        me.wait_for("session:init").await;
        me
    }

    pub async fn emit(&self, event: &str, data: Value) {
        self.client.emit(event, data).await.expect("emit");
    }

    /// Emits an event with no argument at all.
    pub async fn emit_empty(&self, event: &str) {
        self.client
            .emit(event, Payload::Text(vec![]))
            .await
            .expect("emit");
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self, event: &str) -> usize {
        self.received().iter().filter(|(e, _)| e == event).count()
    }

    pub fn clear(&self) {
        self.received.lock().unwrap().clear();
    }

    /// Waits for the `nth` (1-based) occurrence of `event` and returns its payload.
    pub async fn wait_nth(&self, event: &str, nth: usize, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if let Some((_, v)) = self
                .received()
                .into_iter()
                .filter(|(e, _)| e == event)
                .nth(nth - 1)
            {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    pub async fn wait_for(&self, event: &str) -> Value {
        self.wait_nth(event, 1, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {event} within {WAIT:?}; got {:?}", self.events()))
    }

    /// The names of the events received so far.
    pub fn events(&self) -> Vec<String> {
        self.received().into_iter().map(|(e, _)| e).collect()
    }

    /// Sends a location and waits until the socket is in `city`'s weather room: weather
    /// probes are published until one arrives (the probes are then forgotten).
    pub async fn locate(&self, app: &TestApp, location: Value, city: &str) {
        self.emit("userLocationUpdate", location).await;
        self.wait_in_room(app, city).await;
    }

    /// Waits until this socket receives `city`'s weather, publishing probes meanwhile. A probe
    /// is a result without `status`: it ends the city's outstanding command but is not kept
    /// as the city's latest result (D23), so it never makes a later join find fresh weather.
    pub async fn wait_in_room(&self, app: &TestApp, city: &str) {
        let event = format!("weather.{city}.update");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            app.publish(WEATHER, None, &probe(city));
            if self
                .wait_nth(&event, 1, Duration::from_millis(50))
                .await
                .is_some()
            {
                self.received.lock().unwrap().retain(|(e, _)| *e != event);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never joined weather.{city}"
            );
        }
    }
}

pub const WEATHER: &str = "weather.service.event.updated";

/// A weather event for `city`, shaped like the fixture.
pub fn weather(city: &str) -> Value {
    let mut v = fixture("weather.service.event.updated.json");
    v["data"]["city"] = Value::from(city);
    v
}

/// A weather result for `city` without `status` (the room gets `{data}` only; not kept).
pub fn probe(city: &str) -> Value {
    let mut v = weather(city);
    v.as_object_mut().unwrap().remove("status");
    v
}

pub fn pune() -> Value {
    serde_json::json!({"city":"Pune","region":"Maharashtra","country":"IN","lat":18.5196,"lon":73.8553,"ip":"49.36.112.10"})
}

/// A raw WebSocket connection to the gateway (no Socket.IO client in between).
pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket client of the gateway at `addr`, connected as `guest` (its `session:init`
/// read) and joined to the rooms of `location` (see [`location`]; crypto.global among them);
/// it reads only when the test tells it to.
pub async fn raw_joined(addr: impl std::fmt::Display, guest: &str, location: &Value) -> RawWs {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(format!(r#"40{{"guestId":"{guest}"}}"#)))
        .await
        .unwrap();
    loop {
        let m = ws.next().await.unwrap().unwrap();
        if m.to_text().unwrap_or("").contains("session:init") {
            break;
        }
    }
    ws.send(Message::text(format!(
        r#"42["userLocationUpdate",{location}]"#
    )))
    .await
    .unwrap();
    ws
}

pub fn location(city: &str) -> Value {
    serde_json::json!({"city": city, "region": "Region", "country": "IN", "lat": "12.5", "lon": 77.1, "ip": "10.1.2.3"})
}
