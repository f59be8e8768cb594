//! The [`KafkaClient`] shared by the event source and the command sink, connecting lazily;
//! [`connect`] for a first connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use humantime_serde::re::humantime;
use rskafka::client::error::Error as RsError;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};

use super::errors::{KafkaError, Trouble, bounded};
use super::settings::{KafkaSettings, SaslMechanism};
use super::tls;

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

    pub(super) fn unreachable(&self, error: &RsError) -> KafkaError {
        let reason = error.to_string();
        KafkaError::Unreachable {
            brokers: self.settings.brokers.join(","),
            timeout: humantime::format_duration(self.settings.request_timeout * 2).to_string(),
            fix: super::errors::fix_for(&reason),
            reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_without_brokers_is_a_settings_error() {
        let error = connect(&KafkaSettings::default()).await.unwrap_err();
        assert!(matches!(error, KafkaError::Settings(_)), "{error}");
    }
}
