//! The simulated crypto-service: a market of coins whose prices follow a mean-reverting random
//! walk, from which the Coinbase tickers, the top coins list and the CoinGecko top movers are
//! all derived, so that the three streams agree with each other.

use std::time::SystemTime;

use rand::Rng;
use serde::Serialize;

use super::clock::{epoch_ms, gaussian, iso, round_dp, round_sig};

/// Rupees per US dollar, for the top coins list (priced in INR like the real service).
const USD_INR: f64 = 86.94;
/// Volatility of the log price per square root of a second (about 9 % a day): lively on screen.
const SIGMA: f64 = 0.0003;
/// Pull of the log price back to its fair value, per second (time constant ≈ 5.5 h).
const REVERSION: f64 = 0.00005;
const DAY: f64 = 86_400.0;
const HOUR: f64 = 3_600.0;
/// The longest step the walk takes at once; a longer pause is treated as this long.
const MAX_STEP: f64 = HOUR;

/// A coin of the catalogue. Coins with a `product` trade on Coinbase and can tick.
struct Spec {
    product: Option<&'static str>,
    gecko_id: &'static str,
    symbol: &'static str,
    name: &'static str,
    image: &'static str,
    price: f64,
    supply: f64,
    volume_usd: f64,
    rank: u32,
    /// Decimals of the Coinbase quote increment.
    decimals: usize,
}

