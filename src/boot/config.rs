//! Configuration: defaults, then an optional `flux.toml`, then the original service's
//! variables (`KAFKA_BROKER_ADDRESS`, `SERVER_PORT`, `VALKEY_*`), then `FLUX_*` variables
//! nested with `__` (D21). Invalid values are reported with the field that holds them.
//!
//! Each section's type lives with what it configures (an adapter, a service, telemetry);
//! this module only reads the sources and assembles [`Settings`].

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::adapters::http::{AdminSettings, HttpSettings};
use crate::adapters::kafka::{KafkaSettings, SaslSettings, TlsSettings};
use crate::adapters::socketio::SocketIoSettings;
use crate::adapters::valkey::ValkeySettings;
use crate::app::auth::{AuthSettings, TokenVerifier};
use crate::app::ingest::IngestSettings;
use crate::app::limits::LimitSettings;
use crate::app::recovery::RecoverySettings;
use crate::sim::SimSettings;
use crate::telemetry::logging::LogSettings;

/// The gateway's settings, section by section. The adapter sections that choose the
/// infrastructure (`kafka`, `valkey`, `sim`) are read by [`Config::section`] when the
/// adapters are chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// `[http]`
    pub http: HttpSettings,
    /// `[admin]`
    pub admin: AdminSettings,
    /// `[socketio]`: the transport's keys.
    pub socketio: SocketIoSettings,
    /// `[socketio]`: the `recovery_*` and `replay_budget` keys.
    pub recovery: RecoverySettings,
    /// `[socketio]`: `conflate_after`.
    pub ingest: IngestSettings,
    /// `[log]`
    pub log: LogSettings,
    /// `[lifecycle]`
    pub lifecycle: LifecycleSettings,
    /// `[limits]`
    pub limits: LimitSettings,
    /// `[auth]`
    pub auth: AuthSettings,
}

/// Every section the gateway and flux-sim read, with its default values, serialised: the
/// keys [`Config::unknown_keys`] knows. `[socketio]` appears three times, once per type that
/// reads part of it; `kafka`, `valkey` and `sim` are the adapters' sections.
pub fn known_sections() -> Vec<(&'static str, Value)> {
    fn section_defaults<T: Serialize + Default>(name: &'static str) -> (&'static str, Value) {
        section(name, T::default())
    }
    fn section<T: Serialize>(name: &'static str, value: T) -> (&'static str, Value) {
        let value = serde_json::to_value(value).expect("settings serialise to JSON");
        (name, value)
    }
    // Kafka's TLS and SASL tables are none by default: serialised with their own defaults,
    // so that their keys are known one by one (`kafka.tls.ca_flie` is named).
    let kafka = KafkaSettings {
        tls: Some(TlsSettings::default()),
        sasl: Some(SaslSettings::default()),
        ..KafkaSettings::default()
    };
    vec![
        section_defaults::<HttpSettings>("http"),
        section_defaults::<AdminSettings>("admin"),
        section_defaults::<SocketIoSettings>("socketio"),
        section_defaults::<RecoverySettings>("socketio"),
        section_defaults::<IngestSettings>("socketio"),
        section_defaults::<LogSettings>("log"),
        section_defaults::<LifecycleSettings>("lifecycle"),
        section_defaults::<LimitSettings>("limits"),
        section_defaults::<AuthSettings>("auth"),
        section("kafka", kafka),
        section_defaults::<ValkeySettings>("valkey"),
        section_defaults::<SimSettings>("sim"),
    ]
}

