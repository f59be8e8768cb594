//! The Kafka adapter on `rskafka`: the two ports ([`KafkaEventSource`], [`KafkaCommandSink`])
//! over one lazily connecting [`KafkaClient`], with their settings, TLS and SASL, topic
//! creation and error classes. No domain rules here: records go in and out as bytes.

mod client;
mod command_sink;
mod errors;
mod event_source;
mod settings;
mod tls;
mod topics;

use errors::{Trouble, bounded};

pub use client::{KafkaClient, connect};
pub use command_sink::{KafkaCommandSink, record_timestamp_now};
pub use errors::{KafkaError, fix_for};
pub use event_source::KafkaEventSource;
pub use settings::{KafkaSettings, SaslMechanism, SaslSettings, TlsSettings};
pub use tls::read_files;
pub use topics::ensure_topics;
