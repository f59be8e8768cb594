//! The application services, between the ports: ingestion of events ([`ingest`]), what
//! clients ask ([`clients`]), snapshots in two tiers ([`snapshots`]), the dedup window
//! ([`dedup`]), weather per city ([`weather`]), connection authentication ([`auth`]) and
//! recovery ([`recovery`]), health. They know the domain, the ports and telemetry; no
//! adapter, and no transport type.

pub mod auth;
pub mod clients;
pub mod dedup;
pub mod health;
pub mod ingest;
pub mod limits;
pub mod recovery;
pub mod retry;
pub mod snapshots;
pub mod weather;
