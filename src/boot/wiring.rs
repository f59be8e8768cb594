//! Chooses the adapters from the configuration: embedded mode (in-process bus and cache)
//! when no Kafka broker is configured, Kafka mode otherwise; Valkey whenever it is
//! configured (and by default in Kafka mode), the in-process cache otherwise.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::Config;
use crate::adapters::kafka::{KafkaClient, KafkaSettings};
use crate::adapters::memory::{MemoryBus, MemoryCache};
use crate::adapters::valkey::{ValkeySettings, ValkeySnapshotCache};
use crate::ports::{CommandSink, EventPublisher, EventSource, SnapshotCache};
use crate::sim::SimSettings;

/// The adapters the application runs on.
#[derive(Clone)]
pub struct Ports {
    pub source: Arc<dyn EventSource>,
    pub sink: Arc<dyn CommandSink>,
    pub cache: Arc<dyn SnapshotCache>,
    /// The in-process bus in embedded mode, for the admin publish hook (`admin.publish`).
    pub publisher: Option<Arc<dyn EventPublisher>>,
    /// What the event source is, for messages (`Kafka brokers a:9092,b:9092`).
    pub source_name: String,
}

impl Ports {
    /// Everything in memory: one bus for events and commands, one cache.
    pub fn in_memory() -> Self {
        Self::on_bus(MemoryBus::new(), Arc::new(MemoryCache::default()))
    }

    /// Events, commands and the admin hook on `bus`, snapshots in `cache`.
    pub fn on_bus(bus: MemoryBus, cache: Arc<dyn SnapshotCache>) -> Self {
        Self {
            source: Arc::new(bus.clone()),
            sink: Arc::new(bus.clone()),
            cache,
            publisher: Some(Arc::new(bus)),
            source_name: "the in-process bus".into(),
        }
    }
}

/// The adapter settings, read and validated before anything starts (bad ones exit 2).
#[derive(Clone, Debug)]
pub struct AdapterSettings {
    /// Kafka mode when `kafka.brokers` is not empty.
    pub kafka: KafkaSettings,
    /// `None`: the in-process cache.
    pub valkey: Option<ValkeySettings>,
    /// The domain simulator of embedded mode.
    pub sim: SimSettings,
}

impl AdapterSettings {
    /// Reads the `kafka`, `valkey` and `sim` sections.
    ///
    /// # Errors
    /// Names the field and the reason when a value is invalid.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let kafka: KafkaSettings = config.section("kafka")?;
        kafka
            .validate()
            .and_then(|()| {
                if kafka.is_enabled() {
                    crate::adapters::kafka::read_files(&kafka)
                } else {
                    Ok(())
                }
            })
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let valkey: ValkeySettings = config.section("valkey")?;
        valkey
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let wanted = valkey.enabled && (config.is_set("valkey") || kafka.is_enabled());
        if wanted {
            // A password file that cannot be read is bad configuration (exit 2), told now.
            valkey
                .resolve_password()
                .map_err(|e| anyhow::anyhow!("invalid configuration: {e:#}"))?;
        }
        let sim: SimSettings = config.section("sim")?;
        if wanted && !kafka.is_enabled() && sim.enabled {
            // Most likely the original's variables with the broker's forgotten: the simulator's
            // made-up prices would reach every gateway that shares the cache.
            anyhow::bail!(
                "invalid configuration: Valkey is configured ({}) but no Kafka broker is, so embedded mode would write the simulator's made-up snapshots and weather into that shared cache, where gateways reading Kafka serve them to users: set KAFKA_BROKER_ADDRESS (or FLUX_KAFKA__BROKERS) for real data, or FLUX_SIM__ENABLED=false to run without the simulator, or unset the Valkey settings (VALKEY_*, FLUX_VALKEY__*) for a demo",
                valkey.server()
            );
        }
        Ok(Self {
            kafka,
            valkey: wanted.then_some(valkey),
            sim,
        })
    }
}

/// The chosen adapters and what runs beside the gateway.
pub struct Wired {
    pub ports: Ports,
    pub mode: &'static str,
    /// Cancels background companions (the simulator in embedded mode).
    pub background: CancellationToken,
}

