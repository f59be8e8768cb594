//! Cross-cutting telemetry that every layer but the domain may use: the metric names and the
//! Prometheus exporter ([`metrics`]), the throttle for repeated warnings ([`throttle`]), and
//! the log subscriber ([`logging`]). Imports nothing of the crate.

pub mod logging;
pub mod metrics;
pub mod throttle;
