//! Configuration: defaults, then an optional `flux.toml`, then the original service's
//! variables (`KAFKA_BROKER_ADDRESS`, `SERVER_PORT`, `VALKEY_*`), then `FLUX_*` variables
//! nested with `__` (D21). Invalid values are reported with the field that holds them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::telemetry::logging::LogSettings;

/// The gateway's own settings. Adapter sections (`kafka`, `valkey`, `sim`) are read by
/// [`Config::section`] with the adapter's own type.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    pub http: HttpSettings,
    pub socketio: SocketIoSettings,
    pub log: LogSettings,
    pub lifecycle: LifecycleSettings,
    pub limits: LimitSettings,
    pub admin: AdminSettings,
    pub auth: AuthSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct HttpSettings {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port for HTTP and Socket.IO (`SERVER_PORT` in the original). 0 picks a free port.
    pub port: u16,
    /// Origin allowed for Socket.IO polling requests (`FRONTEND_URL`); none means same origin.
    pub cors_origin: Option<String>,
    /// Open connections at most; a connection over it is closed at once.
    pub max_connections: usize,
    /// Open connections at most per client address ([`Self::trusted_proxies`]); 0: no limit.
    pub max_connections_per_client: usize,
    /// Proxies whose `X-Forwarded-For` names the client, for per-client limits: addresses or
    /// networks (`10.0.0.0/8`). Default: loopback and the private ranges.
    pub trusted_proxies: Vec<IpNet>,
    /// Time a client has to send a whole request head (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request head, in bytes (at least 8192); a larger one gets 431.
    pub max_head_bytes: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SocketIoSettings {
    /// Largest packet a client may send, in bytes (D10).
    pub max_payload: u64,
    /// Client events allowed per second and socket, sustained (D10).
    pub rate_per_second: u32,
    /// Client events a socket may send in a burst above the rate (D10).
    pub burst: u32,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Packets queued per socket for sending (Engine.IO's queue); beyond, the socket is lagging: tickers for it are
    /// conflated to the latest per product and other messages wait in its backlog.
    pub max_buffer: usize,
    /// Replies and snapshots a lagging socket's backlog may hold; beyond, the socket is
    /// disconnected (its client reconnects and is hydrated again).
    pub max_backlog: usize,
    /// Read buffer of each WebSocket connection, in bytes: held for the life of every
    /// connected client; a larger client message only needs more reads.
    pub ws_read_buffer: usize,
    /// How long the event consumer may stay busy (records waiting each time it reads) before
    /// it stops emitting a ticker or a weather result when a newer one for the same product or
    /// city was read with it: the bound on the consumer's lag when events outrun the fan-out.
    #[serde(with = "humantime_serde")]
    pub conflate_after: Duration,
    /// Binary attachments a client packet may carry: the contract has none, so a packet with
    /// more closes the socket. Their bytes are bounded by `max_payload`.
    pub max_attachments: usize,
    /// Time from the Engine.IO handshake to the namespace connect; a session that has not
    /// joined by then (a half-open WebSocket) is closed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest client event name, in bytes; a longer event is dropped and counted.
    pub max_event_name: usize,
    /// Sockets on the polling transport (not upgraded to WebSocket) at most; beyond, a new
    /// polling handshake is refused with 503. 0: no limit.
    pub max_polling_sessions: usize,
    /// Connection-state recovery (D26): how long after the last event it received a client
    /// that reconnects gets what it missed, replayed. `0s` turns recovery off (no session id,
    /// no offset argument on room events).
    #[serde(with = "humantime_serde")]
    pub recovery_window: Duration,
    /// The HMAC secret that signs recovery session ids. Every replica behind one load
    /// balancer needs the same one (or the same `recovery_secret_file`); without either, a
    /// random secret per process: sessions then recover only on the replica that issued them.
    pub recovery_secret: Option<Secret>,
    /// A file holding the recovery secret (trimmed), instead of `recovery_secret`.
    pub recovery_secret_file: Option<std::path::PathBuf>,
    /// How long a recovery session id stays valid after its connection began.
    #[serde(with = "humantime_serde")]
    pub recovery_token_ttl: Duration,
    /// Most events replayed to one recovering client; beyond, tickers are conflated to the
    /// latest per product, and if still beyond, the client gets a normal connection.
    pub replay_budget: usize,
    /// Most emits the recovery journal keeps (the window bounds it too).
    pub recovery_max_events: usize,
}

/// A secret read from the configuration: never shown in logs or dumps.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LifecycleSettings {
    /// How long start-up may wait for Kafka before exiting with code 1 (D17).
    #[serde(with = "humantime_serde")]
    pub startup_deadline: Duration,
    /// How long a graceful shutdown may take before the process exits anyway (D19).
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// Longest pause between two reconnection attempts (D18).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LimitSettings {
    /// Window in which an identical location from the same user sends no second command (D15).
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Smallest interval between two refreshes of one topic caused by cold requests (D12).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Entries of the in-process dedup window used while the cache is down (D15).
    pub local_dedup_entries: usize,
    /// How long a city's latest weather result is served at once to a joining socket, with
    /// no weather command (D23). At most 10 minutes, the time results are cached.
    #[serde(with = "humantime_serde")]
    pub weather_fresh: Duration,
    /// How long a city's weather command counts as outstanding when no result comes: until
    /// then, joins in that city send no other command (D23).
    #[serde(with = "humantime_serde")]
    pub weather_in_flight: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(default)]
pub struct AdminSettings {
    /// Enables `POST /admin/publish` (embedded mode only): appends a record to the in-process
    /// bus. For tests and benchmarks; never enable it on a reachable port in production.
    pub publish: bool,
}

/// Optional connection authentication (D25): on when `jwt_key_file` is set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AuthSettings {
    /// `HS256` (the key file holds a shared secret) or `RS256` (a PEM public key).
    pub jwt_algorithm: JwtAlgorithm,
    /// The verification key; none (the default) leaves connections unauthenticated (D1).
    pub jwt_key_file: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    #[serde(alias = "hs256")]
    HS256,
    #[serde(alias = "rs256")]
    RS256,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            cors_origin: None,
            max_connections: 100_000,
            max_connections_per_client: 1_000,
            trusted_proxies: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12"]
                .into_iter()
                .chain(["192.168.0.0/16", "fc00::/7"])
                .map(|net| net.parse().expect("a valid network"))
                .collect(),
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
        }
    }
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        Self {
            max_payload: 64 * 1024,
            rate_per_second: 10,
            burst: 20,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_buffer: 256,
            max_backlog: 256,
            ws_read_buffer: 512,
            conflate_after: Duration::from_millis(50),
            max_attachments: 0,
            connect_timeout: Duration::from_secs(10),
            max_event_name: 64,
            max_polling_sessions: 2_000,
            recovery_window: Duration::from_secs(120),
            recovery_secret: None,
            recovery_secret_file: None,
            recovery_token_ttl: Duration::from_secs(24 * 3600),
            replay_budget: 200,
            recovery_max_events: 100_000,
        }
    }
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            startup_deadline: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(5),
            local_dedup_entries: 10_000,
            weather_fresh: Duration::from_secs(300),
            weather_in_flight: Duration::from_secs(30),
        }
    }
}

