//! The connection limits (`[http]`): open connections in total and per client address, with
//! `X-Forwarded-For` honoured only from trusted proxies. A connection's place is given back
//! when its socket is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::Refused;
use super::settings::HttpSettings;
use crate::domain::identity;
use crate::telemetry::metrics::HTTP_CONNECTIONS_OPEN;

/// The connection limits and what they count.
pub(super) struct Limits {
    max_connections: usize,
    max_per_client: usize,
    trusted_proxies: Vec<IpNet>,
    pub(super) header_timeout: Duration,
    pub(super) max_head_bytes: usize,
    open: AtomicUsize,
    // std Mutex: never held across an .await
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the limits, given back when dropped.
pub(super) struct Slot {
    limits: Arc<Limits>,
    client: Option<IpAddr>,
    /// Whether the client still has to be named by the first request (trusted proxy).
    pending: bool,
}

impl Limits {
    pub(super) fn new(settings: &HttpSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            max_per_client: settings.max_connections_per_client,
            trusted_proxies: settings.trusted_proxies.clone(),
            header_timeout: settings.header_timeout,
            max_head_bytes: settings.max_head_bytes.max(8192),
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
        }
    }

    /// A new connection from `peer`: its slot, or `None` (counted) when a limit refuses it.
    /// A peer that is not a trusted proxy is the client and is counted now.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        // A dual-stack listener's IPv4 peer is `::ffff:a.b.c.d`: compared as IPv4.
        let peer = peer.to_canonical();
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            Refused::MaxConnections.count();
            return None;
        }
        metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        let mut slot = Slot {
            limits: Arc::clone(self),
            client: None,
            pending: false,
        };
        if self.trusted_proxies.iter().any(|net| net.contains(&peer)) {
            slot.pending = self.max_per_client > 0;
        } else if !self.take_client(&mut slot, peer) {
            return None;
        }
        Some(slot)
    }

    /// On each request of a connection: names the client of a connection through a trusted
    /// proxy on its first one (`client`, asked for only then). `false` when that client is
    /// over its limit.
    pub(super) fn admit_forwarded(
        &self,
        slot: &std::sync::Mutex<Slot>,
        client: impl FnOnce() -> IpAddr,
    ) -> bool {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.pending {
            return true;
        }
        slot.pending = false;
        self.take_client(&mut slot, client())
    }

    /// The client of a request from `peer`: the peer, or the nearest untrusted hop of every
    /// `X-Forwarded-For` header when the peer is a trusted proxy ([`identity::limit_address`]).
    pub(super) fn client_of(&self, req: &Request, peer: IpAddr) -> IpAddr {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = forwarded.join(",");
        identity::limit_address(Some(&forwarded), peer, &self.trusted_proxies)
    }

    /// Counts the connection against `client` (its /64 for IPv6, [`identity::limit_key`]);
    /// `false` (counted) when over the limit.
    fn take_client(&self, slot: &mut Slot, client: IpAddr) -> bool {
        if self.max_per_client == 0 {
            return true;
        }
        let client = identity::limit_key(client);
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            drop(per_client);
            Refused::MaxConnectionsPerClient.count();
            return false;
        }
        *count += 1;
        slot.client = Some(client);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
        if let Some(client) = self.client {
            let mut per_client = self
                .limits
                .per_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&client);
                }
            }
        }
    }
}

/// The answer to a request whose client has too many connections open; the connection closes.
pub(super) fn too_many_connections() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONNECTION, "close")],
        "too many connections from this client address\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_per_client: usize) -> Arc<Limits> {
        Arc::new(Limits::new(&HttpSettings {
            max_connections_per_client: max_per_client,
            ..HttpSettings::default()
        }))
    }

    #[test]
    fn a_proxy_seen_through_a_dual_stack_listener_is_still_trusted() {
        let limits = limits(1);
        let proxy: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..3).filter_map(|_| limits.admit(proxy)).collect();
        assert_eq!(slots.len(), 3, "the proxy is not a client of its own");
        assert!(
            slots.iter().all(|slot| slot.pending),
            "its requests name the clients"
        );
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_network_share_a_client_limit() {
        let limits = limits(2);
        let admit = |ip: &str| limits.admit(ip.parse().unwrap());
        let held: Vec<Slot> = ["2001:db8:0:1::1", "2001:db8:0:1:ffff::2"]
            .into_iter()
            .filter_map(admit)
            .collect();
        assert_eq!(held.len(), 2);
        assert!(
            admit("2001:db8:0:1::3").is_none(),
            "a third address of the /64"
        );
        assert!(
            admit("2001:db8:0:2::1").is_some(),
            "another /64 is another client"
        );
        drop(held);
        assert!(admit("2001:db8:0:1::3").is_some(), "given back when closed");
    }
}
