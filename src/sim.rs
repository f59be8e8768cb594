//! A built-in simulator of the four Flux domain services (weather-, crypto-, news- and
//! stock-service) for embedded mode and the `flux-sim` tool. It talks only to the ports: it
//! consumes the command topics through an [`EventSource`] and produces the six event topics
//! through a [`CommandSink`], so the same code drives the in-memory bus or a real Kafka.
//!
//! Every value it produces is shaped exactly like the matching `fixtures/<topic>.json` (same
//! keys, key order and types) and passes the gateway's validation.

mod clock;
mod market;
mod news;
mod stocks;
mod weather;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::Command;
use crate::domain::topics::*;
use crate::ports::{CommandSink, CommandSinkError, EventSource, Positions, Record};
use crate::telemetry::metrics::{SIM_COMMANDS, SIM_EVENTS_PUBLISHED, SIM_PUBLISH_FAILURES};

pub use market::max_products;

/// `event` as JSON the way the domain services' `JSON.stringify` writes it: an integral number
/// without a fraction (`9`, not serde's `9.0`), so that the simulated records are the real
/// ones' bytes, not only their shape.
fn js_json<T: serde::Serialize>(event: &T) -> Option<Vec<u8>> {
    fn integral(value: &mut Value) {
        match value {
            Value::Number(n) => {
                // Within ±2^53 an f64 is an integer exactly when it has no fraction.
                if let Some(x) = n.as_f64().filter(|x| n.is_f64() && x.fract() == 0.0)
                    && x.abs() < 9_007_199_254_740_992.0
                {
                    *n = serde_json::Number::from(x as i64);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(integral),
            Value::Object(fields) => fields.values_mut().for_each(integral),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(event).ok()?;
    integral(&mut value);
    serde_json::to_vec(&value).ok()
}

/// How the simulator behaves. A zero interval turns that periodic publication off (the stream
/// is then published at start and on its refresh command only).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct SimSettings {
    /// Run the simulator at all (embedded mode).
    pub enabled: bool,
    /// How often every product ticks.
    #[serde(with = "humantime_serde")]
    pub ticker_interval: Duration,
    /// How often the top movers and the top coins are published.
    #[serde(with = "humantime_serde")]
    pub movers_interval: Duration,
    /// How often the news are refreshed.
    #[serde(with = "humantime_serde")]
    pub news_interval: Duration,
    /// How often the stock performers are published.
    #[serde(with = "humantime_serde")]
    pub stocks_interval: Duration,
    /// Delay before the first snapshots are published and commands are answered.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// How many Coinbase products tick (1 to [`max_products`]).
    pub products: usize,
    /// Seed of the random generator, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ticker_interval: Duration::from_secs(1),
            movers_interval: Duration::from_secs(90),
            news_interval: Duration::from_secs(8 * 60),
            stocks_interval: Duration::from_secs(120),
            initial_delay: Duration::ZERO,
            products: 10,
            seed: None,
        }
    }
}

/// Key of every news event (contract §a.5).
const NEWS_KEY: &str = "globalnews";
/// Back-off between re-subscriptions to the command topics.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Plays weather-, crypto-, news- and stock-service: consumes the command topics through
/// `commands`, produces the six event topics through `events`, until `shutdown`.
pub fn spawn(
    settings: SimSettings,
    events: Arc<dyn CommandSink>,
    commands: Arc<dyn EventSource>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(settings, events, commands, shutdown))
}

