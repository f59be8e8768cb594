//! Chooses the adapters from the configuration: embedded mode (in-process bus and cache)
//! when no Kafka broker is configured, Kafka mode otherwise.

use tokio_util::sync::CancellationToken;

use super::config::Config;
use super::lifecycle::Ports;

/// The chosen adapters and what runs beside the gateway.
pub struct Wired {
    pub ports: Ports,
    pub mode: &'static str,
    /// Cancels background companions (the simulator in embedded mode).
    pub background: CancellationToken,
}

/// Builds the ports the configuration asks for.
///
/// # Errors
/// When an adapter's settings are invalid or Kafka cannot be reached.
pub async fn wire(config: &Config) -> anyhow::Result<Wired> {
    let brokers: Vec<String> = config.value("kafka.brokers")?.unwrap_or_default();
    if !brokers.is_empty() {
        anyhow::bail!(
            "Kafka mode is not available in this build yet (kafka.brokers = {brokers:?}); unset FLUX_KAFKA__BROKERS / KAFKA_BROKER_ADDRESS for embedded mode"
        );
    }
    Ok(Wired {
        ports: Ports::in_memory(),
        mode: "embedded",
        background: CancellationToken::new(),
    })
}
