//! Time and random-number helpers shared by the simulated services: epoch milliseconds, the
//! text formats the real services use, and Gaussian noise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use time::OffsetDateTime;
use time::macros::format_description;

/// Milliseconds since the Unix epoch (`Date.now()`); 0 for a clock set before 1970.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `Date.prototype.toISOString()` of `at`.
pub fn iso(at: SystemTime) -> String {
    crate::domain::commands::iso_timestamp(at)
}

/// `at` shifted by `offset_secs` (may be negative), clamped to the epoch.
fn shifted(at: SystemTime, offset_secs: i64) -> OffsetDateTime {
    let at = if offset_secs >= 0 {
        at.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    } else {
        at.checked_sub(Duration::from_secs(offset_secs.unsigned_abs()))
    };
    OffsetDateTime::from(at.unwrap_or(UNIX_EPOCH).max(UNIX_EPOCH))
}

/// `YYYY-MM-DD HH:mm` of `at` in a zone `offset_secs` east of UTC (WeatherAPI `last_updated`).
pub fn local_minutes(at: SystemTime, offset_secs: i64) -> String {
    shifted(at, offset_secs)
        .format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
        .unwrap_or_default()
}

/// `YYYY-MM-DD HH:mm:ss` in UTC (newsdata.io `pubDate`).
pub fn utc_seconds(at: SystemTime) -> String {
    shifted(at, 0)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

/// The hour of day (0–23) of `at` in a zone `offset_secs` east of UTC.
pub fn local_hour(at: SystemTime, offset_secs: i64) -> u8 {
    shifted(at, offset_secs).hour()
}

/// A standard normal sample (Box–Muller).
pub fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `x` rounded to `dp` decimal places.
pub fn round_dp(x: f64, dp: i32) -> f64 {
    let f = 10f64.powi(dp);
    (x * f).round() / f
}

/// `x` rounded to `sig` significant digits (CoinGecko-like prices of tiny coins).
pub fn round_sig(x: f64, sig: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    let magnitude = x.abs().log10().floor() as i32;
    round_dp(x, (sig - 1 - magnitude).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_773_330_303_118)
    }

    #[test]
    fn formats_match_the_services() {
        assert_eq!(epoch_ms(at()), 1_773_330_303_118);
        assert_eq!(iso(at()), "2026-03-12T15:45:03.118Z");
        assert_eq!(local_minutes(at(), 19_800), "2026-03-12 21:15");
        assert_eq!(utc_seconds(at()), "2026-03-12 15:45:03");
        assert_eq!(local_hour(at(), -5 * 3600), 10);
        assert_eq!(local_minutes(UNIX_EPOCH, -3600), "1970-01-01 00:00");
    }

    #[test]
    fn rounding_keeps_the_requested_precision() {
        assert_eq!(round_dp(1.23456, 2), 1.23);
        assert_eq!(round_sig(0.000012734, 4), 0.00001273);
        assert_eq!(round_sig(84213.5712, 4), 84214.0);
        assert_eq!(round_sig(0.0, 4), 0.0);
    }
}
