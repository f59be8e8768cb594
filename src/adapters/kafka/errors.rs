//! What goes wrong talking to Kafka: the set-up calls' [`KafkaError`], and the classes of
//! rskafka errors the ports turn into their own (retry, unknown topic, refused).

use std::time::Duration;

use rskafka::client::error::{Error as RsError, ProtocolError, RequestError};

/// Errors of the set-up calls ([`connect`], [`ensure_topics`]); the ports have their own.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("no Kafka broker answered within {timeout} (tried {brokers}): {reason}; {fix}")]
    Unreachable {
        brokers: String,
        timeout: String,
        reason: String,
        /// What to check, from the reason ([`fix_for`]).
        fix: &'static str,
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
        // rskafka retries "no leader", "not the leader" and "unknown topic or partition" until
        // its deadline, then wraps the last error: when that was the broker's answer, the
        // brokers can be reached and it is that answer which counts (D31, D33), not a lost
        // connection.
        if let Some(answer @ RsError::ServerError { .. }) = last_retried(error) {
            return match Self::from_rskafka(topic, answer) {
                Self::Unavailable(_) | Self::Busy(_) => Self::Busy(format!("{topic}: {error}")),
                Self::UnknownTopic(topic) => Self::UnknownTopic(topic),
                Self::Refused(_) => Self::Refused(format!("{topic}: {error}")),
            };
        }
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

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(m) | Self::Busy(m) | Self::Refused(m) => f.write_str(m),
            Self::UnknownTopic(topic) => write!(f, "{topic}: unknown topic or partition"),
        }
    }
}

/// The last error of the attempts rskafka retried until its deadline, if `error` is that.
fn last_retried(error: &RsError) -> Option<&RsError> {
    match error {
        RsError::RetryFailed(e) => std::error::Error::source(e)?.downcast_ref::<RsError>(),
        _ => None,
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

/// What to check when no broker could be talked to, from the error's text (rskafka nests the
/// TLS and SASL causes in strings and boxed errors): a refused handshake is not a wrong
/// address.
pub fn fix_for(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("sasl") {
        "check kafka.sasl (mechanism, username, password) against the brokers' listener"
    } else if ["tls", "certificate", "handshake"]
        .iter()
        .any(|word| reason.contains(word))
    {
        "check kafka.tls: ca_file must hold the CA that signed the brokers' certificates, each address in kafka.brokers must match its broker's certificate, and the listener must speak TLS"
    } else {
        "check kafka.brokers and that the brokers are up"
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
    use std::time::Duration;

    use rskafka::BackoffError;
    use rskafka::client::error::RequestContext;

    use super::*;

    fn answer(protocol_error: ProtocolError) -> RsError {
        RsError::ServerError {
            protocol_error,
            error_message: None,
            request: RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: true,
        }
    }

    fn retried(last: RsError) -> RsError {
        RsError::RetryFailed(BackoffError::DeadlineExceded {
            deadline: Duration::from_secs(5),
            source: Box::new(last),
        })
    }

    #[test]
    fn an_unreachable_broker_names_the_setting_its_reason_points_at() {
        let sasl = "error connecting to broker \"k:9093\": Sasl handshake failed: API error: SaslAuthenticationFailed";
        assert!(fix_for(sasl).contains("kafka.sasl"));
        let tls = "error connecting to broker \"k:9093\": TLS error: invalid peer certificate: UnknownIssuer";
        assert!(fix_for(tls).contains("kafka.tls"));
        let refused = "error connecting to broker \"k:9092\": Connection refused (os error 111)";
        assert!(fix_for(refused).contains("kafka.brokers"));
    }

    #[test]
    fn a_broker_answer_retried_to_the_deadline_is_that_answer_not_a_lost_broker() {
        for no_leader in [
            ProtocolError::LeaderNotAvailable,
            ProtocolError::NotLeaderOrFollower,
        ] {
            let trouble = Trouble::from_rskafka("t", &retried(answer(no_leader)));
            assert!(
                matches!(trouble, Trouble::Busy(_)),
                "{no_leader:?}: {trouble:?}"
            );
        }
        let trouble = Trouble::from_rskafka(
            "t",
            &retried(answer(ProtocolError::UnknownTopicOrPartition)),
        );
        assert!(matches!(trouble, Trouble::UnknownTopic(_)), "{trouble:?}");
        // A connection that kept failing is a lost broker.
        let io = RsError::Request(RequestError::IO(std::io::Error::other("reset")));
        let trouble = Trouble::from_rskafka("t", &retried(io));
        assert!(matches!(trouble, Trouble::Unavailable(_)), "{trouble:?}");
    }
}