/// The loaded configuration: the gateway's settings plus the merged sources, from which each
/// adapter reads its own section.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    figment: Figment,
}

impl Config {
    /// Loads defaults, `file` when it exists, the original's variables, then `FLUX_*`.
    ///
    /// # Errors
    /// Names the field, the value and the source when a value does not fit.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::from_parts(file, &vars)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    ///
    /// # Errors
    /// As for [`Config::load`].
    pub fn from_parts(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::defaults(legacy_env(env)?));
        figment = figment.merge(Env::prefixed("FLUX_").split("__"));
        let settings: Settings = figment.extract().map_err(describe)?;
        let config = Self { settings, figment };
        config.validate()?;
        Ok(config)
    }

    /// Reads an adapter's section (`kafka`, `valkey`, `sim`), with its defaults where absent.
    ///
    /// # Errors
    /// Names the field, the value and the source when a value does not fit.
    pub fn section<T: serde::de::DeserializeOwned + Default + Serialize>(
        &self,
        name: &str,
    ) -> anyhow::Result<T> {
        Figment::from(Serialized::default(name, T::default()))
            .merge(self.figment.clone())
            .extract_inner(name)
            .map_err(|e| describe_in(e, name))
    }

    /// The value at a dotted key (`kafka.brokers`), if any source gives one.
    ///
    /// # Errors
    /// Names the key and the source when the value does not fit `T`.
    pub fn value<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        if self.figment.find_value(key).is_err() {
            return Ok(None);
        }
        self.figment
            .extract_inner(key)
            .map(Some)
            .map_err(|e| describe_in(e, key))
    }

    /// Whether a key was given by any source (not just defaulted), e.g. `valkey.url`.
    pub fn is_set(&self, key: &str) -> bool {
        self.figment.find_value(key).is_ok()
    }

    fn validate(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        let mut problems = Vec::new();
        if s.socketio.max_payload < 1024 {
            problems.push("socketio.max_payload: must be at least 1024 bytes".to_owned());
        }
        if s.socketio.ws_read_buffer < 64 {
            problems.push("socketio.ws_read_buffer: must be at least 64 bytes".to_owned());
        }
        if s.socketio.rate_per_second == 0 || s.socketio.burst == 0 {
            problems
                .push("socketio.rate_per_second and socketio.burst: must be at least 1".to_owned());
        }
        if !s.socketio.recovery_window.is_zero() {
            if s.socketio.recovery_secret.is_some() && s.socketio.recovery_secret_file.is_some() {
                problems.push(
                    "socketio.recovery_secret and socketio.recovery_secret_file: set one, not both"
                        .to_owned(),
                );
            }
            if let Some(Secret(secret)) = &s.socketio.recovery_secret
                && secret.trim().len() < 32
            {
                problems.push(format!(
                    "socketio.recovery_secret (FLUX_SOCKETIO__RECOVERY_SECRET): must be at least 32 characters, got {} (e.g. `openssl rand -hex 32`)",
                    secret.trim().len()
                ));
            }
            if s.socketio.recovery_max_events == 0 {
                problems.push("socketio.recovery_max_events: must be at least 1".to_owned());
            }
        }
        if s.http.max_connections == 0 {
            problems.push("http.max_connections: must be at least 1".to_owned());
        }
        if s.http.max_head_bytes < 8192 {
            problems.push(format!(
                "http.max_head_bytes: must be at least 8192 (hyper's smallest read buffer), got {}",
                s.http.max_head_bytes
            ));
        }
        if s.http.header_timeout.is_zero() {
            problems.push("http.header_timeout: must be more than 0".to_owned());
        }
        if s.limits.local_dedup_entries == 0 {
            problems.push("limits.local_dedup_entries: must be at least 1".to_owned());
        }
        if s.limits.weather_fresh > crate::domain::weather::WEATHER_TTL {
            problems.push(format!(
                "limits.weather_fresh: must be at most {:?} (how long results are cached), got {:?}",
                crate::domain::weather::WEATHER_TTL,
                s.limits.weather_fresh
            ));
        }
        if s.limits.weather_in_flight.is_zero() {
            problems.push("limits.weather_in_flight: must be more than 0".to_owned());
        }
        if let Some(origin) = &s.http.cors_origin
            && !(origin.starts_with("http://") || origin.starts_with("https://"))
        {
            problems.push(format!(
                "http.cors_origin (FRONTEND_URL): expected an http:// or https:// URL, got {origin:?}"
            ));
        }
        if let Err(e) = super::auth::TokenVerifier::from_settings(&s.auth) {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration: {}", problems.join("; "))
        }
    }
}

