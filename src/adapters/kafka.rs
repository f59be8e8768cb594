//! Kafka adapters on `rskafka`: settings, the shared client, topic creation, and the two ports
//! (`KafkaEventSource`, `KafkaCommandSink`). No domain rules here: records go in and out as bytes.

mod command_sink;
mod event_source;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use humantime_serde::re::humantime;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as RsError, ProtocolError, RequestError};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use serde::{Deserialize, Serialize};

pub use command_sink::{KafkaCommandSink, record_timestamp_now};
pub use event_source::KafkaEventSource;

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
    pub topic_partitions: i32,
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

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            client_id: "flux-bff".into(),
            create_topics: true,
            topic_partitions: 1,
            replication_factor: 1,
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
        if self.topic_partitions < 1 {
            return Err(format!(
                "kafka.topic_partitions: must be at least 1, got {}",
                self.topic_partitions
            ));
        }
        if self.replication_factor < 1 {
            return Err(format!(
                "kafka.replication_factor: must be at least 1, got {}",
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
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("send_timeout", self.send_timeout),
            ("metadata_refresh", self.metadata_refresh),
        ] {
            if value < Duration::from_millis(10) {
                return Err(format!(
                    "kafka.{name}: must be at least 10ms, got {}",
                    humantime::format_duration(value)
                ));
            }
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
    fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1).min(self.request_timeout),
            base: 2.0,
            deadline: Some(self.request_timeout),
        }
    }
}

/// Errors of the set-up calls ([`connect`], [`ensure_topics`]); the ports have their own.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error(
        "no Kafka broker answered within {timeout} (tried {brokers}): {reason}; check kafka.brokers and that the brokers are up"
    )]
    Unreachable {
        brokers: String,
        timeout: String,
        reason: String,
    },
    #[error("invalid Kafka settings: {0}")]
    Settings(String),
    #[error("cannot create Kafka topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
}

/// The rskafka client shared by the event source and the command sink. It connects on first
/// use (and again after a failed attempt), so that the ports exist before any broker answers:
/// until one does, they report `Unavailable`.
#[derive(Clone)]
pub struct KafkaClient {
    settings: Arc<KafkaSettings>,
    builder: Arc<dyn Fn() -> ClientBuilder + Send + Sync>,
    // tokio Mutex: held across the connection attempt, so that callers wait for one attempt
    connected: Arc<tokio::sync::Mutex<Option<Arc<Client>>>>,
}

