//! Topic creation: [`ensure_topics`] (the tests, `kafka.create_topics`), and the ports'
//! creation of their missing topics.

use std::collections::HashMap;
use std::time::Duration;

use rskafka::client::error::{Error as RsError, ProtocolError};

use super::client::KafkaClient;
use super::errors::{KafkaError, bounded, is_connection_error};

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
                // -1: the brokers' default (`kafka.topic_partitions`, `replication_factor`).
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

/// Creates the topics of `topics` that are missing, when `kafka.create_topics` is on, and
/// waits (up to `request_timeout`) until the metadata shows them.
pub(super) async fn create_missing(
    client: &KafkaClient,
    topics: &[&str],
) -> Result<HashMap<String, i32>, KafkaError> {
    let mut counts = client.partition_counts().await?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !counts.contains_key(*t))
        .collect();
    if missing.is_empty() || !client.settings().create_topics {
        return Ok(counts);
    }
    let s = client.settings();
    ensure_topics(client, &missing, s.topic_partitions, s.replication_factor).await?;
    let deadline = tokio::time::Instant::now() + s.request_timeout;
    while missing.iter().any(|t| !counts.contains_key(*t)) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counts = client.partition_counts().await?;
    }
    Ok(counts)
}