/// Builds the ports the settings ask for.
///
/// # Errors
/// When an adapter cannot be set up or Kafka cannot be reached.
pub async fn wire(adapters: &AdapterSettings) -> anyhow::Result<Wired> {
    let cache = cache(adapters).await?;
    if adapters.kafka.is_enabled() {
        // The client connects lazily: until a broker answers, the ports return `Unavailable`
        // (naming the brokers), the consumers retry, and the start-up deadline applies.
        let client = KafkaClient::new(&adapters.kafka)?;
        tracing::info!(brokers = ?adapters.kafka.brokers, "event source and command sink: Kafka");
        let ports = Ports {
            source: Arc::new(client.event_source()),
            sink: Arc::new(client.command_sink()),
            cache,
            publisher: None,
            source_name: format!("Kafka brokers {}", adapters.kafka.brokers.join(",")),
        };
        return Ok(Wired {
            ports,
            mode: "kafka",
            background: CancellationToken::new(),
        });
    }
    let mut ports = Ports::in_memory();
    ports.cache = cache;
    let background = CancellationToken::new();
    crate::sim::spawn(
        adapters.sim.clone(),
        ports.sink.clone(),
        ports.source.clone(),
        background.clone(),
    );
    Ok(Wired {
        ports,
        mode: "embedded",
        background,
    })
}

async fn cache(adapters: &AdapterSettings) -> anyhow::Result<Arc<dyn SnapshotCache>> {
    Ok(match &adapters.valkey {
        Some(settings) => {
            let cache = ValkeySnapshotCache::connect(settings).await?;
            tracing::info!(host = cache.host(), prefix = %settings.key_prefix, "snapshot cache: Valkey");
            Arc::new(cache)
        }
        None => {
            tracing::info!(
                "snapshot cache: in-process (set FLUX_VALKEY__URL or VALKEY_HOST for Valkey)"
            );
            Arc::new(MemoryCache::default())
        }
    })
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;

    /// The adapter settings from these variables (`FLUX_*` are read from the process
    /// environment, which `figment::Jail` sets and serialises).
    fn adapters(pairs: &[(&str, &str)]) -> Result<AdapterSettings, String> {
        let mut result = Err(String::new());
        figment::Jail::expect_with(|jail| {
            let mut env = Vec::new();
            for (k, v) in pairs {
                jail.set_env(k, v);
                env.push(((*k).to_owned(), (*v).to_owned()));
            }
            result = Config::from_parts(None, &env)
                .and_then(|c| AdapterSettings::from_config(&c))
                .map_err(|e| e.to_string());
            Ok(())
        });
        result
    }

    #[test]
    fn embedded_mode_with_a_valkey_and_the_simulator_is_refused_naming_the_fixes() {
        for valkey in [
            ("VALKEY_HOST", "cache.internal"),
            ("FLUX_VALKEY__URL", "redis://cache.internal:6379"),
        ] {
            let err = adapters(&[valkey]).unwrap_err();
            for needle in [
                "cache.internal:6379",
                "KAFKA_BROKER_ADDRESS",
                "FLUX_SIM__ENABLED=false",
                "unset the Valkey settings",
            ] {
                assert!(err.contains(needle), "{valkey:?}: no {needle:?} in {err}");
            }
        }
        // Each way out of it starts.
        let valkey = ("VALKEY_HOST", "cache.internal");
        let kafka = adapters(&[valkey, ("KAFKA_BROKER_ADDRESS", "k:9092")]).unwrap();
        assert!(kafka.kafka.is_enabled() && kafka.valkey.is_some());
        let no_sim = adapters(&[valkey, ("FLUX_SIM__ENABLED", "false")]).unwrap();
        assert!(no_sim.valkey.is_some() && !no_sim.kafka.is_enabled());
        let demo = adapters(&[]).unwrap();
        assert!(!demo.kafka.is_enabled() && demo.valkey.is_none() && demo.sim.enabled);
    }

    #[test]
    fn a_file_the_settings_name_that_cannot_be_read_is_bad_configuration() {
        let kafka = ("KAFKA_BROKER_ADDRESS", "k:9092");
        let err =
            adapters(&[kafka, ("FLUX_KAFKA__TLS__CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(
            err.starts_with("invalid configuration: kafka.tls.ca_file"),
            "{err}"
        );
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let err = adapters(&[
            kafka,
            ("VALKEY_HOST", "cache.internal"),
            ("VALKEY_PASSWORD_FILE", "/nonexistent/valkey-password"),
        ])
        .unwrap_err();
        assert!(
            err.starts_with("invalid configuration: valkey.password_file"),
            "{err}"
        );
        assert!(err.contains("/nonexistent/valkey-password"), "{err}");
        // Not read where they are not used: Valkey off.
        adapters(&[
            kafka,
            ("VALKEY_HOST", "cache.internal"),
            ("VALKEY_PASSWORD_FILE", "/nonexistent/valkey-password"),
            ("FLUX_VALKEY__ENABLED", "false"),
        ])
        .unwrap();
    }
}