impl Settings {
    /// What is wrong with these settings, one line per problem naming the key.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.socketio.problems();
        problems.extend(self.recovery.problems());
        problems.extend(self.http.problems());
        problems.extend(self.limits.problems());
        problems.extend(self.lifecycle.problems());
        problems.extend(self.log.problems());
        if let Err(e) = TokenVerifier::from_settings(&self.auth) {
            problems.push(e.to_string());
        }
        problems
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

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            startup_deadline: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl LifecycleSettings {
    /// What is wrong with these settings, one line per problem naming the key.
    fn problems(&self) -> Vec<String> {
        [
            // Zero would exit at once, skip the producer's flush, or retry in a busy loop.
            (
                "startup_deadline",
                self.startup_deadline,
                Duration::from_secs(1),
            ),
            (
                "shutdown_deadline",
                self.shutdown_deadline,
                Duration::from_secs(1),
            ),
            ("max_backoff", self.max_backoff, Duration::from_millis(100)),
        ]
        .into_iter()
        .filter(|(_, value, least)| value < least)
        .map(|(key, value, least)| {
            let show = humantime_serde::re::humantime::format_duration;
            format!(
                "lifecycle.{key}: must be at least {}, got {}",
                show(least),
                show(value)
            )
        })
        .collect()
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
        empty_broker_variables(env)?;
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::defaults(legacy_env(env)?));
        // FLUX_CONFIG names the file (`--config`), it is not a setting. Credentials and the
        // JWT issuer and audience are taken verbatim: figment reads every other value as
        // TOML-like data.
        let mut ignored = vec!["config".to_owned()];
        ignored.extend(VERBATIM_KEYS.iter().map(|key| key.replace('.', "__")));
        let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
        figment = figment
            .merge(Env::prefixed("FLUX_").ignore(&ignored).split("__"))
            .merge(VerbatimEnv::read());
        let mut config = Self {
            settings: Settings::default(),
            figment,
        };
        config.settings = config.read_settings()?;
        let problems = config.settings.problems();
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration: {}", problems.join("; "));
        }
        Ok(config)
    }

    /// Reads every section of [`Settings`]; a value that does not fit is named with its key,
    /// and every such value is named at once.
    fn read_settings(&self) -> anyhow::Result<Settings> {
        let mut problems = Vec::new();
        let settings = Settings {
            http: self.part("http", &mut problems),
            admin: self.part("admin", &mut problems),
            socketio: self.part("socketio", &mut problems),
            recovery: self.part("socketio", &mut problems),
            ingest: self.part("socketio", &mut problems),
            log: self.part("log", &mut problems),
            lifecycle: self.part("lifecycle", &mut problems),
            limits: self.part("limits", &mut problems),
            auth: self.part("auth", &mut problems),
        };
        if problems.is_empty() {
            Ok(settings)
        } else {
            problems.dedup();
            anyhow::bail!("invalid configuration: {}", problems.join("; "))
        }
    }

    /// One section of [`Settings`], its defaults when it does not fit (the problems are
    /// collected in `problems`).
    fn part<T: DeserializeOwned + Default + Serialize>(
        &self,
        name: &str,
        problems: &mut Vec<String>,
    ) -> T {
        self.extract(name).unwrap_or_else(|e| {
            problems.extend(e);
            T::default()
        })
    }

    fn extract<T: DeserializeOwned + Default + Serialize>(
        &self,
        name: &str,
    ) -> Result<T, Vec<String>> {
        Figment::from(Serialized::default(name, T::default()))
            .merge(self.figment.clone())
            .extract_inner(name)
            .map_err(|e| problem_lines(e, name))
    }

    /// Reads an adapter's section (`kafka`, `valkey`, `sim`), with its defaults where absent.
    ///
    /// # Errors
    /// Names the field, the value and the source when a value does not fit.
    pub fn section<T: DeserializeOwned + Default + Serialize>(
        &self,
        name: &str,
    ) -> anyhow::Result<T> {
        self.extract(name)
            .map_err(|lines| anyhow::anyhow!("invalid configuration: {}", lines.join("; ")))
    }

    /// The value at a dotted key (`kafka.brokers`), if any source gives one.
    ///
    /// # Errors
    /// Names the key and the source when the value does not fit `T`.
    pub fn value<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
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

    /// The keys the file and the variables give that no section reads — a misspelt key, or
    /// a setting that was removed (`socketio.ws_write_coalesce`) — one line each, naming the
    /// key, where it was set and the keys its section does have. `sections` are every
    /// section's defaults ([`known_sections`]): serialised, so
    /// that a key whose default is none is known too. Such a key changes nothing, and
    /// silently so: the caller logs these lines as warnings.
    pub fn unknown_keys(&self, sections: &[(&str, Value)]) -> Vec<String> {
        let known = KnownKeys::new(sections);
        let mut given = Vec::new();
        if let Ok(profiles) = self.figment.data() {
            for dict in profiles.values() {
                for (key, value) in dict {
                    known.unknown_in(key.clone(), value, &mut given);
                }
            }
        }
        given.sort();
        given.dedup();
        let names: BTreeSet<&str> = sections.iter().map(|(n, _)| *n).collect();
        let mut lines = Vec::new();
        for key in given {
            let metadata = self.figment.find_metadata(&key);
            let from_variable = metadata.is_some_and(|m| m.name.contains("FLUX_"));
            let section = key.split('.').next().unwrap_or_default();
            // A variable without `__` that does not begin with a section's name (FLUX_BFF_BIN)
            // is some other program's, not a setting spelt wrong; FLUX_KAFKA_BROKERS is named.
            let nested = key.contains('.');
            if from_variable && !nested && !names.iter().any(|n| key.starts_with(&format!("{n}_")))
            {
                continue;
            }
            let mut source = source_name(metadata, &key, "from the configuration");
            if let Some(file) = metadata
                .and_then(|m| m.source.as_ref())
                .filter(|_| !from_variable)
            {
                source = format!("{source} {file}");
            }
            let siblings: Vec<&str> = known
                .leaves
                .iter()
                .filter_map(|k| k.strip_prefix(section)?.strip_prefix('.'))
                .collect();
            lines.push(if siblings.is_empty() {
                let nesting = if from_variable && !nested {
                    " (a variable names its section and key apart: FLUX_SECTION__KEY)"
                } else {
                    ""
                };
                format!(
                    "{key} ({source}) is not a setting and is ignored{nesting}; the sections are {}",
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                )
            } else {
                format!(
                    "{key} ({source}) is not a setting and is ignored; [{section}] has {}",
                    siblings.join(", ")
                )
            });
        }
        lines
    }
}

