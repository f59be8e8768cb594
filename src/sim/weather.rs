//! The simulated weather-service: answers a fetch command with current conditions for the
//! command's city. The climate of a city is derived from its latitude (when the command has
//! one) and a stable hash of its name, so a city always looks like itself; each fetch adds a
//! little noise and follows the local time of day.

use std::time::SystemTime;

use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use super::clock::{epoch_ms, gaussian, local_hour, local_minutes, round_dp};
use crate::domain::events::MAX_CITY_LEN;

/// WeatherAPI condition texts and icon codes, from dry to wet.
const CONDITIONS: &[(&str, &str, u16)] = &[
    ("Sunny", "Clear", 113),
    ("Partly cloudy", "Partly cloudy", 116),
    ("Cloudy", "Cloudy", 119),
    ("Overcast", "Overcast", 122),
    ("Mist", "Mist", 143),
    ("Patchy rain nearby", "Patchy rain nearby", 176),
    ("Light rain", "Light rain", 296),
    ("Moderate rain", "Moderate rain", 302),
];
const SNOW: (&str, u16) = ("Light snow", 326);
const COMPASS: [&str; 16] = [
    "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW",
    "NNW",
];

#[derive(Serialize)]
struct AirQuality {
    co: f64,
    no2: f64,
    o3: f64,
    so2: f64,
    pm2_5: f64,
    pm10: f64,
    #[serde(rename = "us-epa-index")]
    us_epa_index: u8,
    #[serde(rename = "gb-defra-index")]
    gb_defra_index: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WeatherData<'a> {
    city: &'a str,
    temperature_c: f64,
    temperature_f: f64,
    feelslike_c: f64,
    condition: &'static str,
    humidity: u8,
    wind_mph: f64,
    wind_kph: f64,
    wind_degree: u16,
    wind_dir: &'static str,
    icon: String,
    pressure_mb: u16,
    visibility_km: f64,
    air_quality: AirQuality,
    last_updated: String,
    fetched_at: u64,
}

#[derive(Serialize)]
struct WeatherEvent<'a> {
    status: &'static str,
    source: &'static str,
    data: WeatherData<'a>,
    timestamp: u64,
}