impl fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaClient")
            .field("brokers", &self.settings.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaClient {
    /// Checks the settings (and reads the TLS files) without any network I/O.
    ///
    /// # Errors
    /// [`KafkaError::Settings`] naming the field.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        settings.validate().map_err(KafkaError::Settings)?;
        if settings.brokers.is_empty() {
            return Err(KafkaError::Settings(
                "kafka.brokers: empty (embedded mode); set at least one host:port to use Kafka"
                    .into(),
            ));
        }
        let tls = match &settings.tls {
            Some(tls) => Some(tls::client_config(tls).map_err(KafkaError::Settings)?),
            None => None,
        };
        let sasl = settings.sasl.as_ref().map(|sasl| {
            let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
            match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            }
        });
        let (brokers, client_id, backoff) = (
            settings.brokers.clone(),
            settings.client_id.clone(),
            settings.backoff(),
        );
        let builder = move || {
            let mut builder = ClientBuilder::new(brokers.clone())
                .client_id(client_id.as_str())
                .backoff_config(backoff.clone());
            if let Some(tls) = &tls {
                builder = builder.tls_config(Arc::clone(tls));
            }
            if let Some(sasl) = &sasl {
                builder = builder.sasl_config(sasl.clone());
            }
            builder
        };
        Ok(Self {
            settings: Arc::new(settings.clone()),
            builder: Arc::new(builder),
            connected: Arc::default(),
        })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// The connected rskafka client, connecting first if needed (bounded by about
    /// 2 x `request_timeout`).
    ///
    /// # Errors
    /// [`KafkaError::Unreachable`] naming the brokers when none answers.
    pub async fn rskafka(&self) -> Result<Arc<Client>, KafkaError> {
        let mut connected = self.connected.lock().await;
        if let Some(client) = connected.as_ref() {
            return Ok(Arc::clone(client));
        }
        let limit = self.settings.request_timeout * 2;
        let client = bounded(limit, (self.builder)().build())
            .await
            .map(Arc::new)
            .map_err(|e| self.unreachable(&e))?;
        tracing::info!(brokers = ?self.settings.brokers, "connected to kafka");
        *connected = Some(Arc::clone(&client));
        Ok(client)
    }

    pub fn event_source(&self) -> KafkaEventSource {
        KafkaEventSource::new(self.clone())
    }

    pub fn command_sink(&self) -> KafkaCommandSink {
        KafkaCommandSink::new(self.clone())
    }

    fn unreachable(&self, error: &RsError) -> KafkaError {
        KafkaError::Unreachable {
            brokers: self.settings.brokers.join(","),
            timeout: humantime::format_duration(self.settings.request_timeout * 2).to_string(),
            reason: error.to_string(),
        }
    }

    /// Partition count of each topic that exists (one metadata request, bounded).
    pub(crate) async fn partition_counts(&self) -> Result<HashMap<String, i32>, KafkaError> {
        let client = self.rskafka().await?;
        let topics = bounded(self.settings.request_timeout * 2, client.list_topics())
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(topics
            .into_iter()
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect())
    }

    /// A client for one partition (its own connection to the partition leader), bounded.
    pub(crate) async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, Trouble> {
        let client = self.rskafka().await?;
        bounded(
            self.settings.request_timeout * 2,
            client.partition_client(topic, partition, UnknownTopicHandling::Retry),
        )
        .await
        .map(Arc::new)
        .map_err(|e| Trouble::from_rskafka(topic, &e))
    }

    /// Creates the topics of `topics` that are missing, when `kafka.create_topics` is on, and
    /// waits (up to `request_timeout`) until the metadata shows them.
    pub(crate) async fn create_missing(
        &self,
        topics: &[&str],
    ) -> Result<HashMap<String, i32>, KafkaError> {
        let mut counts = self.partition_counts().await?;
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| !counts.contains_key(*t))
            .collect();
        if missing.is_empty() || !self.settings.create_topics {
            return Ok(counts);
        }
        let s = &self.settings;
        ensure_topics(self, &missing, s.topic_partitions, s.replication_factor).await?;
        let deadline = tokio::time::Instant::now() + s.request_timeout;
        while missing.iter().any(|t| !counts.contains_key(*t))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            counts = self.partition_counts().await?;
        }
        Ok(counts)
    }
}

/// Connects to the bootstrap brokers and reads the cluster metadata once: [`KafkaClient::new`]
/// plus a first connection.
///
/// Fails after about 2 x `request_timeout` with [`KafkaError::Unreachable`], naming the
/// brokers, when none answers. The caller owns the start-up deadline and retries.
#[tracing::instrument(skip_all, fields(brokers = ?settings.brokers), err(Display))]
pub async fn connect(settings: &KafkaSettings) -> Result<KafkaClient, KafkaError> {
    let client = KafkaClient::new(settings)?;
    client.rskafka().await?;
    Ok(client)
}

