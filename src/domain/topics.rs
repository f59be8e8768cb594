//! Names on the wire: Kafka topics, Socket.IO rooms and events, cache keys and TTLs.

use std::time::Duration;

pub const WEATHER_EVENTS: &str = "weather.service.event.updated";
pub const MOVERS_EVENTS: &str = "crypto.movers.event.updated";
pub const TOPCOINS_EVENTS: &str = "crypto.topcoins.event.updated";
pub const TICKER_EVENTS: &str = "crypto.ticker.event.updated";
pub const NEWS_EVENTS: &str = "news.service.event.updated";
pub const STOCK_EVENTS: &str = "stock.service.event.updated";

/// Every event topic the gateway consumes.
pub const EVENT_TOPICS: [&str; 6] = [
    WEATHER_EVENTS,
    MOVERS_EVENTS,
    TOPCOINS_EVENTS,
    TICKER_EVENTS,
    NEWS_EVENTS,
    STOCK_EVENTS,
];

/// The index of an event topic in [`EVENT_TOPICS`] (connection-state recovery's positions).
pub fn event_topic_index(topic: &str) -> Option<u8> {
    EVENT_TOPICS
        .iter()
        .position(|t| *t == topic)
        .map(|i| i as u8)
}

/// The event topics whose records are snapshots (cached, hydrated): news, movers, top coins,
/// stocks.
pub const SNAPSHOT_TOPICS: [&str; 4] = [NEWS_EVENTS, MOVERS_EVENTS, TOPCOINS_EVENTS, STOCK_EVENTS];

pub const WEATHER_FETCH: &str = "weather.service.command.fetch";
pub const TOPCOINS_REFRESH: &str = "crypto.service.command.topcoins.refresh";
pub const TOPMOVERS_REFRESH: &str = "crypto.service.command.topmovers.refresh";
pub const STOCKS_REFRESH: &str = "stock.service.command.topperformers.refresh";
pub const NEWS_REFRESH: &str = "news.service.command.refresh";

/// Every command topic the gateway produces to.
pub const COMMAND_TOPICS: [&str; 5] = [
    WEATHER_FETCH,
    TOPCOINS_REFRESH,
    TOPMOVERS_REFRESH,
    STOCKS_REFRESH,
    NEWS_REFRESH,
];

pub const ROOM_CRYPTO: &str = "crypto.global";
pub const ROOM_NEWS: &str = "news.global";
pub const ROOM_STOCK: &str = "stock.global";
/// The city used when a client declares none.
pub const DEFAULT_CITY: &str = "Delhi";

pub const EV_SESSION_INIT: &str = "session:init";
pub const EV_USER_UNIQUE_ID: &str = "userUniqueId";
pub const EV_MOVERS: &str = "cryptoTopMoversResponse";
pub const EV_TOPCOINS: &str = "cryptoTopCoinsResponse";
pub const EV_TICKER: &str = "cryptoTickerResponse";
pub const EV_NEWS: &str = "newsUpdate";
pub const EV_STOCKS: &str = "stockTopPerformersResponse";

pub const REQ_LOCATION: &str = "userLocationUpdate";
pub const REQ_MOVERS: &str = "cryptoTopMoversRequest";
pub const REQ_TOPCOINS: &str = "cryptoTopCoinsRequest";
pub const REQ_STOCKS: &str = "stockTopPerformersRequest";
pub const REQ_NEWS: &str = "topNewsRequest";
pub const REQ_USER_ID: &str = "getUserId";

/// Every event a client of the contract sends.
pub const CLIENT_EVENTS: [&str; 6] = [
    REQ_LOCATION,
    REQ_MOVERS,
    REQ_TOPCOINS,
    REQ_STOCKS,
    REQ_NEWS,
    REQ_USER_ID,
];

/// Length in bytes of the longest of [`CLIENT_EVENTS`].
pub const LONGEST_CLIENT_EVENT: usize = {
    let mut longest = 0;
    let mut i = 0;
    while i < CLIENT_EVENTS.len() {
        if CLIENT_EVENTS[i].len() > longest {
            longest = CLIENT_EVENTS[i].len();
        }
        i += 1;
    }
    longest
};

/// A cached snapshot: its key (relative to the cache prefix) and time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotKey {
    pub key: &'static str,
    pub ttl: Duration,
}

pub const SNAP_MOVERS: SnapshotKey = SnapshotKey {
    key: "crypto:top-movers",
    ttl: Duration::from_secs(300),
};
pub const SNAP_TOPCOINS: SnapshotKey = SnapshotKey {
    key: "crypto:top-coins",
    ttl: Duration::from_secs(300),
};
pub const SNAP_NEWS: SnapshotKey = SnapshotKey {
    key: "news:global",
    ttl: Duration::from_secs(720),
};
pub const SNAP_STOCKS: SnapshotKey = SnapshotKey {
    key: "stocks:top:performers",
    ttl: Duration::from_secs(900),
};

/// The room of a city's weather, `weather.<city>` (city verbatim).
pub fn weather_room(city: &str) -> String {
    format!("weather.{city}")
}

/// The event carrying a city's weather, `weather.<city>.update`.
pub fn weather_event(city: &str) -> String {
    format!("weather.{city}.update")
}

/// The short name of a topic used in metrics labels.
pub fn stream_name(topic: &str) -> &'static str {
    match topic {
        WEATHER_EVENTS => "weather",
        MOVERS_EVENTS => "movers",
        TOPCOINS_EVENTS => "topcoins",
        TICKER_EVENTS => "ticker",
        NEWS_EVENTS => "news",
        STOCK_EVENTS => "stocks",
        _ => "unknown",
    }
}