/// The keys the gateway reads, from every section's serialised defaults.
struct KnownKeys {
    /// Keys that hold a value (a key whose default is none is one too: what is under it is
    /// not checked).
    leaves: BTreeSet<String>,
    /// Tables: the sections and the tables inside them.
    tables: BTreeSet<String>,
}

impl KnownKeys {
    fn new(sections: &[(&str, Value)]) -> Self {
        let mut known = Self {
            leaves: BTreeSet::new(),
            tables: BTreeSet::new(),
        };
        for (name, value) in sections {
            known.add(name, value);
        }
        known
    }

    fn add(&mut self, path: &str, value: &Value) {
        if let Value::Object(map) = value {
            self.tables.insert(path.to_owned());
            for (k, v) in map {
                self.add(&format!("{path}.{k}"), v);
            }
        } else {
            self.leaves.insert(path.to_owned());
        }
    }

    /// Whether `key` is read: a known key, or under one.
    #[cfg(test)]
    fn contains(&self, key: &str) -> bool {
        let mut prefix = key;
        loop {
            if self.leaves.contains(prefix) {
                return true;
            }
            match prefix.rsplit_once('.') {
                Some((up, _)) => prefix = up,
                None => return self.tables.contains(key),
            }
        }
    }

    /// Pushes the keys at and under `path` that are not read.
    fn unknown_in(&self, path: String, value: &figment::value::Value, unknown: &mut Vec<String>) {
        if self.leaves.contains(&path) {
            return;
        }
        match value {
            // Inside a known table, or an unknown one (each of its keys is named).
            figment::value::Value::Dict(_, dict) if !dict.is_empty() => {
                for (k, v) in dict {
                    self.unknown_in(format!("{path}.{k}"), v, unknown);
                }
            }
            _ if self.tables.contains(&path) => {} // an empty table, or a value where one goes
            _ => unknown.push(path),
        }
    }
}

fn describe_in(e: figment::Error, section: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "invalid configuration: {}",
        problem_lines(e, section).join("; ")
    )
}

/// One line per problem: the dotted key, what is wrong, and where the value came from.
/// `section` is the key a focused extraction was made under (figment appends it last).
fn problem_lines(e: figment::Error, section: &str) -> Vec<String> {
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
        let source = source_name(err.metadata.as_ref(), &key, "from the defaults");
        let what = match &err.kind {
            figment::error::Kind::InvalidType(_, expected)
            | figment::error::Kind::InvalidValue(_, expected)
                if VERBATIM_KEYS.contains(&key.as_str()) =>
            {
                format!("invalid value (not shown), expected {expected}")
            }
            kind => kind.to_string(),
        };
        lines.push(format!("{key}: {what} ({source})"));
    }
    lines
}