/// Creates every topic of `topics` that does not exist yet, and returns the ones it created.
/// A topic created concurrently by someone else ("already exists") is not an error.
#[tracing::instrument(skip_all, fields(topics = topics.len()), err(Display))]
pub async fn ensure_topics(
    client: &KafkaClient,
    topics: &[&str],
    partitions: i32,
    replication: i16,
) -> Result<Vec<String>, KafkaError> {
    let settings = client.settings();
    let existing = client.partition_counts().await?;
    let controller = client
        .rskafka()
        .await?
        .controller_client()
        .map_err(|e| client.unreachable(&e))?;
    let timeout_ms = i32::try_from(settings.request_timeout.as_millis()).unwrap_or(i32::MAX);
    let mut created = Vec::new();
    for topic in topics {
        if existing.contains_key(*topic) {
            continue;
        }
        let result = bounded(
            settings.request_timeout * 2,
            controller.create_topic(*topic, partitions, replication, timeout_ms),
        )
        .await;
        match result {
            Ok(()) => {
                tracing::info!(topic, partitions, replication, "created kafka topic");
                created.push((*topic).to_owned());
            }
            Err(RsError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {}
            Err(e) if is_connection_error(&e) => return Err(client.unreachable(&e)),
            Err(e) => {
                return Err(KafkaError::CreateTopic {
                    topic: (*topic).to_owned(),
                    reason: format!(
                        "{e}; create it by hand or fix kafka.topic_partitions / kafka.replication_factor"
                    ),
                });
            }
        }
    }
    Ok(created)
}

/// What went wrong talking to Kafka, sorted the way the ports need it.
#[derive(Debug)]
pub(crate) enum Trouble {
    /// No broker answers, or the connection broke: worth retrying later.
    Unavailable(String),
    /// The topic (or partition) does not exist.
    UnknownTopic(String),
    /// A verdict of the broker, or anything else retrying will not fix.
    Refused(String),
}

impl Trouble {
    pub(crate) fn from_rskafka(topic: &str, error: &RsError) -> Self {
        match error {
            RsError::ServerError {
                protocol_error: ProtocolError::UnknownTopicOrPartition,
                ..
            } => Self::UnknownTopic(topic.to_owned()),
            RsError::Timeout => Self::Unavailable(format!(
                "{topic}: no answer from the broker in time (kafka.request_timeout)"
            )),
            e if is_connection_error(e) => Self::Unavailable(format!("{topic}: {e}")),
            e => Self::Refused(format!("{topic}: {e}")),
        }
    }
}

impl From<KafkaError> for Trouble {
    fn from(error: KafkaError) -> Self {
        match error {
            KafkaError::Unreachable { .. } => Self::Unavailable(error.to_string()),
            KafkaError::Settings(_) | KafkaError::CreateTopic { .. } => {
                Self::Refused(error.to_string())
            }
        }
    }
}

/// Runs `fut` with a deadline; a timeout becomes rskafka's `Timeout` error.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RsError>>,
) -> Result<T, RsError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(RsError::Timeout))
}

/// Transport trouble (retryable), as opposed to a verdict of the broker.
pub(crate) fn is_connection_error(error: &RsError) -> bool {
    match error {
        RsError::Connection(_) | RsError::RetryFailed(_) | RsError::Timeout => true,
        RsError::Request(e) => matches!(e, RequestError::IO(_) | RequestError::Poisoned(_)),
        RsError::ServerError { protocol_error, .. } => matches!(
            protocol_error,
            ProtocolError::NotLeaderOrFollower
                | ProtocolError::LeaderNotAvailable
                | ProtocolError::RequestTimedOut
                | ProtocolError::NetworkException
                | ProtocolError::NotEnoughReplicas
                | ProtocolError::NotEnoughReplicasAfterAppend
                | ProtocolError::BrokerNotAvailable
                | ProtocolError::CoordinatorNotAvailable
                | ProtocolError::KafkaStorageError
        ),
        _ => false,
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
        assert_eq!((s.topic_partitions, s.replication_factor), (1, 1));
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

    #[tokio::test]
    async fn connect_without_brokers_is_a_settings_error() {
        let error = connect(&KafkaSettings::default()).await.unwrap_err();
        assert!(matches!(error, KafkaError::Settings(_)), "{error}");
    }
}