const fn coin(
    product: Option<&'static str>,
    gecko: (&'static str, &'static str, &'static str),
    image: &'static str,
    (price, supply, volume_usd): (f64, f64, f64),
    rank: u32,
    decimals: usize,
) -> Spec {
    Spec {
        product,
        gecko_id: gecko.0,
        symbol: gecko.1,
        name: gecko.2,
        image,
        price,
        supply,
        volume_usd,
        rank,
        decimals,
    }
}

const IMG: &str = "https://coin-images.coingecko.com/coins/images/";

/// The tradable products first, in the order `products` takes them.
#[rustfmt::skip]
const CATALOGUE: &[Spec] = &[
    coin(Some("BTC-USD"), ("bitcoin", "btc", "Bitcoin"), "1/large/bitcoin.png?1696501400", (84213.57, 19.85e6, 38.1e9), 1, 2),
    coin(Some("ETH-USD"), ("ethereum", "eth", "Ethereum"), "279/large/ethereum.png?1696501628", (3421.77, 120.5e6, 21.2e9), 2, 2),
    coin(Some("SOL-USD"), ("solana", "sol", "Solana"), "4128/large/solana.png?1718769756", (187.42, 481e6, 4.1e9), 6, 2),
    coin(Some("XRP-USD"), ("ripple", "xrp", "XRP"), "44/large/xrp-symbol-white-128.png?1696501442", (2.3871, 57.9e9, 3.4e9), 4, 4),
    coin(Some("ADA-USD"), ("cardano", "ada", "Cardano"), "975/large/cardano.png?1696502090", (0.7213, 35.8e9, 712e6), 10, 4),
    coin(Some("DOGE-USD"), ("dogecoin", "doge", "Dogecoin"), "5/large/dogecoin.png?1696501409", (0.1784, 148e9, 1.9e9), 9, 5),
    coin(Some("AVAX-USD"), ("avalanche-2", "avax", "Avalanche"), "12559/large/Avalanche_Circle_RedWhite_Trans.png?1696512369", (22.61, 416e6, 512e6), 20, 2),
    coin(Some("LINK-USD"), ("chainlink", "link", "Chainlink"), "877/large/chainlink-new-logo.png?1696502009", (19.84, 627e6, 712e6), 14, 3),
    coin(Some("DOT-USD"), ("polkadot", "dot", "Polkadot"), "12171/large/polkadot.png?1696512008", (4.612, 1.52e9, 250e6), 29, 3),
    coin(Some("LTC-USD"), ("litecoin", "ltc", "Litecoin"), "2/large/litecoin.png?1696501400", (92.14, 75.6e6, 480e6), 25, 2),
    coin(Some("BCH-USD"), ("bitcoin-cash", "bch", "Bitcoin Cash"), "780/large/bitcoin-cash-circle.png?1696501932", (341.2, 19.8e6, 300e6), 17, 2),
    coin(Some("XLM-USD"), ("stellar", "xlm", "Stellar"), "100/large/Stellar_symbol_black_RGB.png?1696501482", (0.2873, 30.9e9, 312e6), 22, 6),
    coin(Some("UNI-USD"), ("uniswap", "uni", "Uniswap"), "12504/large/uni.jpg?1696512319", (7.43, 600e6, 210e6), 30, 3),
    coin(Some("ATOM-USD"), ("cosmos", "atom", "Cosmos Hub"), "1481/large/cosmos_hub.png?1696502525", (4.87, 390e6, 150e6), 42, 3),
    coin(Some("NEAR-USD"), ("near", "near", "NEAR Protocol"), "10365/large/near.jpg?1696510367", (5.91, 1.2e9, 512e6), 24, 3),
    coin(Some("SUI-USD"), ("sui", "sui", "Sui"), "26375/large/sui-ocean-square.png?1727791290", (3.412, 3.2e9, 1.29e9), 18, 4),
    coin(None, ("render-token", "render", "Render"), "11636/large/rndr.png?1696511529", (4.87, 518e6, 231.8e6), 58, 3),
    coin(None, ("injective-protocol", "inj", "Injective"), "12882/large/Secondary_Symbol.png?1696512670", (21.43, 97.9e6, 148.2e6), 66, 2),
    coin(None, ("fetch-ai", "fet", "Artificial Superintelligence Alliance"), "5681/large/ASI.png?1719827289", (1.284, 2.59e9, 301.2e6), 45, 4),
    coin(None, ("aave", "aave", "Aave"), "12645/large/aave-token-round.png?1720472354", (312.55, 15.1e6, 402.3e6), 33, 2),
    coin(None, ("pepe", "pepe", "Pepe"), "29850/large/pepe-token.jpeg?1696528776", (1.127e-05, 420.7e12, 1.23e9), 40, 8),
    coin(None, ("bonk", "bonk", "Bonk"), "28600/large/bonk.jpg?1696527587", (2.214e-05, 77.3e12, 312.3e6), 78, 8),
    coin(None, ("dogwifcoin", "wif", "dogwifhat"), "33566/large/dogwifhat.jpg?1702499428", (1.072, 999e6, 401.2e6), 92, 4),
    coin(None, ("floki", "floki", "FLOKI"), "16746/large/PNG_image.png?1696516318", (0.0001268, 9.56e12, 201.2e6), 84, 7),
    coin(None, ("arbitrum", "arb", "Arbitrum"), "16547/large/arb.jpg?1721358242", (0.5123, 4.51e9, 301.2e6), 64, 4),
    coin(None, ("ondo-finance", "ondo", "Ondo"), "26580/large/ONDO.png?1696525656", (1.118, 3.14e9, 212.3e6), 49, 4),
];

/// How many products can tick at most.
pub fn max_products() -> usize {
    CATALOGUE.iter().filter(|s| s.product.is_some()).count()
}

/// The live state of one coin.
struct Coin {
    spec: &'static Spec,
    price: f64,
    fair: f64,
    open_24h: f64,
    open_1h: f64,
    high_24h: f64,
    low_24h: f64,
    low_52w: f64,
    high_52w: f64,
    /// 24 h volume in coin units.
    volume: f64,
}

impl Coin {
    fn new(spec: &'static Spec, rng: &mut impl Rng) -> Self {
        let fair = spec.price * (1.0 + 0.02 * gaussian(rng)).max(0.5);
        let price = fair * (1.0 + 0.015 * gaussian(rng));
        let open_24h = price / (1.0 + 0.035 * gaussian(rng)).max(0.5);
        let open_1h = price / (1.0 + 0.012 * gaussian(rng)).max(0.5);
        let high_24h = price.max(open_24h) * (1.0 + rng.random_range(0.002..0.02));
        let low_24h = price.min(open_24h) * (1.0 - rng.random_range(0.002..0.02));
        Self {
            spec,
            price,
            fair,
            open_24h,
            open_1h,
            high_24h,
            low_24h,
            low_52w: (fair * rng.random_range(0.45..0.75)).min(low_24h),
            high_52w: (fair * rng.random_range(1.2..1.6)).max(high_24h),
            volume: spec.volume_usd / spec.price * rng.random_range(0.8..1.2),
        }
    }

    /// Moves the coin `dt` seconds forward.
    fn step(&mut self, dt: f64, rng: &mut impl Rng) {
        let dt = dt.clamp(0.0, MAX_STEP);
        if dt == 0.0 {
            return;
        }
        let pull = -REVERSION * dt * (self.price / self.fair).ln();
        self.price *= (pull + SIGMA * dt.sqrt() * gaussian(rng)).exp();
        // The reference prices trail the price: a smoothed stand-in for "the price then".
        self.open_24h += (self.price - self.open_24h) * (dt / DAY);
        self.open_1h += (self.price - self.open_1h) * (dt / HOUR);
        let top = self.price.max(self.open_24h);
        let bottom = self.price.min(self.open_24h);
        self.high_24h = (self.high_24h - (self.high_24h - top) * (dt / DAY)).max(self.price);
        self.low_24h = (self.low_24h + (bottom - self.low_24h) * (dt / DAY)).min(self.price);
        self.high_52w = self.high_52w.max(self.high_24h);
        self.low_52w = self.low_52w.min(self.low_24h);
        let base = self.spec.volume_usd / self.spec.price;
        let traded = base * (dt / DAY) * rng.random_range(0.2..1.8);
        self.volume = (self.volume + traded - self.volume * (dt / DAY)).max(0.0);
    }

    /// The 24 h change in percent of the quoted price (what every stream shows).
    fn change_24h(&self) -> f64 {
        (self.quoted_price() - self.open_24h) / self.open_24h * 100.0
    }

    fn change_1h(&self) -> f64 {
        (self.quoted_price() - self.open_1h) / self.open_1h * 100.0
    }

    fn market_cap(&self) -> f64 {
        self.price * self.spec.supply
    }

    /// `x` as a Coinbase quote string.
    fn quote(&self, x: f64) -> String {
        format!("{x:.*}", self.spec.decimals)
    }

    /// The price as Coinbase rounds it: what tickers show, and what the lists are computed from.
    fn quoted_price(&self) -> f64 {
        round_dp(self.price, self.spec.decimals as i32)
    }
}

/// A Coinbase Advanced Trade `ticker` object (every value a string).
#[derive(Serialize)]
struct CoinbaseTicker<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    product_id: &'a str,
    price: String,
    volume_24_h: String,
    low_24_h: String,
    high_24_h: String,
    low_52_w: String,
    high_52_w: String,
    price_percent_chg_24_h: String,
    best_bid: String,
    best_bid_quantity: String,
    best_ask: String,
    best_ask_quantity: String,
}