/// Keys whose `FLUX_*` variables are taken as the text they hold. figment reads other values
/// as data, so a password `12345678` was a number (refused, with the password in the error),
/// `0123` would have lost its zero, and `"x"` its quotes. Their values are never shown in an
/// error. The credentials, and the JWT issuer and audience: text a token's `iss` and `aud`
/// are compared with, which an audience `123456` must reach as is (as a number it was
/// refused, exit 2).
const VERBATIM_KEYS: [&str; 8] = [
    "valkey.url",
    "valkey.username",
    "valkey.password",
    "kafka.sasl.username",
    "kafka.sasl.password",
    "socketio.recovery_secret",
    "auth.jwt_issuer",
    "auth.jwt_audience",
];

/// The `FLUX_*` variables of [`VERBATIM_KEYS`] in the process environment (where figment's
/// `Env` reads the others), as strings.
struct VerbatimEnv(Vec<(&'static str, String)>);

impl VerbatimEnv {
    fn read() -> Self {
        let set = VERBATIM_KEYS.into_iter().filter_map(|key| {
            let name = format!("FLUX_{}", key.replace('.', "__").to_uppercase());
            std::env::var(name).ok().map(|value| (key, value))
        });
        Self(set.collect())
    }
}

impl figment::Provider for VerbatimEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("FLUX_ environment variables (verbatim)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        // figment nests each dotted key itself.
        let each = self
            .0
            .iter()
            .map(|(key, value)| Serialized::default(key, value));
        each.fold(Figment::new(), Figment::merge).data()
    }
}

/// Where the value at dotted `key` came from: `set by FLUX_A__B` for a variable, `from
/// <provider>` otherwise, `none` when no source is known.
fn source_name(metadata: Option<&figment::Metadata>, key: &str, none: &str) -> String {
    match metadata {
        Some(m) if m.name.contains("FLUX_") => {
            format!("set by FLUX_{}", key.replace('.', "__").to_uppercase())
        }
        Some(m) => format!("from {}", m.name),
        None => none.to_owned(),
    }
}

/// Refuses a broker variable that is set but names no broker. Unset, the gateway runs
/// embedded (simulated data); set empty it is a deployment's slip (a template that rendered
/// nothing), which must not serve simulated prices, nor write them into a shared Valkey. The
/// original refused to start without a broker address.
fn empty_broker_variables(env: &[(String, String)]) -> anyhow::Result<()> {
    for name in ["KAFKA_BROKER_ADDRESS", "FLUX_KAFKA__BROKERS"] {
        let Some((_, value)) = env.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let names_one = value
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .any(|broker| !broker.trim().trim_matches(['"', '\'']).trim().is_empty());
        if !names_one {
            anyhow::bail!(
                "invalid configuration: {name} is set but names no broker ({value:?}): give the brokers as host:port[,host:port], or unset it to run embedded with simulated data"
            );
        }
    }
    Ok(())
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
        let url = ValkeySettings::url_for(&host, port)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        put("valkey", "url", json!(url));
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
    use std::path::PathBuf;

    use super::*;
    use crate::app::auth::JwtAlgorithm;

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
    fn a_broker_variable_set_empty_is_refused_not_taken_for_embedded_mode() {
        for (name, value) in [
            ("KAFKA_BROKER_ADDRESS", ""),
            ("KAFKA_BROKER_ADDRESS", " , "),
            ("FLUX_KAFKA__BROKERS", ""),
            ("FLUX_KAFKA__BROKERS", "[]"),
            ("FLUX_KAFKA__BROKERS", "[\"\"]"),
        ] {
            let err = Config::from_parts(None, &env(&[(name, value), ("VALKEY_HOST", "v")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}={value:?}: {err}");
            assert!(err.contains("names no broker"), "{err}");
        }
        // Jail serialises the tests that read the process environment.
        figment::Jail::expect_with(|_| {
            let c = Config::from_parts(None, &env(&[("KAFKA_BROKER_ADDRESS", "k:9092,")]))
                .map_err(|e| e.to_string())?;
            assert!(c.is_set("kafka.brokers"));
            Ok(())
        });
    }

    #[test]
    fn values_that_would_break_every_connection_or_the_shutdown_are_refused() {
        for (name, value, key) in [
            ("FLUX_SOCKETIO__MAX_BUFFER", "0", "socketio.max_buffer"),
            ("FLUX_SOCKETIO__MAX_BACKLOG", "0", "socketio.max_backlog"),
            (
                "FLUX_SOCKETIO__MAX_EVENT_NAME",
                "10",
                "socketio.max_event_name",
            ),
            (
                "FLUX_SOCKETIO__PING_INTERVAL",
                "0s",
                "socketio.ping_interval",
            ),
            ("FLUX_SOCKETIO__PING_TIMEOUT", "0s", "socketio.ping_timeout"),
            (
                "FLUX_SOCKETIO__CONNECT_TIMEOUT",
                "0s",
                "socketio.connect_timeout",
            ),
            (
                "FLUX_LIFECYCLE__SHUTDOWN_DEADLINE",
                "0s",
                "lifecycle.shutdown_deadline",
            ),
            (
                "FLUX_LIFECYCLE__STARTUP_DEADLINE",
                "0s",
                "lifecycle.startup_deadline",
            ),
            ("FLUX_LIFECYCLE__MAX_BACKOFF", "0s", "lifecycle.max_backoff"),
            ("FLUX_AUTH__LEEWAY", "10y", "auth.leeway"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(name, value);
                let err = Config::from_parts(None, &[]).unwrap_err().to_string();
                assert!(err.contains(key), "{name}={value}: {err}");
                Ok(())
            });
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_SOCKETIO__MAX_EVENT_NAME", "25");
            jail.set_env("FLUX_SOCKETIO__MAX_BUFFER", "1");
            jail.set_env("FLUX_LIFECYCLE__MAX_BACKOFF", "100ms");
            jail.set_env("FLUX_AUTH__LEEWAY", "5m");
            Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    /// Found by review: each was accepted and then refused every recovery (a session id expired
    /// at once, a budget of none), crashed the consumer (a window longer than the Unix epoch is
    /// old), or exited 1 ("no Kafka") at start-up (an unreadable secret file).
    #[test]
    fn recovery_settings_that_would_refuse_every_recovery_or_crash_are_refused() {
        for (vars, key) in [
            (
                &[("FLUX_SOCKETIO__RECOVERY_TOKEN_TTL", "0s")][..],
                "socketio.recovery_token_ttl",
            ),
            (
                &[("FLUX_SOCKETIO__REPLAY_BUDGET", "0")][..],
                "socketio.replay_budget",
            ),
            (
                &[
                    ("FLUX_SOCKETIO__RECOVERY_WINDOW", "100y"),
                    ("FLUX_SOCKETIO__RECOVERY_TOKEN_TTL", "200y"),
                ][..],
                "socketio.recovery_window",
            ),
            (
                &[("FLUX_SOCKETIO__RECOVERY_SECRET_FILE", "/nonexistent/secret")][..],
                "socketio.recovery_secret_file: cannot read /nonexistent/secret",
            ),
        ] {
            figment::Jail::expect_with(|jail| {
                for (name, value) in vars {
                    jail.set_env(name, value);
                }
                let err = Config::from_parts(None, &[]).unwrap_err().to_string();
                assert!(err.contains(key), "{vars:?}: {err}");
                Ok(())
            });
        }
        figment::Jail::expect_with(|jail| {
            // Recovery off: none of its keys matter.
            jail.set_env("FLUX_SOCKETIO__RECOVERY_WINDOW", "0s");
            jail.set_env("FLUX_SOCKETIO__REPLAY_BUDGET", "0");
            Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            jail.clear_env();
            jail.create_file("secret", &"s".repeat(32))?;
            jail.set_env("FLUX_SOCKETIO__RECOVERY_SECRET_FILE", "secret");
            jail.set_env("FLUX_SOCKETIO__RECOVERY_WINDOW", "24h");
            jail.set_env("FLUX_SOCKETIO__REPLAY_BUDGET", "1000"); // capped at start-up
            jail.set_env("FLUX_SOCKETIO__RECOVERY_TOKEN_TTL", "2s");
            Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    /// Found by review: a numeric password was refused with the password in the error (and
    /// the pod's log), and figment would have read `0123` as 123.
    #[test]
    fn credentials_are_taken_verbatim_and_never_shown_in_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLUX_VALKEY__PASSWORD", "0123");
            jail.set_env("FLUX_KAFKA__SASL__PASSWORD", "12345678");
            jail.set_env("FLUX_KAFKA__SASL__USERNAME", "true");
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            let valkey: ValkeySettings = c.section("valkey").map_err(|e| e.to_string())?;
            assert_eq!(valkey.password.as_deref(), Some("0123"));
            let kafka: KafkaSettings = c.section("kafka").map_err(|e| e.to_string())?;
            let sasl = kafka.sasl.expect("sasl on");
            assert_eq!(sasl.password, "12345678");
            assert_eq!(sasl.username, "true");

            jail.clear_env();
            jail.create_file("flux.toml", "[valkey]\npassword = 87654321\n")?;
            let err = Config::from_parts(Some(Path::new("flux.toml")), &[])
                .and_then(|c| c.section::<ValkeySettings>("valkey"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("valkey.password"), "{err}");
            assert!(
                !err.contains("87654321"),
                "the password is not shown: {err}"
            );
            Ok(())
        });
    }

    /// Found by review: a numeric audience (or issuer) was read as a number and refused
    /// (exit 2); `0123` would have lost its zero and no token would have matched it.
    #[test]
    fn jwt_issuer_and_audience_are_taken_verbatim() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("jwt.key", "0123456789abcdef0123456789abcdef\n")?;
            jail.set_env("FLUX_AUTH__JWT_KEY_FILE", "jwt.key");
            jail.set_env("FLUX_AUTH__JWT_AUDIENCE", "123456");
            jail.set_env("FLUX_AUTH__JWT_ISSUER", "0123");
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.settings.auth.jwt_audience.as_deref(), Some("123456"));
            assert_eq!(c.settings.auth.jwt_issuer.as_deref(), Some("0123"));

            jail.set_env("FLUX_AUTH__JWT_AUDIENCE", "true");
            jail.set_env("FLUX_AUTH__JWT_ISSUER", "\"https://id.example\"");
            let c = Config::from_parts(None, &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.settings.auth.jwt_audience.as_deref(), Some("true"));
            assert_eq!(
                c.settings.auth.jwt_issuer.as_deref(),
                Some("\"https://id.example\"")
            );
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

    /// Found by review: `VALKEY_HOST=valkey:6379` was taken for an IPv6 address, became
    /// `redis://[valkey:6379]:6379`, and the error blamed `valkey.url`, which nobody had set.
    #[test]
    fn a_port_or_a_url_in_valkey_host_is_refused_naming_the_variable() {
        for host in ["valkey:6379", "redis://valkey", "valkey/0"] {
            let err = Config::from_parts(None, &env(&[("VALKEY_HOST", host)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("VALKEY_HOST"), "{host}: {err}");
            assert!(err.contains("VALKEY_PORT"), "{host}: {err}");
            assert!(!err.contains("valkey.url"), "{host}: {err}");
        }
        let err = Config::from_parts(None, &env(&[("VALKEY_HOST", "u:secret@valkey")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        // Jail serialises the tests that read the process environment.
        figment::Jail::expect_with(|_| {
            for (host, url) in [
                ("::1", "redis://[::1]:6379"),
                ("[::1]", "redis://[::1]:6379"),
                ("10.0.0.7", "redis://10.0.0.7:6379"),
            ] {
                let c = Config::from_parts(None, &env(&[("VALKEY_HOST", host)]))
                    .map_err(|e| e.to_string())?;
                let got: String = c.figment.extract_inner("valkey.url").unwrap();
                assert_eq!(got, url);
            }
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

    #[test]
    fn unknown_keys_are_named_with_where_they_were_set() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flux.toml",
                "[socketio]\nmax_buffer = 128\nws_write_coalesce = \"1ms\"\n[metrics]\nport = 9\n",
            )?;
            jail.set_env("FLUX_SOCKETIO__WS_WRITE_COALESCE", "1ms");
            jail.set_env("FLUX_KAFKA__BROKRS", "k:9092");
            jail.set_env("FLUX_HTTP__PORT", "3001");
            jail.set_env("FLUX_KAFKA__TLS__CA_FILE", "/ca.pem");
            jail.set_env("FLUX_LOG__LEVEL", "debug");
            jail.set_env("FLUX_KAFKA_BROKERS", "k:9092"); // one underscore: not nested
            jail.set_env("FLUX_CONFIG", "flux.toml"); // the file's name, not a setting
            jail.set_env("FLUX_BFF_BIN", "/bin/x"); // another program's variable
            jail.set_env("FLUX_KAFKA__TLS__CA_FLIE", "/ca.pem");
            let c = Config::from_parts(
                Some(Path::new("flux.toml")),
                &env(&[("SERVER_PORT", "3002"), ("KAFKA_BROKER_ADDRESS", "k:9092")]),
            )
            .unwrap();
            let lines = c.unknown_keys(&known_sections());
            assert_eq!(lines.len(), 5, "{lines:#?}");
            assert!(lines[0].starts_with("kafka.brokrs (set by FLUX_KAFKA__BROKRS)"));
            assert!(lines[0].contains("[kafka] has brokers, client_id"));
            assert!(lines[1].starts_with("kafka.tls.ca_flie (set by FLUX_KAFKA__TLS__CA_FLIE)"));
            assert!(lines[1].contains("tls.ca_file"));
            assert!(lines[2].starts_with("kafka_brokers (set by FLUX_KAFKA_BROKERS)"));
            assert!(lines[2].contains("FLUX_SECTION__KEY"));
            assert!(lines[3].starts_with("metrics.port (from TOML file"));
            assert!(lines[3].contains("the sections are admin, auth, http, kafka"));
            // The variable wins over the file, and names itself.
            assert!(lines[4].starts_with(
                "socketio.ws_write_coalesce (set by FLUX_SOCKETIO__WS_WRITE_COALESCE)"
            ));
            assert!(lines[4].contains("max_buffer"));
            assert_eq!(
                c.settings.socketio.max_buffer, 128,
                "the known keys still apply"
            );
            Ok(())
        });
    }

    #[test]
    fn known_sections_hold_keys_whose_default_is_none() {
        let known = KnownKeys::new(&known_sections());
        for key in [
            "http.cors_origin",
            "auth.jwt_key_file",
            "socketio.recovery_secret",
            "socketio.conflate_after",
            "valkey.url",
            "kafka.tls.ca_file",
            "kafka.sasl.username",
            "sim.seed",
        ] {
            assert!(known.contains(key), "{key}");
        }
        for key in [
            "socketio.ws_write_coalesce",
            "kafka",
            "metrics.port",
            "http.portx",
            "kafka.tls.ca_flie",
        ] {
            assert_eq!(known.contains(key), key == "kafka", "{key}");
        }
    }

    /// Every key README's configuration tables document is one the gateway reads, and every
    /// key it reads is documented there.
    #[test]
    fn readme_documents_every_setting_and_nothing_else() {
        let readme = include_str!("../../README.md");
        let known = KnownKeys::new(&known_sections());
        let mut documented = BTreeSet::new();
        let mut in_table = false;
        for line in readme.lines() {
            if line.starts_with("| key") {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
                continue;
            }
            if !in_table {
                continue;
            }
            let first = line.split('|').nth(1).unwrap_or_default();
            for key in first.split('`').skip(1).step_by(2) {
                if !key.starts_with("FLUX_") {
                    documented.insert(key.to_owned());
                }
            }
        }
        assert!(
            documented.len() > 60,
            "README's tables were not found: {documented:?}"
        );
        let undocumented_reads: Vec<&String> =
            documented.iter().filter(|k| !known.contains(k)).collect();
        assert!(
            undocumented_reads.is_empty(),
            "README documents keys the gateway does not read: {undocumented_reads:?}"
        );
        let missing: Vec<&String> = known
            .leaves
            .iter()
            .filter(|leaf| {
                !documented
                    .iter()
                    .any(|d| d == *leaf || d.starts_with(&format!("{leaf}.")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "settings README does not document: {missing:?}"
        );
    }
}