/// FNV-1a: a hash that never changes between runs or platforms.
fn stable_hash(text: &str) -> u64 {
    text.to_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// A number in `[0, 1)` drawn from bits `shift..shift+16` of the city hash.
fn trait_of(hash: u64, shift: u32) -> f64 {
    f64::from(((hash >> shift) & 0xffff) as u16) / 65_536.0
}

/// A finite number, or a string holding one (the frontend's fallback sends strings).
fn coordinate(v: Option<&Value>, limit: f64) -> Option<f64> {
    let x = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (x.is_finite() && x.abs() <= limit).then_some(x)
}

/// The city a fetch command asks for: `data.city`, a non-empty string the gateway accepts.
pub fn requested_city(command: &Value) -> Option<&str> {
    let city = command.get("data")?.get("city")?.as_str()?;
    (!city.trim().is_empty() && city.chars().count() <= MAX_CITY_LEN).then_some(city)
}

/// `(us-epa-index, gb-defra-index)` for a PM2.5 concentration in µg/m³.
fn aqi_indexes(pm25: f64) -> (u8, u8) {
    let epa = match pm25 {
        x if x < 12.1 => 1,
        x if x < 35.5 => 2,
        x if x < 55.5 => 3,
        x if x < 150.5 => 4,
        x if x < 250.5 => 5,
        _ => 6,
    };
    let defra = [11.5, 23.5, 35.5, 41.5, 47.5, 53.5, 58.5, 64.5, 70.5]
        .iter()
        .take_while(|bound| pm25 >= **bound)
        .count() as u8
        + 1;
    (epa, defra)
}

/// The weather-service event answering a fetch `command`, or `None` when the command names no
/// usable city (the real service drops those too).
pub fn weather(command: &Value, now: SystemTime, rng: &mut impl Rng) -> Option<Vec<u8>> {
    let city = requested_city(command)?;
    let data = command.get("data")?;
    let hash = stable_hash(city);
    let lat = coordinate(data.get("lat"), 90.0);
    let lon = coordinate(data.get("lon"), 180.0);
    // Local time from the longitude (15° an hour), UTC when unknown.
    let offset_secs = lon.map_or(0, |lon| (lon / 15.0).round() as i64 * 3600);
    let hour = local_hour(now, offset_secs);
    let is_day = (6..18).contains(&hour);

    let base_c = match lat {
        Some(lat) => 31.0 - 0.42 * lat.abs() + 6.0 * (trait_of(hash, 0) - 0.5),
        None => 8.0 + 24.0 * trait_of(hash, 0),
    };
    let daily = 4.5 * ((f64::from(hour) - 9.0) / 24.0 * std::f64::consts::TAU).sin();
    let temperature_c = round_dp(base_c + daily + 0.6 * gaussian(rng), 1);

    let wetness = (trait_of(hash, 16) + 0.18 * gaussian(rng)).clamp(0.0, 0.999);
    let (day_text, night_text, code) = CONDITIONS[(wetness * CONDITIONS.len() as f64) as usize];
    let (condition, code) = if temperature_c < 0.5 && code >= 176 {
        SNOW
    } else if is_day {
        (day_text, code)
    } else {
        (night_text, code)
    };
    let rainy = code >= 176;

    let humidity = (35.0 + 55.0 * wetness + 4.0 * gaussian(rng)).clamp(8.0, 100.0) as u8;
    let wind_kph = round_dp(
        (6.0 + 18.0 * trait_of(hash, 32) + 3.0 * gaussian(rng)).max(0.0),
        1,
    );
    let wind_degree = ((trait_of(hash, 48) * 360.0 + 25.0 * gaussian(rng)).rem_euclid(360.0))
        .round() as u16
        % 360;
    let wind_dir = COMPASS[((f64::from(wind_degree) / 22.5).round() as usize) % 16];
    let feels = if temperature_c >= 27.0 {
        temperature_c + (f64::from(humidity) - 40.0).max(0.0) * 0.08
    } else if temperature_c <= 10.0 {
        temperature_c - wind_kph * 0.12
    } else {
        temperature_c
    };
    let visibility_km = match code {
        143 => rng.random_range(2..=5),
        302 => rng.random_range(4..=7),
        c if c >= 176 => rng.random_range(6..=9),
        _ => 10,
    };
    let pressure_mb = (1013.0 - 10.0 * wetness + 3.0 * gaussian(rng)).round() as u16;

    let pollution = trait_of(hash, 8).powi(2) * if rainy { 0.6 } else { 1.0 };
    let pm2_5 = round_dp(
        (4.0 + 110.0 * pollution) * (1.0 + 0.08 * gaussian(rng)).max(0.3),
        2,
    );
    let (us_epa_index, gb_defra_index) = aqi_indexes(pm2_5);
    let air_quality = AirQuality {
        co: round_dp(180.0 + 9.0 * pm2_5 + 20.0 * gaussian(rng).abs(), 1),
        no2: round_dp(3.0 + 0.5 * pm2_5 * (0.8 + 0.4 * trait_of(hash, 24)), 3),
        o3: round_dp(
            (if is_day { 70.0 } else { 35.0 }) + 10.0 * gaussian(rng).abs(),
            0,
        ),
        so2: round_dp(1.0 + 0.3 * pm2_5 * trait_of(hash, 40), 3),
        pm2_5,
        pm10: round_dp(pm2_5 * (1.3 + 0.5 * trait_of(hash, 56)), 2),
        us_epa_index,
        gb_defra_index,
    };

    // WeatherAPI refreshes `last_updated` every 15 minutes.
    let now_ms = epoch_ms(now);
    let quarter = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now_ms / 1000 / 900 * 900);
    let event = WeatherEvent {
        status: "success",
        source: "api",
        data: WeatherData {
            city,
            temperature_c,
            temperature_f: round_dp(temperature_c * 9.0 / 5.0 + 32.0, 1),
            feelslike_c: round_dp(feels, 1),
            condition,
            humidity,
            wind_mph: round_dp(wind_kph / 1.609_344, 1),
            wind_kph,
            wind_degree,
            wind_dir,
            icon: format!(
                "//cdn.weatherapi.com/weather/64x64/{}/{code}.png",
                if is_day { "day" } else { "night" }
            ),
            pressure_mb,
            visibility_km: f64::from(visibility_km),
            air_quality,
            last_updated: local_minutes(quarter, offset_secs),
            fetched_at: now_ms,
        },
        timestamp: now_ms.saturating_sub(rng.random_range(100..900)),
    };
    super::js_json(&event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    fn fetch(location: Value) -> Value {
        json!({"event": "locationUpdate", "userId": "u", "data": location, "timestamp": "2026-03-12T15:45:03.118Z"})
    }

    fn data(command: &Value, rng: &mut StdRng) -> Value {
        let bytes = weather(command, SystemTime::now(), rng).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["data"].clone()
    }

    #[test]
    fn a_city_keeps_its_climate_and_the_city_string_verbatim() {
        let mut rng = StdRng::seed_from_u64(5);
        let oslo = fetch(
            json!({"city": "Oslo", "region": "Oslo", "country": "NO", "lat": 59.91, "lon": 10.75, "ip": "0.0.0.0"}),
        );
        let singapore = fetch(
            json!({"city": "Singapore", "region": "Singapore", "country": "SG", "lat": "1.29", "lon": "103.85", "ip": "0.0.0.0"}),
        );
        let (a, b) = (data(&oslo, &mut rng), data(&oslo, &mut rng));
        assert_eq!(a["city"], "Oslo");
        let t = |v: &Value| v["temperatureC"].as_f64().unwrap();
        assert!((t(&a) - t(&b)).abs() < 5.0, "noise stays small");
        assert!(
            t(&data(&singapore, &mut rng)) > t(&a) + 5.0,
            "the tropics are warmer"
        );
        let odd = fetch(json!({"city": "São Paulo ", "lat": -23.55, "lon": -46.63}));
        assert_eq!(data(&odd, &mut rng)["city"], "São Paulo ");
    }

    #[test]
    fn values_are_plausible_for_many_cities() {
        let mut rng = StdRng::seed_from_u64(9);
        for (i, city) in [
            "Pune",
            "Delhi",
            "London",
            "New York",
            "Tokyo",
            "Reykjavík",
            "x",
        ]
        .iter()
        .enumerate()
        {
            let lat = -80.0 + 25.0 * i as f64;
            let d = data(
                &fetch(json!({"city": city, "lat": lat, "lon": 20.0 * i as f64})),
                &mut rng,
            );
            let f = |k: &str| d[k].as_f64().unwrap();
            assert!((-45.0..50.0).contains(&f("temperatureC")), "{d}");
            assert!((f("temperatureF") - (f("temperatureC") * 1.8 + 32.0)).abs() < 0.11);
            assert!((0.0..=100.0).contains(&f("humidity")));
            assert!((f("windMph") * 1.609_344 - f("windKph")).abs() < 0.2);
            assert!(f("windDegree") < 360.0);
            let aq = &d["airQuality"];
            assert!(aq["pm10"].as_f64() >= aq["pm2_5"].as_f64());
            assert!((1..=6).contains(&aq["us-epa-index"].as_u64().unwrap()));
            assert!((1..=10).contains(&aq["gb-defra-index"].as_u64().unwrap()));
            let updated = d["lastUpdated"].as_str().unwrap();
            assert_eq!(updated.len(), 16, "YYYY-MM-DD HH:mm: {updated}");
            assert!(
                d["icon"]
                    .as_str()
                    .unwrap()
                    .starts_with("//cdn.weatherapi.com/")
            );
        }
    }

    #[test]
    fn commands_without_a_usable_city_get_no_answer() {
        let mut rng = StdRng::seed_from_u64(1);
        for bad in [
            json!({"event": "locationUpdate"}),
            fetch(json!({})),
            fetch(json!({"city": ""})),
            fetch(json!({"city": "   "})),
            fetch(json!({"city": 411001})),
            fetch(json!({"city": "x".repeat(MAX_CITY_LEN + 1)})),
            json!(null),
        ] {
            assert!(
                weather(&bad, SystemTime::now(), &mut rng).is_none(),
                "{bad}"
            );
        }
        let bad_coords = fetch(json!({"city": "Nowhere", "lat": "north", "lon": 1e9}));
        assert!(weather(&bad_coords, SystemTime::now(), &mut rng).is_some());
    }

    #[test]
    fn aqi_bands_follow_pm25() {
        assert_eq!(aqi_indexes(5.0), (1, 1));
        assert_eq!(aqi_indexes(38.85), (3, 4));
        assert_eq!(aqi_indexes(80.0), (4, 10));
        assert_eq!(aqi_indexes(400.0), (6, 10));
    }
}
