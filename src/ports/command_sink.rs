//! `CommandSink`: keyed messages sent to a topic (the BFF's commands to domain services).

use async_trait::async_trait;

use crate::domain::Command;

#[derive(Debug, thiserror::Error)]
pub enum CommandSinkError {
    /// The broker cannot be reached; nothing was written.
    #[error("command sink unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (too large, unknown topic, …).
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
    /// - [`CommandSinkError::Unavailable`] when the broker cannot be reached (retryable).
    /// - [`CommandSinkError::Rejected`] when the broker refused the message.
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
