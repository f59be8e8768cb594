//! Implementations of the ports. Inbound: Socket.IO ([`socketio`], which also implements
//! [`ClientFanout`](crate::ports::ClientFanout)) and HTTP ([`http`]). Outbound: Kafka
//! ([`kafka`]), Valkey ([`valkey`]), and in-memory adapters that run the whole system in one
//! process ([`memory`]). An adapter knows the ports, the domain and telemetry, never another
//! adapter nor the application.

pub mod http;
pub mod kafka;
pub mod memory;
pub mod socketio;
pub mod valkey;