#[derive(Serialize)]
struct TickerEvent<'a> {
    source: &'static str,
    ts: u64,
    data: CoinbaseTicker<'a>,
}

#[derive(Serialize)]
struct TopCoin<'a> {
    symbol: &'a str,
    name: &'a str,
    price_inr: f64,
    change_24h: f64,
    market_cap_inr: u64,
    volume_24h_inr: u64,
    tradable: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopCoinsEvent<'a> {
    top_coins: Vec<TopCoin<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Mover<'a> {
    id: &'a str,
    symbol: &'a str,
    name: &'a str,
    image: String,
    current_price: f64,
    price_change_percentage1h: f64,
    price_change_percentage24h: f64,
    high24h: f64,
    low24h: f64,
    market_cap: u64,
    market_cap_rank: u32,
    total_volume: u64,
    last_updated: String,
}

#[derive(Serialize)]
struct MoverResult<'a> {
    status: &'static str,
    source: &'static str,
    data: Vec<Mover<'a>>,
    timestamp: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MoversEvent<'a> {
    top_gainers: MoverResult<'a>,
    top_losers: MoverResult<'a>,
}

fn to_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

/// Every coin of the catalogue, and which of them tick.
pub struct Market {
    coins: Vec<Coin>,
    products: usize,
}

impl Market {
    /// A market whose first `products` tradable coins tick (at least one, at most
    /// [`max_products`]).
    pub fn new(products: usize, rng: &mut impl Rng) -> Self {
        Self {
            coins: CATALOGUE.iter().map(|s| Coin::new(s, rng)).collect(),
            products: products.clamp(1, max_products()),
        }
    }

