//! Replies to the snapshot requests and the hydration sent on room join (contract §c.4, D4).
//! Cached snapshots are JSON text and are spliced in without being parsed again.

use serde_json::json;
use serde_json::value::RawValue;

use super::payload::Payload;
use super::topics::*;

/// The four snapshot requests a client can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotRequest {
    TopMovers,
    TopCoins,
    Stocks,
    News,
}

impl SnapshotRequest {
    /// In hydration order: news first, as the original hydrated it.
    pub const ALL: [SnapshotRequest; 4] =
        [Self::News, Self::TopMovers, Self::TopCoins, Self::Stocks];

    pub fn from_event(event: &str) -> Option<Self> {
        match event {
            REQ_MOVERS => Some(Self::TopMovers),
            REQ_TOPCOINS => Some(Self::TopCoins),
            REQ_STOCKS => Some(Self::Stocks),
            REQ_NEWS => Some(Self::News),
            _ => None,
        }
    }

    pub fn snapshot(self) -> SnapshotKey {
        match self {
            Self::TopMovers => SNAP_MOVERS,
            Self::TopCoins => SNAP_TOPCOINS,
            Self::Stocks => SNAP_STOCKS,
            Self::News => SNAP_NEWS,
        }
    }

    /// The event that carries the reply.
    pub fn reply_event(self) -> &'static str {
        match self {
            Self::TopMovers => EV_MOVERS,
            Self::TopCoins => EV_TOPCOINS,
            Self::Stocks => EV_STOCKS,
            Self::News => EV_NEWS,
        }
    }

    /// The success reply around a cached snapshot, or `None` when the cached text is not JSON
    /// (treated as a miss).
    pub fn hit(self, cached: &str) -> Option<Payload> {
        let raw: &RawValue = serde_json::from_str(cached).ok()?;
        let data = raw.get();
        let text = match self {
            Self::TopMovers | Self::TopCoins => {
                format!(r#"{{"status":"success","source":"cache","data":{data}}}"#)
            }
            Self::Stocks => format!(r#"{{"status":"success","data":{data}}}"#),
            Self::News => format!(r#"{{"status":"success","scope":"global","data":{data}}}"#),
        };
        Some(Payload::from_json(text))
    }

    /// As [`hit`](Self::hit), for a snapshot read from the shared cache, which another writer
    /// may have filled: `None` unless it has the shape this gateway stores
    /// ([`valid_snapshot`](super::events::valid_snapshot)).
    pub fn cached_hit(self, cached: &str) -> Option<Payload> {
        super::events::valid_snapshot(self.snapshot(), cached)
            .then(|| self.hit(cached))
            .flatten()
    }

    /// The reply when nothing is cached.
    pub fn miss(self) -> Payload {
        let message = match self {
            Self::TopMovers | Self::Stocks => "Data will refresh when backend reconnects",
            Self::TopCoins => "Fetching latest crypto top coins",
            Self::News => "Fetching latest news",
        };
        Payload::new(&json!({"status": "loading", "message": message}))
    }

    /// The reply when the refresh this request needed could not be sent.
    pub fn error(self, cause: &str) -> Payload {
        let message = match self {
            Self::TopMovers => "Failed to fetch top movers",
            Self::TopCoins => "Failed to fetch crypto top coins",
            Self::Stocks => "Failed to fetch stocks top performers",
            Self::News => "Failed to fetch news",
        };
        Payload::new(&json!({"status": "error", "message": message, "error": cause}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn hits_splice_the_cached_value_in_contract_order() {
        let p = SnapshotRequest::TopCoins
            .hit(r#"{"topCoins":[1]}"#)
            .unwrap();
        assert_eq!(
            p.as_str(),
            r#"{"status":"success","source":"cache","data":{"topCoins":[1]}}"#
        );
        let p = SnapshotRequest::News.hit("[1]").unwrap();
        assert_eq!(
            p.as_str(),
            r#"{"status":"success","scope":"global","data":[1]}"#
        );
    }

    #[test]
    fn corrupt_cached_text_is_a_miss() {
        assert!(SnapshotRequest::Stocks.hit("{not json").is_none());
    }

    #[test]
    fn miss_and_error_replies_have_the_contract_messages() {
        assert_eq!(
            SnapshotRequest::TopMovers.miss().to_value(),
            serde_json::json!({"status":"loading","message":"Data will refresh when backend reconnects"})
        );
        let e: Value = SnapshotRequest::News.error("broker down").to_value();
        assert_eq!(e["message"], "Failed to fetch news");
        assert_eq!(e["error"], "broker down");
    }
}
