//! What goes wrong talking to Kafka: the set-up calls' [`KafkaError`], and the classes of
//! rskafka errors the ports turn into their own (retry, unknown topic, refused).

use std::time::Duration;

use rskafka::client::error::{Error as RsError, ProtocolError, RequestError};

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

/// What went wrong talking to Kafka, sorted the way the ports need it.
#[derive(Debug)]
pub(crate) enum Trouble {
    /// No broker answers, or the connection broke: worth retrying later.
    Unavailable(String),
    /// A broker answered, with an error that may pass (no leader elected yet, too few
    /// in-sync replicas, …): worth retrying, but the brokers can be reached.
    Busy(String),
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
            e @ RsError::ServerError { .. } if is_connection_error(e) => {
                Self::Busy(format!("{topic}: {e}"))
            }
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
