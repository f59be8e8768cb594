//! `KafkaSettings`: the `[kafka]` section (brokers, TLS, SASL, timeouts, topic creation) and
//! its validation. No I/O.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::re::humantime;
use rskafka::BackoffConfig;
use serde::{Deserialize, Serialize};

/// Connection and tuning settings of the Kafka adapters (`[kafka]` in the configuration).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// Bootstrap brokers as `host:port`. Empty means embedded mode (no Kafka at all).
    /// Accepts a list or one comma-separated string (`"k1:9092,k2:9092"`).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub brokers: Vec<String>,
    pub client_id: String,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// Partitions of the topics it creates; -1 (the default): the brokers' `num.partitions`.
    pub topic_partitions: i32,
    /// Replicas of the topics it creates; -1 (the default): the brokers'
    /// `default.replication.factor`, as Kafka's own topic creation.
    pub replication_factor: i16,
    /// Longest time a fetch waits for new records (long poll). Short keeps delivery latency low.
    #[serde(with = "humantime_serde")]
    pub fetch_max_wait: Duration,
    /// Most bytes one fetch of one partition returns.
    pub fetch_max_bytes: i32,
    /// Bound on one broker operation, including rskafka's own retries: a broker that stays
    /// unreachable this long is reported as unavailable.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound on one command send, including our retries (which reuse the idempotency key).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How often partition counts are re-read (new partitions, producer metadata).
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    pub tls: Option<TlsSettings>,
    pub sasl: Option<SaslSettings>,
}

/// `kafka.topic_partitions` and `kafka.replication_factor` for "what the brokers are configured
/// with" (CreateTopics v4 and later, KIP-464: Kafka 2.4, Redpanda).
pub const BROKER_DEFAULT: i16 = -1;

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            client_id: "flux-bff".into(),
            create_topics: true,
            topic_partitions: i32::from(BROKER_DEFAULT),
            replication_factor: BROKER_DEFAULT,
            fetch_max_wait: Duration::from_millis(200),
            fetch_max_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(10),
            tls: None,
            sasl: None,
        }
    }
}

fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect())
}

