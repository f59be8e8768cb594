//! `CommandSink`: keyed messages sent to a topic (the BFF's commands to domain services).

use async_trait::async_trait;

use crate::domain::Command;

#[derive(Debug, thiserror::Error)]
pub enum CommandSinkError {
    /// No broker could be reached (or none answered in time); nothing was written. The
    /// producer counts as down until [`CommandSink::probe`] reaches a broker again.
    #[error("command sink unavailable: {0}")]
    Unavailable(String),
    /// A broker answered and refused the message: at once (too large, not authorised, …) or
    /// every time until the send's deadline (too few in-sync replicas, no leader, unknown
    /// topic). The brokers can be reached; the cause is theirs, shared by every replica.
    #[error("command rejected: {0}")]
    Rejected(String),
}

/// Sends commands.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait CommandSink: Send + Sync {
    /// Appends `command` to its topic and returns once the broker acknowledged it (acks = all).
    ///
    /// - A keyed command MUST land in the partition the original BFF's partitioner picks for
    ///   its key (kafkajs' legacy murmur2), so that it is ordered with other commands of the
    ///   same key, also those of an original BFF still running beside it.
    /// - A send that returned `Ok` MUST NOT be lost.
    ///
    /// # Errors
    /// - [`CommandSinkError::Unavailable`] when no broker can be reached (retryable).
    /// - [`CommandSinkError::Rejected`] when a broker refused the message, at once or until
    ///   the deadline.
    async fn send(&self, command: Command) -> Result<(), CommandSinkError>;

    /// Whether the broker answers now, without sending anything: how a producer marked down
    /// after a failed send is found up again when no command is waiting. The default knows
    /// nothing better than "yes".
    ///
    /// # Errors
    /// [`CommandSinkError::Unavailable`] when no broker answers.
    async fn probe(&self) -> Result<(), CommandSinkError> {
        Ok(())
    }

    /// Waits until every accepted command was acknowledged. Called on shutdown.
    async fn flush(&self) -> Result<(), CommandSinkError> {
        Ok(())
    }
}
