//! The simulated stock-service: a trading day of large US stocks whose prices wander around
//! their previous close, ranked into the top gainers and losers like the Finnhub crawl.

use std::time::SystemTime;

use rand::Rng;
use serde::Serialize;

use super::clock::{gaussian, iso, round_dp};

#[rustfmt::skip]
const UNIVERSE: &[(&str, f64)] = &[
    ("AAPL", 228.4), ("MSFT", 415.2), ("NVDA", 118.6), ("AMZN", 198.3), ("GOOGL", 172.5),
    ("META", 602.1), ("TSLA", 248.9), ("AVGO", 182.4), ("JPM", 241.3), ("V", 331.4),
    ("MA", 525.8), ("UNH", 498.2), ("XOM", 112.5), ("JNJ", 158.3), ("PG", 168.9),
    ("HD", 389.1), ("COST", 912.4), ("ABBV", 195.2), ("CRM", 288.4), ("ORCL", 168.7),
    ("NFLX", 945.3), ("AMD", 112.8), ("ADBE", 442.1), ("PEP", 152.3), ("KO", 68.9),
    ("CSCO", 61.4), ("INTC", 22.1), ("QCOM", 162.7), ("TXN", 188.3), ("IBM", 248.6),
    ("CAT", 352.4), ("BA", 172.8), ("GS", 585.2), ("MS", 128.9), ("DIS", 108.7),
    ("NKE", 76.4), ("WMT", 92.3), ("RTX", 131.2), ("LLY", 842.5), ("MRK", 98.7),
    ("PFE", 26.3), ("T", 27.1), ("VZ", 42.8), ("UBER", 74.2), ("PLTR", 88.1),
];

/// Daily volatility of a stock's price, and the part of it a single refresh adds.
const DAY_SIGMA: f64 = 0.02;
const STEP_SIGMA: f64 = 0.004;
/// How much of the distance from the previous close survives a refresh (keeps moves daily-sized).
const KEEP: f64 = 0.97;

struct Stock {
    symbol: &'static str,
    previous_close: f64,
    open: f64,
    current: f64,
    high: f64,
    low: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Performance {
    symbol: &'static str,
    current_price: f64,
    previous_close: f64,
    change: f64,
    change_percent: f64,
    high: f64,
    low: f64,
    open: f64,
}

#[derive(Serialize)]
struct Meta {
    source: &'static str,
    market: &'static str,
    exchanges: [&'static str; 2],
    currency: &'static str,
    timezone: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Performers {
    meta: Meta,
    timestamp: String,
    top_gainers: Vec<Performance>,
    top_losers: Vec<Performance>,
}

#[derive(Serialize)]
struct StockEvent {
    data: Performers,
}

/// The trading day of every stock of the universe.
pub struct Stocks {
    stocks: Vec<Stock>,
}

impl Stocks {
    pub fn new(rng: &mut impl Rng) -> Self {
        let stocks = UNIVERSE
            .iter()
            .map(|&(symbol, price)| {
                let previous_close = price * (1.0 + 0.01 * gaussian(rng));
                let open = previous_close * (1.0 + 0.006 * gaussian(rng));
                let current = previous_close * (1.0 + DAY_SIGMA * gaussian(rng));
                let high = open.max(current) * (1.0 + rng.random_range(0.0..0.006));
                let low = open.min(current) * (1.0 - rng.random_range(0.0..0.006));
                Stock {
                    symbol,
                    previous_close,
                    open,
                    current,
                    high,
                    low,
                }
            })
            .collect();
        Self { stocks }
    }

    /// Moves every price one refresh forward.
    pub fn step(&mut self, rng: &mut impl Rng) {
        for s in &mut self.stocks {
            let drift = (s.current / s.previous_close).ln() * KEEP;
            s.current = s.previous_close * (drift + STEP_SIGMA * gaussian(rng)).exp();
            s.high = s.high.max(s.current);
            s.low = s.low.min(s.current);
        }
    }

    /// The stock-service event: the ten best and ten worst stocks of the day.
    pub fn performers(&self, now: SystemTime) -> Vec<u8> {
        let mut ranked: Vec<Performance> = self
            .stocks
            .iter()
            .map(|s| {
                let current_price = round_dp(s.current, 2);
                let previous_close = round_dp(s.previous_close, 2);
                let change = round_dp(current_price - previous_close, 2);
                let open = round_dp(s.open, 2);
                Performance {
                    symbol: s.symbol,
                    current_price,
                    previous_close,
                    change,
                    change_percent: round_dp(change / previous_close * 100.0, 2),
                    high: round_dp(s.high, 2).max(current_price).max(open),
                    low: round_dp(s.low, 2).min(current_price).min(open),
                    open,
                }
            })
            .collect();
        ranked.sort_by(|a, b| b.change_percent.total_cmp(&a.change_percent));
        let top_losers: Vec<Performance> = ranked.split_off(ranked.len().saturating_sub(10));
        let top_losers = top_losers.into_iter().rev().collect();
        ranked.truncate(10);
        let event = StockEvent {
            data: Performers {
                meta: Meta {
                    source: "Finnhub",
                    market: "US",
                    exchanges: ["NYSE", "NASDAQ"],
                    currency: "USD",
                    timezone: "UTC",
                },
                timestamp: iso(now),
                top_gainers: ranked,
                top_losers,
            },
        };
        super::js_json(&event).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::Value;

    #[test]
    fn gainers_and_losers_are_ranked_and_consistent() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut stocks = Stocks::new(&mut rng);
        for _ in 0..500 {
            stocks.step(&mut rng);
        }
        let v: Value = serde_json::from_slice(&stocks.performers(SystemTime::now())).unwrap();
        let side = |s: &str| v["data"][s].as_array().unwrap().clone();
        let (gainers, losers) = (side("topGainers"), side("topLosers"));
        assert_eq!((gainers.len(), losers.len()), (10, 10));
        let pct = |x: &Value| x["changePercent"].as_f64().unwrap();
        assert!(gainers.windows(2).all(|w| pct(&w[0]) >= pct(&w[1])));
        assert!(losers.windows(2).all(|w| pct(&w[0]) <= pct(&w[1])));
        assert!(pct(&gainers[9]) >= pct(&losers[9]));
        for s in gainers.iter().chain(&losers) {
            let f = |k: &str| s[k].as_f64().unwrap();
            assert!(f("low") <= f("currentPrice") && f("currentPrice") <= f("high"));
            assert!(f("low") <= f("open") && f("open") <= f("high"));
            assert!((f("change") - (f("currentPrice") - f("previousClose"))).abs() < 0.006);
            assert!(pct(s).abs() < 15.0, "{s}");
        }
    }
}
