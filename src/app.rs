//! Services, configuration, wiring and lifecycle: everything between the ports and `main`.

pub mod auth;
pub mod clients;
pub mod config;
pub mod dedup;
pub mod health;
pub mod http;
pub mod ingest;
pub mod lifecycle;
pub mod recovery;
pub mod snapshots;
pub mod weather;
pub mod wiring;

pub use config::Settings;
pub use lifecycle::{Application, Ports};