    /// The product ids that tick, in catalogue order.
    pub fn product_ids(&self) -> Vec<&'static str> {
        self.tradable().filter_map(|c| c.spec.product).collect()
    }

    fn tradable(&self) -> impl Iterator<Item = &Coin> {
        self.coins
            .iter()
            .filter(|c| c.spec.product.is_some())
            .take(self.products)
    }

    /// Moves every coin `dt` seconds forward.
    pub fn step(&mut self, dt: f64, rng: &mut impl Rng) {
        for coin in &mut self.coins {
            coin.step(dt, rng);
        }
    }

    /// One ticker value per ticking product: `(product id, JSON value)`.
    pub fn tickers(&self, now: SystemTime, rng: &mut impl Rng) -> Vec<(String, Vec<u8>)> {
        let ts = epoch_ms(now);
        self.tradable()
            .filter_map(|c| {
                let product = c.spec.product?;
                let price = c.quoted_price();
                let increment = 10f64.powi(-(c.spec.decimals as i32));
                let change = c.change_24h();
                let event = TickerEvent {
                    source: "coinbase",
                    ts,
                    data: CoinbaseTicker {
                        kind: "ticker",
                        product_id: product,
                        price: c.quote(price),
                        volume_24_h: format!("{:.8}", c.volume),
                        low_24_h: c.quote(c.low_24h),
                        high_24_h: c.quote(c.high_24h),
                        low_52_w: c.quote(c.low_52w),
                        high_52_w: c.quote(c.high_52w),
                        price_percent_chg_24_h: format!("{change:.14}"),
                        best_bid: c.quote(price - increment),
                        best_bid_quantity: format!("{:.8}", rng.random_range(0.0001..2.0)),
                        best_ask: c.quote(price),
                        best_ask_quantity: format!("{:.8}", rng.random_range(0.0001..2.0)),
                    },
                };
                Some((product.to_owned(), super::js_json(&event)?))
            })
            .collect()
    }

    /// The top coins value: the ticking products by market cap, at most ten.
    pub fn top_coins(&self) -> Vec<u8> {
        let mut coins: Vec<&Coin> = self.tradable().collect();
        coins.sort_by(|a, b| b.market_cap().total_cmp(&a.market_cap()));
        let top_coins = coins
            .into_iter()
            .take(10)
            .filter_map(|c| {
                Some(TopCoin {
                    symbol: c.spec.product?,
                    name: c.spec.name,
                    price_inr: round_dp(c.quoted_price() * USD_INR, 2),
                    change_24h: round_dp(c.change_24h(), 2),
                    market_cap_inr: to_u64(c.market_cap() * USD_INR),
                    volume_24h_inr: to_u64(c.volume * c.price * USD_INR),
                    tradable: true,
                })
            })
            .collect();
        super::js_json(&TopCoinsEvent { top_coins }).unwrap_or_default()
    }

    /// The top movers value: the ten best and ten worst coins by 1 h change (rounded to 0.1,
    /// then by volume), like crypto-service ranks CoinGecko's top 100.
    pub fn movers(&self, now: SystemTime, rng: &mut impl Rng) -> Vec<u8> {
        let mut ranked: Vec<&Coin> = self.coins.iter().collect();
        let key = |c: &Coin| (c.change_1h() * 10.0).round();
        ranked.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then(b.spec.volume_usd.total_cmp(&a.spec.volume_usd))
        });
        let now_ms = epoch_ms(now);
        let mut mover = |c: &&Coin| {
            let updated = now
                .checked_sub(std::time::Duration::from_millis(
                    rng.random_range(500..15_000),
                ))
                .unwrap_or(now);
            let price = if c.spec.product.is_some() {
                c.quoted_price()
            } else {
                round_sig(c.price, 4)
            };
            Mover {
                id: c.spec.gecko_id,
                symbol: c.spec.symbol,
                name: c.spec.name,
                image: format!("{IMG}{}", c.spec.image),
                current_price: price,
                price_change_percentage1h: round_dp(c.change_1h(), 10),
                price_change_percentage24h: round_dp(c.change_24h(), 5),
                high24h: round_sig(c.high_24h, 5).max(price),
                low24h: round_sig(c.low_24h, 5).min(price),
                market_cap: to_u64(c.market_cap()),
                market_cap_rank: c.spec.rank,
                total_volume: to_u64(c.volume * c.price),
                last_updated: iso(updated),
            }
        };
        let gainers = ranked.iter().take(10).map(&mut mover).collect();
        let losers = ranked.iter().rev().take(10).map(&mut mover).collect();
        let side = |data, offset| MoverResult {
            status: "success",
            source: "api",
            data,
            timestamp: now_ms.saturating_sub(offset),
        };
        let event = MoversEvent {
            top_gainers: side(gainers, 19),
            top_losers: side(losers, 0),
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

    fn market(products: usize) -> (Market, StdRng) {
        let mut rng = StdRng::seed_from_u64(7);
        (Market::new(products, &mut rng), rng)
    }

    fn num(v: &Value) -> f64 {
        v.as_str()
            .map(|s| s.parse::<f64>().unwrap())
            .or_else(|| v.as_f64())
            .unwrap()
    }

    #[test]
    fn the_catalogue_offers_sixteen_products_and_twenty_six_coins() {
        assert_eq!(max_products(), 16);
        assert_eq!(CATALOGUE.len(), 26);
        let (m, _) = market(0);
        assert_eq!(m.product_ids(), ["BTC-USD"]);
        let (m, _) = market(100);
        assert_eq!(m.product_ids().len(), 16);
    }

    #[test]
    fn tickers_are_consistent_after_a_long_walk() {
        let (mut m, mut rng) = market(10);
        for _ in 0..5_000 {
            m.step(1.0, &mut rng);
        }
        for _ in 0..50 {
            m.step(HOUR * 5.0, &mut rng);
        }
        let ticks = m.tickers(SystemTime::now(), &mut rng);
        assert_eq!(ticks.len(), 10);
        for (product, bytes) in ticks {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let t = &v["data"];
            assert_eq!(t["product_id"], product.as_str());
            let (price, low, high) = (num(&t["price"]), num(&t["low_24_h"]), num(&t["high_24_h"]));
            assert!(
                low <= price && price <= high,
                "{product}: {low} {price} {high}"
            );
            assert!(num(&t["low_52_w"]) <= low && high <= num(&t["high_52_w"]));
            assert!(num(&t["best_bid"]) < num(&t["best_ask"]));
            assert!(num(&t["volume_24_h"]) > 0.0);
            let change = num(&t["price_percent_chg_24_h"]);
            assert!(change.abs() < 60.0, "{product} moved {change} % in a day");
        }
    }

    #[test]
    fn prices_change_from_one_tick_to_the_next() {
        let (mut m, mut rng) = market(10);
        let price = |m: &Market, rng: &mut StdRng| -> Vec<String> {
            m.tickers(SystemTime::now(), rng)
                .iter()
                .map(|(_, b)| {
                    let v: Value = serde_json::from_slice(b).unwrap();
                    v["data"]["price"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        let before = price(&m, &mut rng);
        m.step(1.0, &mut rng);
        let after = price(&m, &mut rng);
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(changed >= 7, "only {changed} of 10 prices changed");
    }

    #[test]
    fn top_coins_use_the_ticker_product_ids_and_prices() {
        let (m, mut rng) = market(10);
        let v: Value = serde_json::from_slice(&m.top_coins()).unwrap();
        let coins = v["topCoins"].as_array().unwrap();
        assert_eq!(coins.len(), 10);
        let ids = m.product_ids();
        let caps: Vec<f64> = coins.iter().map(|c| num(&c["market_cap_inr"])).collect();
        assert!(
            caps.windows(2).all(|w| w[0] >= w[1]),
            "sorted by market cap"
        );
        let ticks = m.tickers(SystemTime::now(), &mut rng);
        for c in coins {
            let symbol = c["symbol"].as_str().unwrap();
            assert!(ids.contains(&symbol));
            let (_, bytes) = ticks.iter().find(|(p, _)| p == symbol).unwrap();
            let t: Value = serde_json::from_slice(bytes).unwrap();
            let usd = num(&t["data"]["price"]);
            assert!((num(&c["price_inr"]) - usd * USD_INR).abs() <= 0.01 + usd * 1e-9);
            let change = num(&t["data"]["price_percent_chg_24_h"]);
            assert!((num(&c["change_24h"]) - change).abs() <= 0.005 + 1e-9);
        }
    }

    #[test]
    fn movers_rank_gainers_down_and_losers_up_without_overlap() {
        let (m, mut rng) = market(10);
        let v: Value = serde_json::from_slice(&m.movers(SystemTime::now(), &mut rng)).unwrap();
        let side = |s: &str| -> Vec<(String, f64)> {
            v[s]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap().to_owned(),
                        num(&c["priceChangePercentage1h"]),
                    )
                })
                .collect()
        };
        let (gainers, losers) = (side("topGainers"), side("topLosers"));
        assert_eq!((gainers.len(), losers.len()), (10, 10));
        let r = |x: f64| (x * 10.0).round();
        assert!(gainers.windows(2).all(|w| r(w[0].1) >= r(w[1].1)));
        assert!(losers.windows(2).all(|w| r(w[0].1) <= r(w[1].1)));
        assert!(gainers.iter().all(|g| !losers.iter().any(|l| l.0 == g.0)));
        for c in v["topGainers"]["data"].as_array().unwrap() {
            let p = num(&c["currentPrice"]);
            assert!(num(&c["low24h"]) <= p && p <= num(&c["high24h"]));
        }
    }
}