fn describe(e: figment::Error) -> anyhow::Error {
    describe_in(e, "")
}

/// One line per problem: the dotted key, what is wrong, and where the value came from.
/// `section` is the key a focused extraction was made under (figment appends it last).
fn describe_in(e: figment::Error, section: &str) -> anyhow::Error {
    let mut lines = Vec::new();
    for err in e {
        let mut path = err.path.clone();
        let outer: Vec<String> = section
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !outer.is_empty() && path.ends_with(&outer) {
            path.truncate(path.len() - outer.len());
            path.splice(0..0, outer);
        }
        let key = path.join(".").to_lowercase();
        let source = match err.metadata.as_ref().map(|m| m.name.to_string()) {
            Some(name) if name.contains("FLUX_") => {
                format!("set by FLUX_{}", path.join("__").to_uppercase())
            }
            Some(name) => format!("from {name}"),
            None => "from the defaults".into(),
        };
        lines.push(format!("{key}: {} ({source})", err.kind));
    }
    anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
}

/// Maps the original Node service's variables onto our keys (D21).
fn legacy_env(env: &[(String, String)]) -> anyhow::Result<Value> {
    let get = |k: &str| {
        env.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut root = Map::new();
    let mut put = |section: &str, key: &str, value: Value| {
        root.entry(section.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("sections are objects")
            .insert(key.to_owned(), value);
    };
    if let Some(brokers) = get("KAFKA_BROKER_ADDRESS") {
        let list: Vec<String> = brokers.split(',').map(|b| b.trim().to_owned()).collect();
        put("kafka", "brokers", json!(list));
    }
    if let Some(port) = get("SERVER_PORT") {
        let port: u16 = port.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid configuration: SERVER_PORT: expected a port number (0-65535), got {port:?}"
            )
        })?;
        put("http", "port", json!(port));
    }
    if let Some(url) = get("FRONTEND_URL") {
        put("http", "cors_origin", json!(url));
    }
    let host = get("VALKEY_HOST");
    let port = get("VALKEY_PORT");
    if host.is_some() || port.is_some() {
        let host = host.unwrap_or_else(|| "127.0.0.1".into());
        let port = port.unwrap_or_else(|| "6379".into());
        if port.parse::<u16>().is_err() {
            anyhow::bail!(
                "invalid configuration: VALKEY_PORT: expected a port number, got {port:?}"
            );
        }
        let port: u16 = port.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid configuration: VALKEY_PORT: expected a port number, got {port:?}"
            )
        })?;
        put(
            "valkey",
            "url",
            json!(crate::adapters::valkey::ValkeySettings::url_for(
                &host, port
            )),
        );
    }
    if let Some(pw) = get("VALKEY_PASSWORD") {
        put("valkey", "password", json!(pw));
    }
    if let Some(file) = get("VALKEY_PASSWORD_FILE") {
        put("valkey", "password_file", json!(file));
    }
    Ok(Value::Object(root))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_with_an_empty_environment() {
        figment::Jail::expect_with(|_| {
            let c = Config::from_parts(None, &[]).unwrap();
            assert_eq!(c.settings, Settings::default());
            assert!(!c.is_set("kafka.brokers"));
            Ok(())
        });
    }

    #[test]
    fn original_variables_are_accepted() {
        // Jail serialises the tests that read the process environment.
        figment::Jail::expect_with(|_| {
            let c = Config::from_parts(
                None,
                &env(&[
                    ("KAFKA_BROKER_ADDRESS", "kafka:9092"),
                    ("SERVER_PORT", "4000"),
                    ("VALKEY_HOST", "valkey"),
                ]),
            )
            .unwrap();
            assert_eq!(c.settings.http.port, 4000);
            let brokers: Vec<String> = c.figment.extract_inner("kafka.brokers").unwrap();
            assert_eq!(brokers, ["kafka:9092"]);
            let url: String = c.figment.extract_inner("valkey.url").unwrap();
            assert_eq!(url, "redis://valkey:6379");
            Ok(())
        });
    }

    #[test]
    fn flux_variables_win_over_the_original_ones() {
        // Env::prefixed reads the process environment; figment::Jail isolates it.
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_HTTP__PORT", "5001");
            jail.set_env("FLUX_LIMITS__DEDUP_WINDOW", "3s");
            let c = Config::from_parts(None, &env(&[("SERVER_PORT", "4000")]))
                .map_err(|e| e.to_string())?;
            assert_eq!(c.settings.http.port, 5001);
            assert_eq!(c.settings.limits.dedup_window, Duration::from_secs(3));
            Ok(())
        });
    }

    #[test]
    fn weather_limits_are_read_and_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_LIMITS__WEATHER_FRESH", "90s");
            jail.set_env("FLUX_LIMITS__WEATHER_IN_FLIGHT", "5s");
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.settings.limits.weather_fresh, Duration::from_secs(90));
            assert_eq!(c.settings.limits.weather_in_flight, Duration::from_secs(5));
            jail.set_env("FLUX_LIMITS__WEATHER_FRESH", "11m");
            jail.set_env("FLUX_LIMITS__WEATHER_IN_FLIGHT", "0s");
            let err = Config::from_parts(None, &[]).unwrap_err().to_string();
            assert!(err.contains("limits.weather_fresh"), "{err}");
            assert!(err.contains("limits.weather_in_flight"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn auth_is_read_from_flux_variables_and_a_bad_key_file_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("jwt.key", "0123456789abcdef0123456789abcdef\n")?;
            jail.set_env("FLUX_AUTH__JWT_KEY_FILE", "jwt.key");
            jail.set_env("FLUX_AUTH__JWT_AUDIENCE", "flux");
            jail.set_env("FLUX_AUTH__LEEWAY", "5s");
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.settings.auth.jwt_algorithm, JwtAlgorithm::HS256);
            assert_eq!(c.settings.auth.jwt_key_file, Some(PathBuf::from("jwt.key")));
            assert_eq!(c.settings.auth.jwt_audience.as_deref(), Some("flux"));
            assert_eq!(c.settings.auth.leeway, Duration::from_secs(5));

            // The algorithm does not fit the key: exit 2 naming the key, the file, the fix.
            jail.set_env("FLUX_AUTH__JWT_ALGORITHM", "RS256");
            let err = Config::from_parts(None, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: auth.jwt_key_file: jwt.key")
                    && err.contains("FLUX_AUTH__JWT_ALGORITHM=HS256"),
                "{err}"
            );

            jail.set_env("FLUX_AUTH__JWT_ALGORITHM", "HS256");
            jail.set_env("FLUX_AUTH__JWT_KEY_FILE", "missing.key");
            let err = Config::from_parts(None, &[]).unwrap_err().to_string();
            assert!(
                err.contains("auth.jwt_key_file: cannot read missing.key")
                    && err.contains("FLUX_AUTH__JWT_KEY_FILE"),
                "{err}"
            );

            jail.set_env("FLUX_AUTH__JWT_ALGORITHM", "ES256");
            let err = Config::from_parts(None, &[]).unwrap_err().to_string();
            assert!(
                err.contains("auth.jwt_algorithm") && err.contains("FLUX_AUTH__JWT_ALGORITHM"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_field() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_HTTP__PORT", "eighty");
            let err = Config::from_parts(None, &[]).unwrap_err().to_string();
            assert!(err.contains("http.port"), "{err}");
            assert!(err.contains("FLUX_HTTP__PORT"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|_| {
            let err = Config::from_parts(None, &env(&[("SERVER_PORT", "x")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("SERVER_PORT"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_section_value_names_its_dotted_path() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_DEMO__SIZE", "huge");
            #[derive(Default, Deserialize, Serialize)]
            #[serde(default)]
            struct Demo {
                size: u32,
            }
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            let err = c
                .section::<Demo>("demo")
                .err()
                .expect("invalid")
                .to_string();
            assert!(
                err.contains("demo.size") && err.contains("FLUX_DEMO__SIZE"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_toml_file_is_read_and_sections_fill_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("flux.toml", "[http]\nport = 4100\n[demo]\nname = \"x\"\n")?;
            let c =
                Config::from_parts(Some(Path::new("flux.toml")), &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.settings.http.port, 4100);
            #[derive(Default, Deserialize, Serialize)]
            #[serde(default)]
            struct Demo {
                name: String,
                size: u32,
            }
            let d: Demo = c.section("demo").map_err(|e| e.to_string())?;
            assert_eq!((d.name.as_str(), d.size), ("x", 0));
            Ok(())
        });
    }
}
