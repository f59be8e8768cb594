//! A client's declared location: which weather room it means, whether it may be forwarded to
//! weather-service (D7), and its canonical hash for the dedup window (D15).

use std::net::IpAddr;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::events::MAX_CITY_LEN;
use super::topics::{DEFAULT_CITY, weather_room};

/// What a `userLocationUpdate` argument means.
#[derive(Clone, Debug, PartialEq)]
pub struct LocationIntent {
    /// The one weather room the socket must be in (D5).
    pub room: String,
    /// The location to forward verbatim, or why it may not be forwarded.
    pub forward: Result<Value, &'static str>,
}

impl LocationIntent {
    /// The city of the weather room, verbatim.
    pub fn city(&self) -> &str {
        self.room.strip_prefix("weather.").unwrap_or(&self.room)
    }
}

/// Interprets the argument of `userLocationUpdate`. Missing, `null` or non-object arguments
/// count as `{}` (D6): the default city's room, nothing forwarded.
pub fn interpret(arg: Option<&Value>) -> LocationIntent {
    let empty = Map::new();
    let obj = arg.and_then(Value::as_object).unwrap_or(&empty);
    let city = match obj.get("city") {
        Some(Value::String(c)) if valid_text(c) => c.as_str(),
        _ => DEFAULT_CITY,
    };
    LocationIntent {
        room: weather_room(city),
        forward: validate(obj).map(|()| Value::Object(obj.clone())),
    }
}

fn valid_text(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= MAX_CITY_LEN
}

fn coordinate(v: Option<&Value>, limit: f64) -> bool {
    let n = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.is_some_and(|n| n.is_finite() && n.abs() <= limit)
}

/// The rules weather-service applies; a location failing them would be dropped there.
fn validate(obj: &Map<String, Value>) -> Result<(), &'static str> {
    for (field, reason) in [
        ("city", "invalid_city"),
        ("region", "invalid_region"),
        ("country", "invalid_country"),
    ] {
        match obj.get(field) {
            Some(Value::String(s)) if valid_text(s) => {}
            _ => return Err(reason),
        }
    }
    if !coordinate(obj.get("lat"), 90.0) {
        return Err("invalid_lat");
    }
    if !coordinate(obj.get("lon"), 180.0) {
        return Err("invalid_lon");
    }
    match obj.get("ip") {
        Some(Value::String(ip)) if ip.parse::<IpAddr>().is_ok() => Ok(()),
        _ => Err("invalid_ip"),
    }
}

/// A hash of the location that does not depend on key order (values keep their types:
/// `18.5` and `"18.5"` differ).
pub fn canonical_hash(location: &Value) -> String {
    let mut hasher = Sha256::new();
    write_canonical(location, &mut hasher);
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                h.update(serde_json::to_string(k).expect("string").as_bytes());
                h.update(b":");
                write_canonical(&m[k], h);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for x in a {
                write_canonical(x, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pune() -> Value {
        json!({"city": "Pune", "region": "Maharashtra", "country": "IN",
               "lat": 18.5196, "lon": 73.8553, "ip": "49.36.112.10"})
    }

    #[test]
    fn a_complete_location_is_forwarded_verbatim() {
        let intent = interpret(Some(&pune()));
        assert_eq!(intent.room, "weather.Pune");
        assert_eq!(intent.forward, Ok(pune()));
    }

    #[test]
    fn the_frontend_fallback_with_string_coordinates_is_forwarded() {
        let loc = json!({"city":"New Delhi","region":"Delhi","country":"India","lat":"28.6139","lon":"77.2090","ip":"0.0.0.0"});
        assert!(interpret(Some(&loc)).forward.is_ok());
    }

    #[test]
    fn missing_null_and_garbage_arguments_mean_the_default_room_and_no_command() {
        for arg in [
            None,
            Some(json!(null)),
            Some(json!("x")),
            Some(json!([1])),
            Some(json!({})),
        ] {
            let intent = interpret(arg.as_ref());
            assert_eq!(intent.room, "weather.Delhi");
            assert!(intent.forward.is_err());
        }
    }

    #[test]
    fn the_command_fixture_invalid_variants_are_not_forwarded() {
        let variants: Value = serde_json::from_str(include_str!(
            "../../fixtures/weather.service.command.fetch.invalid.json"
        ))
        .unwrap();
        for v in variants.as_array().unwrap() {
            let Some(value) = v.get("value") else {
                continue;
            };
            let data = value.get("data");
            assert!(
                interpret(data).forward.is_err(),
                "should not forward: {}",
                v["why"]
            );
        }
    }

    #[test]
    fn out_of_range_or_non_finite_coordinates_and_long_cities_are_refused() {
        let mut loc = pune();
        loc["lat"] = json!(91);
        assert_eq!(interpret(Some(&loc)).forward, Err("invalid_lat"));
        let mut loc = pune();
        loc["lon"] = json!("NaN");
        assert_eq!(interpret(Some(&loc)).forward, Err("invalid_lon"));
        let mut loc = pune();
        loc["city"] = json!("x".repeat(101));
        let intent = interpret(Some(&loc));
        assert_eq!(intent.room, "weather.Delhi");
        assert_eq!(intent.forward, Err("invalid_city"));
    }

    #[test]
    fn the_hash_ignores_key_order_but_not_types() {
        let a = json!({"city": "Pune", "lat": 18.5});
        let b = json!({"lat": 18.5, "city": "Pune"});
        let c = json!({"lat": "18.5", "city": "Pune"});
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }
}
