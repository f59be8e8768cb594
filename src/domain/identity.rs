//! Who a connection is: the guest id from the handshake and the client's address.

use std::net::IpAddr;

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
    let raw = auth?.get("guestId")?.as_str()?;
    let trimmed = raw.trim_matches(is_js_whitespace);
    let len = trimmed.encode_utf16().count();
    (1..=MAX_GUEST_ID_LEN)
        .contains(&len)
        .then(|| trimmed.to_owned())
}

/// The client address: the first element of `X-Forwarded-For` when present and non-empty,
/// else the TCP peer. The address is only logged at debug level and never sent anywhere.
pub fn client_ip(forwarded_for: Option<&str>, peer: Option<IpAddr>) -> Option<String> {
    forwarded_for
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| peer.map(|p| p.to_string()))
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
    fn client_ip_prefers_the_first_forwarded_address() {
        let peer = Some("10.0.0.9".parse().unwrap());
        assert_eq!(
            client_ip(Some(" 1.2.3.4 , 5.6.7.8"), peer).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(
            client_ip(Some(" ,1.2.3.4"), peer).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(client_ip(None, None), None);
    }
}
