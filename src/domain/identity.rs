//! Who a connection is: the guest id from the handshake and the client's address.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Who is asking: the transport's socket id and the resolved guest identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub socket_id: String,
    pub user_id: String,
    /// Only logged at debug level; never sent anywhere.
    pub ip: Option<String>,
}

/// Longest accepted guest id, in UTF-16 code units as the original counted them (D10).
pub const MAX_GUEST_ID_LEN: usize = 128;

/// ECMAScript `String.prototype.trim` white space: Rust's `White_Space` set differs by
/// U+0085 (not trimmed by JavaScript) and U+FEFF (trimmed by JavaScript).
fn is_js_whitespace(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

/// The guest id carried by `auth.guestId`, trimmed, if it is acceptable: a string whose
/// trimmed length is 1 to 128 UTF-16 code units. Anything else gives `None`, and the caller
/// mints a fresh UUID v4 instead (a handshake is never rejected, D1).
pub fn accept_guest_id(auth: Option<&serde_json::Value>) -> Option<String> {
    accept_user_id(auth?.get("guestId")?.as_str()?)
}

/// A user id from the client (`auth.guestId`, or a verified token's `sub`), trimmed, if its
/// trimmed length is 1 to 128 UTF-16 code units (D10).
pub fn accept_user_id(raw: &str) -> Option<String> {
    let trimmed = raw.trim_matches(is_js_whitespace);
    let len = trimmed.encode_utf16().count();
    (1..=MAX_GUEST_ID_LEN)
        .contains(&len)
        .then(|| trimmed.to_owned())
}

/// The client's address as the HTTP server determined it ([`limit_address`]: the peer, or the
/// client a trusted proxy forwarded): a request extension of every Engine.IO handshake. What
/// the gateway logs as the client's address (a client cannot name itself by sending
/// `X-Forwarded-For` past the proxies, as it could to the original: contract §e, 19; D34).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The address a connection counts against for per-client limits: the peer, unless the peer is
/// one of the `trusted` proxies; then the nearest address of `X-Forwarded-For` (read from the
/// right, the hop the proxy added last) that is not a trusted proxy. A hop that is not an
/// address ends the walk at the last trusted one: a client cannot hide behind garbage.
/// Addresses are compared in their canonical form (an IPv4 peer of a dual-stack listener is
/// `::ffff:a.b.c.d`), and a hop may carry a port or brackets (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`, as some proxies write it).
pub fn limit_address(forwarded_for: Option<&str>, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        let Some(ip) = forwarded_hop(hop) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// What a client's connections count under for per-client limits: an IPv4 address itself, an
/// IPv6 address's /64 network (its low 64 bits masked). One IPv6 subscriber holds a whole /64
/// (a home network's or a phone's prefix) and can connect from any of its 2^64 addresses.
pub fn limit_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` hop as an address: bare, with a port, or in brackets.
fn forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_guest_id_is_trimmed() {
        assert_eq!(
            accept_guest_id(Some(&json!({"guestId": "  alice  "}))),
            Some("alice".into())
        );
    }

    #[test]
    fn bad_guest_ids_are_refused() {
        for auth in [
            json!({}),
            json!({"guestId": 42}),
            json!({"guestId": "   "}),
            json!({"guestId": "\u{feff}"}),
            json!({"guestId": "x".repeat(129)}),
            json!("guestId"),
        ] {
            assert_eq!(accept_guest_id(Some(&auth)), None, "{auth}");
        }
        assert_eq!(accept_guest_id(None), None);
    }

    #[test]
    fn guest_id_length_counts_utf16_units() {
        // 64 astral characters are 128 UTF-16 units: accepted; 65 are not.
        let ok = "😀".repeat(64);
        assert_eq!(accept_guest_id(Some(&json!({ "guestId": ok }))), Some(ok));
        let long = "😀".repeat(65);
        assert_eq!(accept_guest_id(Some(&json!({ "guestId": long }))), None);
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64_network_and_an_ipv4_one_by_its_address() {
        let key = |ip: &str| limit_key(ip.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn the_limit_address_honours_forwarded_for_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let outsider: IpAddr = "198.51.100.4".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer is itself, whatever it forwards.
        assert_eq!(limit_address(Some("1.2.3.4"), outsider, &trusted), outsider);
        // Through a trusted proxy: the nearest untrusted hop, from the right.
        assert_eq!(
            limit_address(Some("1.2.3.4, 203.0.113.7, 10.1.1.1"), proxy, &trusted),
            ip("203.0.113.7")
        );
        // Garbage ends the walk at the last trusted hop; no header is the proxy itself.
        assert_eq!(
            limit_address(Some("1.2.3.4, junk, 10.1.1.1"), proxy, &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(limit_address(None, proxy, &trusted), proxy);
        assert_eq!(limit_address(Some(""), proxy, &trusted), proxy);
    }

    /// Found by review: a mapped IPv4 proxy was not trusted, and a hop with a port ended the
    /// walk at the proxy, which then counted as the client of everyone behind it.
    #[test]
    fn the_limit_address_reads_mapped_peers_and_hops_with_ports_or_brackets() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mapped_proxy: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            limit_address(Some("203.0.113.7"), mapped_proxy, &trusted),
            ip("203.0.113.7")
        );
        let proxy = ip("10.0.0.9");
        for (hop, client) in [
            ("203.0.113.7:5678", "203.0.113.7"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
        ] {
            assert_eq!(
                limit_address(Some(hop), proxy, &trusted),
                ip(client),
                "{hop}"
            );
        }
        assert_eq!(
            limit_address(None, ip("::ffff:198.51.100.4"), &trusted),
            ip("198.51.100.4"),
            "an untrusted mapped peer counts as its IPv4 address"
        );
    }
}
