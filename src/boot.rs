//! The composition root: the only code that names concrete adapters. It reads the
//! configuration ([`config`]), chooses the adapters ([`wiring`]), assembles the services and
//! the inbound adapters into an [`Application`] and runs it ([`application`]), behind the
//! programs' entry points ([`entry`]).

pub mod application;
pub mod config;
pub mod entry;
pub mod wiring;

pub use application::Application;
pub use config::{Config, LifecycleSettings, Settings};
pub use entry::{Cli, main_entry, shutdown_signal, sim_entry};
pub use wiring::Ports;