/// TLS towards the brokers (rustls). Without `ca_file` the system bundle
/// `/etc/ssl/certs/ca-certificates.crt` is used.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file` too.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl KafkaSettings {
    /// Checks every field; the error names the field (`kafka.<field>`) and the fix.
    /// Kafka mode: at least one broker is configured (otherwise embedded mode).
    pub fn is_enabled(&self) -> bool {
        self.brokers.iter().any(|b| !b.trim().is_empty())
    }

    pub fn validate(&self) -> Result<(), String> {
        for broker in &self.brokers {
            let port = broker
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                return Err(format!(
                    "kafka.brokers: {broker:?} is not host:port (example: \"kafka:9092\")"
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            return Err("kafka.client_id: must not be empty".into());
        }
        if self.topic_partitions < 1 && self.topic_partitions != i32::from(BROKER_DEFAULT) {
            return Err(format!(
                "kafka.topic_partitions: must be at least 1, or -1 for the brokers' default, got {}",
                self.topic_partitions
            ));
        }
        if self.replication_factor < 1 && self.replication_factor != BROKER_DEFAULT {
            return Err(format!(
                "kafka.replication_factor: must be at least 1, or -1 for the brokers' default, got {}",
                self.replication_factor
            ));
        }
        if self.fetch_max_wait < Duration::from_millis(1)
            || self.fetch_max_wait > Duration::from_secs(30)
        {
            return Err(format!(
                "kafka.fetch_max_wait: must be between 1ms and 30s, got {}",
                humantime::format_duration(self.fetch_max_wait)
            ));
        }
        if self.fetch_max_bytes < 1024 {
            return Err(format!(
                "kafka.fetch_max_bytes: must be at least 1024, got {}",
                self.fetch_max_bytes
            ));
        }
        // Below these, a connection or a metadata round trip on an ordinary network fails every
        // time, or the whole cluster's metadata is read many times a second per subscription.
        for (name, value, floor) in [
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_millis(100),
            ),
            (
                "send_timeout",
                self.send_timeout,
                Duration::from_millis(100),
            ),
            (
                "metadata_refresh",
                self.metadata_refresh,
                Duration::from_millis(500),
            ),
        ] {
            if value < floor {
                return Err(format!(
                    "kafka.{name}: must be at least {}, got {}",
                    humantime::format_duration(floor),
                    humantime::format_duration(value)
                ));
            }
        }
        if self.send_timeout < self.request_timeout {
            return Err(format!(
                "kafka.send_timeout: must be at least kafka.request_timeout ({}), or every send is cut before its first attempt can fail or succeed, got {}",
                humantime::format_duration(self.request_timeout),
                humantime::format_duration(self.send_timeout)
            ));
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(
                "kafka.tls: cert_file and key_file go together (set both for mutual TLS, or neither)"
                    .into(),
            );
        }
        if let Some(sasl) = &self.sasl
            && sasl.username.is_empty()
        {
            return Err("kafka.sasl.username: must not be empty when kafka.sasl is set".into());
        }
        Ok(())
    }

    /// The bound on one fetch: the long poll plus one request.
    pub(crate) fn fetch_timeout(&self) -> Duration {
        self.fetch_max_wait + self.request_timeout * 2
    }

    /// rskafka retries connection errors forever by default; a deadline makes an outage
    /// surface as an error after about `request_timeout`.
    pub(super) fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1).min(self.request_timeout),
            base: 2.0,
            deadline: Some(self.request_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = KafkaSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert!(s.brokers.is_empty());
        assert_eq!(s.client_id, "flux-bff");
        assert!(s.create_topics);
        assert_eq!((s.topic_partitions, s.replication_factor), (-1, -1));
        assert_eq!(s.fetch_max_wait, Duration::from_millis(200));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (
                KafkaSettings {
                    brokers: vec!["kafka".into()],
                    ..Default::default()
                },
                "kafka.brokers",
            ),
            (
                KafkaSettings {
                    topic_partitions: 0,
                    ..Default::default()
                },
                "kafka.topic_partitions",
            ),
            (
                KafkaSettings {
                    replication_factor: -2,
                    ..Default::default()
                },
                "kafka.replication_factor",
            ),
            (
                KafkaSettings {
                    fetch_max_wait: Duration::ZERO,
                    ..Default::default()
                },
                "kafka.fetch_max_wait",
            ),
            (
                KafkaSettings {
                    tls: Some(TlsSettings {
                        cert_file: Some("c.pem".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "kafka.tls",
            ),
            (
                KafkaSettings {
                    sasl: Some(SaslSettings::default()),
                    ..Default::default()
                },
                "kafka.sasl.username",
            ),
            (
                KafkaSettings {
                    request_timeout: Duration::from_millis(10),
                    ..Default::default()
                },
                "kafka.request_timeout",
            ),
            (
                KafkaSettings {
                    metadata_refresh: Duration::from_millis(10),
                    ..Default::default()
                },
                "kafka.metadata_refresh",
            ),
            (
                KafkaSettings {
                    send_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(5),
                    ..Default::default()
                },
                "kafka.send_timeout",
            ),
        ];
        for (settings, field) in bad {
            let error = settings.validate().unwrap_err();
            assert!(error.starts_with(field), "{error} should name {field}");
        }
    }

    #[test]
    fn settings_deserialize_from_humane_values() {
        let json = r#"{"brokers":["k1:9092","k2:9092"],"fetch_max_wait":"150ms",
            "sasl":{"mechanism":"SCRAM-SHA-512","username":"u","password":"p"}}"#;
        let s: KafkaSettings = serde_json::from_str(json).unwrap();
        assert_eq!(s.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(s.fetch_max_wait, Duration::from_millis(150));
        assert_eq!(
            s.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha512
        );
        assert!(!format!("{s:?}").contains("\"p\""), "password is redacted");
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_variables_override_the_defaults() {
        use figment::providers::{Env, Serialized};
        figment::Jail::expect_with(|jail| {
            let extract = || {
                figment::Figment::from(Serialized::defaults(KafkaSettings::default()))
                    .merge(Env::prefixed("FLUX_KAFKA__").split("__"))
                    .extract::<KafkaSettings>()
            };
            jail.set_env("FLUX_KAFKA__BROKERS", r#"["k1:9092","k2:9092"]"#);
            jail.set_env("FLUX_KAFKA__TOPIC_PARTITIONS", "3");
            jail.set_env("FLUX_KAFKA__FETCH_MAX_WAIT", "150ms");
            jail.set_env("FLUX_KAFKA__SASL__MECHANISM", "SCRAM-SHA-256");
            jail.set_env("FLUX_KAFKA__SASL__USERNAME", "bff");
            jail.set_env("FLUX_KAFKA__TLS__CA_FILE", "/etc/kafka/ca.pem");
            let s = extract()?;
            assert_eq!(s.brokers, ["k1:9092", "k2:9092"]);
            assert_eq!(s.topic_partitions, 3);
            assert_eq!(s.fetch_max_wait, Duration::from_millis(150));
            assert_eq!(s.sasl.unwrap().mechanism, SaslMechanism::ScramSha256);
            assert_eq!(
                s.tls.unwrap().ca_file,
                Some(PathBuf::from("/etc/kafka/ca.pem"))
            );
            assert_eq!(
                s.client_id, "flux-bff",
                "untouched fields keep their default"
            );

            for plain in ["kafka:9092", "k1:9092, k2:9092", "[kafka:9092]"] {
                jail.set_env("FLUX_KAFKA__BROKERS", plain);
                let brokers = extract()?.brokers;
                assert!(
                    !brokers.is_empty() && brokers[0].ends_with(":9092"),
                    "{plain}: {brokers:?}"
                );
            }
            Ok(())
        });
    }
}