async fn run(
    settings: SimSettings,
    events: Arc<dyn CommandSink>,
    commands: Arc<dyn EventSource>,
    shutdown: CancellationToken,
) {
    if !settings.enabled {
        tracing::info!("domain simulator disabled");
        return;
    }
    // Subscribe before the initial delay so that no command sent meanwhile is missed.
    let (tx, mut rx) = mpsc::channel(256);
    let consumer = tokio::spawn(consume_commands(commands, tx, shutdown.clone()));
    let mut world = World::new(&settings);
    tracing::info!(
        products = world.market.product_ids().len(),
        ticker_interval = ?settings.ticker_interval,
        "domain simulator started"
    );

    let started = tokio::select! {
        () = tokio::time::sleep(settings.initial_delay) => true,
        () = shutdown.cancelled() => false,
    };
    if started {
        let first = world.start();
        world.publish(&*events, first).await;
        let mut tickers = every(settings.ticker_interval, MissedTickBehavior::Skip);
        let mut movers = every(settings.movers_interval, MissedTickBehavior::Delay);
        let mut news = every(settings.news_interval, MissedTickBehavior::Delay);
        let mut stocks = every(settings.stocks_interval, MissedTickBehavior::Delay);
        loop {
            let out = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(record) = rx.recv() => world.answer(&record),
                () = tick(&mut tickers) => world.tickers(),
                () = tick(&mut movers) => world.crypto_lists(),
                () = tick(&mut news) => world.news(news::Trigger::Interval),
                () = tick(&mut stocks) => world.stocks(),
            };
            tokio::select! {
                () = world.publish(&*events, out) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }
    let _ = consumer.await;
    tracing::info!("domain simulator stopped");
}

/// A periodic timer whose first tick is one period away, or none for a zero period.
fn every(period: Duration, missed: MissedTickBehavior) -> Option<Interval> {
    if period.is_zero() {
        return None;
    }
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(missed);
    Some(interval)
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Reads the command topics and hands every record to the simulator. On a lost stream it
/// re-subscribes after a growing, jittered back-off from the positions it has seen, so no
/// command is skipped or answered twice.
async fn consume_commands(
    source: Arc<dyn EventSource>,
    tx: mpsc::Sender<Record>,
    shutdown: CancellationToken,
) {
    let mut positions = Positions::default();
    let mut backoff = RETRY_MIN;
    loop {
        match open(&*source, &mut positions).await {
            Ok(mut stream) => loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = shutdown.cancelled() => return,
                };
                match item {
                    Some(Ok(crate::ports::Fetched::Record(record))) => {
                        backoff = RETRY_MIN;
                        positions.advance(&record);
                        if tx.send(record).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(crate::ports::Fetched::Passed {
                        topic,
                        partition,
                        next_offset,
                    })) => positions.pass(&topic, partition, next_offset),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "simulator lost the command topics; re-subscribing");
                        break;
                    }
                    None => {
                        tracing::warn!("simulator command stream ended; re-subscribing");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "simulator cannot subscribe to the command topics");
            }
        }
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::select! {
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Subscribes to the command topics from `positions`. The first time, every partition's start
/// is pinned, so that a later resume is exact even for a topic that delivered nothing yet.
async fn open(
    source: &dyn EventSource,
    positions: &mut Positions,
) -> Result<crate::ports::RecordStream, crate::ports::EventSourceError> {
    if positions.is_empty() {
        *positions = source.latest_positions(&COMMAND_TOPICS).await?;
    }
    source.subscribe(&COMMAND_TOPICS, positions).await
}

/// The state of the four simulated services.
struct World {
    rng: StdRng,
    market: market::Market,
    stocks: stocks::Stocks,
    last_step: Instant,
    /// Whether the last publication failed (logs the change of state, not every failure).
    failing: AtomicBool,
}

impl World {
    fn new(settings: &SimSettings) -> Self {
        let mut rng = match settings.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let market = market::Market::new(settings.products, &mut rng);
        let stocks = stocks::Stocks::new(&mut rng);
        Self {
            rng,
            market,
            stocks,
            last_step: Instant::now(),
            failing: false.into(),
        }
    }

    /// Moves the market to now.
    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_step).as_secs_f64();
        self.last_step = now;
        self.market.step(dt, &mut self.rng);
    }

    /// Everything the services publish when they come up.
    fn start(&mut self) -> Vec<Command> {
        let mut out = self.crypto_lists();
        out.extend(self.news(news::Trigger::Initial));
        out.extend(self.stocks());
        out.extend(self.tickers());
        out
    }

    fn tickers(&mut self) -> Vec<Command> {
        self.advance();
        self.market
            .tickers(SystemTime::now(), &mut self.rng)
            .into_iter()
            .map(|(product, value)| Command::new(TICKER_EVENTS, Some(product), value))
            .collect()
    }

    fn movers(&mut self) -> Command {
        self.advance();
        let value = self.market.movers(SystemTime::now(), &mut self.rng);
        Command::new(MOVERS_EVENTS, None, value)
    }

    fn top_coins(&mut self) -> Command {
        self.advance();
        Command::new(TOPCOINS_EVENTS, None, self.market.top_coins())
    }

    /// The crypto-service scheduler publishes both lists together.
    fn crypto_lists(&mut self) -> Vec<Command> {
        vec![self.movers(), self.top_coins()]
    }

    fn news(&mut self, trigger: news::Trigger) -> Vec<Command> {
        let value = news::news(trigger, SystemTime::now(), &mut self.rng);
        vec![Command::new(NEWS_EVENTS, Some(NEWS_KEY.to_owned()), value)]
    }

    fn stocks(&mut self) -> Vec<Command> {
        self.stocks.step(&mut self.rng);
        let value = self.stocks.performers(SystemTime::now());
        vec![Command::new(STOCK_EVENTS, None, value)]
    }

    /// What the services publish in answer to one command record. Like the real services, the
    /// refresh commands' content is ignored; a weather fetch is answered for its city.
    fn answer(&mut self, record: &Record) -> Vec<Command> {
        metrics::counter!(SIM_COMMANDS, "topic" => record.topic.to_string()).increment(1);
        match record.topic.as_ref() {
            WEATHER_FETCH => {
                let command: Value = record
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or(Value::Null);
                match weather::weather(&command, SystemTime::now(), &mut self.rng) {
                    Some(value) => vec![Command::new(WEATHER_EVENTS, None, value)],
                    None => {
                        tracing::debug!("simulator ignores a weather fetch without a usable city");
                        Vec::new()
                    }
                }
            }
            TOPMOVERS_REFRESH => vec![self.movers()],
            TOPCOINS_REFRESH => vec![self.top_coins()],
            STOCKS_REFRESH => self.stocks(),
            NEWS_REFRESH => self.news(news::Trigger::Bff),
            _ => Vec::new(),
        }
    }

    /// Sends `out` concurrently; each send waits for the broker. A failed send is counted and
    /// dropped (the next tick or snapshot replaces it); the first failure of a run is logged.
    async fn publish(&self, sink: &dyn CommandSink, out: Vec<Command>) {
        let sends = out.into_iter().map(|command| async move {
            let stream = stream_name(&command.topic);
            let topic = command.topic.clone();
            match sink.send(command).await {
                Ok(()) => {
                    metrics::counter!(SIM_EVENTS_PUBLISHED, "stream" => stream)
                        .increment(1);
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("simulator publishes events again");
                    }
                }
                Err(e) => {
                    metrics::counter!(SIM_PUBLISH_FAILURES, "stream" => stream)
                        .increment(1);
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        // The sink is the producer of events here: say so, not "command".
                        let cause = match &e {
                            CommandSinkError::Unavailable(why) | CommandSinkError::Rejected(why) => why,
                        };
                        tracing::warn!(%topic, stream, cause = %cause, "simulator cannot publish events to {topic}; dropping them until the broker is back");
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}

#[cfg(test)]
mod tests;
