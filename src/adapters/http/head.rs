//! What the server does to a request head before any handler sees it: the head copied out of
//! hyper's read buffer, and Socket.IO requests trimmed to the headers that are read.

use axum::extract::Request;
use axum::http::{HeaderValue, header};

/// Copies the URI and the header values into allocations of their own: hyper parses them as
/// slices of its connection read buffer, and Engine.IO keeps the request head for the life of
/// the socket, which would keep that whole buffer alive for it.
pub(super) fn detach_head(mut req: Request) -> Request {
    if let Ok(uri) = req.uri().to_string().parse() {
        *req.uri_mut() = uri;
    }
    for value in req.headers_mut().values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    req
}

/// What the server does to a request head before any handler sees it: [`detach_head`], then
/// [`trim_socketio_head`] (a layer of the router) on Socket.IO paths. For the fuzz target
/// `request_head` (`fuzz/`).
#[doc(hidden)]
pub fn prepare_head(req: Request) -> Request {
    trim_socketio_head(detach_head(req))
}

/// Whether Engine.IO serves `path`: `/socket.io` itself or below it, as engineioxide matches
/// its path (`/socket.io?EIO=4…`, without the slash, opens a session too).
fn is_socketio_path(path: &str) -> bool {
    path.strip_prefix("/socket.io")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The transport (`polling`, `websocket`) of a request that opens a new Engine.IO session:
/// a Socket.IO request without `sid` (an upgrade or a poll of a session carries its `sid`).
/// The query is read as engineioxide reads it (the first `transport=` pair, its value up to
/// a further `=`), so that no spelling opens a session this check does not see.
pub(super) fn engine_handshake(req: &Request) -> Option<&str> {
    if !is_socketio_path(req.uri().path()) {
        return None;
    }
    let query = req.uri().query()?;
    if query.split('&').any(|kv| kv.starts_with("sid=")) {
        return None;
    }
    query
        .split('&')
        .find(|kv| kv.starts_with("transport="))
        .and_then(|kv| kv.split('=').nth(1))
}

/// The request headers a Socket.IO request keeps: what engineioxide needs for the handshake
/// (the permessage-deflate offer among them; engineioxide drops it once answered) and the
/// polling transport. The client's address is read before
/// ([`ClientAddress`](crate::domain::identity::ClientAddress), an extension), so
/// `X-Forwarded-For` is not kept. A header the gateway starts to read must be added here.
const SOCKETIO_HEADERS: [header::HeaderName; 9] = [
    header::HOST,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// Engine.IO keeps the head of the request that opened a session for the life of the socket.
/// A browser sends a dozen headers the gateway never reads (user agent, languages, cookies,
/// extensions: 1–2 KB per connection, as much as the rest of an idle socket); only
/// [`SOCKETIO_HEADERS`] are kept on `/socket.io/` requests.
pub(super) fn trim_socketio_head(mut req: Request) -> Request {
    if !is_socketio_path(req.uri().path()) {
        return req;
    }
    let headers = req.headers_mut();
    let keep = |name: &header::HeaderName| SOCKETIO_HEADERS.contains(name);
    if headers.keys().all(keep) {
        return req;
    }
    // A map sized for what is kept: a map's memory follows its capacity, not its length.
    let kept_len = headers.iter().filter(|(name, _)| keep(name)).count();
    let mut kept = axum::http::HeaderMap::with_capacity(kept_len);
    let mut current = None;
    for (name, value) in headers.drain() {
        // `drain` names a header once, then gives its further values with `None`.
        if name.is_some() {
            current = name;
        }
        if let Some(name) = current.as_ref().filter(|n| keep(n)) {
            kept.append(name.clone(), value);
        }
    }
    *headers = kept;
    req
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::{HeaderValue, header};

    use super::*;

    #[test]
    fn socketio_requests_keep_only_the_headers_that_are_read() {
        let browser = |path: &str| {
            let mut req = Request::new(Body::empty());
            *req.uri_mut() = path.parse().unwrap();
            let h = req.headers_mut();
            h.insert(header::HOST, HeaderValue::from_static("flux.example"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k=="));
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
            );
            h.insert(header::USER_AGENT, HeaderValue::from_static("Mozilla/5.0"));
            h.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
            h.insert(
                header::ORIGIN,
                HeaderValue::from_static("https://flux.example"),
            );
            h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
            h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
            req
        };
        let req = trim_socketio_head(browser("/socket.io/?EIO=4&transport=websocket"));
        let mut names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "sec-websocket-extensions",
                "sec-websocket-key",
                "upgrade",
            ]
        );
        // Other routes are untouched; Engine.IO's path without its slash is trimmed too.
        assert_eq!(trim_socketio_head(browser("/metrics")).headers().len(), 9);
        assert_eq!(
            trim_socketio_head(browser("/socket.ioX/")).headers().len(),
            9
        );
        let bare = trim_socketio_head(browser("/socket.io?EIO=4&transport=polling"));
        assert_eq!(bare.headers().len(), 4);
    }

    #[test]
    fn a_handshake_is_recognised_in_every_spelling_engineioxide_accepts() {
        let transport = |target: &str| {
            let mut req = Request::new(Body::empty());
            *req.uri_mut() = target.parse().unwrap();
            engine_handshake(&req).map(str::to_owned)
        };
        for (target, expected) in [
            ("/socket.io/?EIO=4&transport=polling", Some("polling")),
            ("/socket.io?EIO=4&transport=polling", Some("polling")),
            ("/socket.io/?EIO=4&transport=polling=x", Some("polling")),
            (
                "/socket.io/?transport=websocket&transport=polling",
                Some("websocket"),
            ),
            ("/socket.io/?EIO=4&transport=polling&sid=abc", None),
            ("/socket.ioX/?EIO=4&transport=polling", None),
            ("/metrics?transport=polling", None),
        ] {
            assert_eq!(transport(target).as_deref(), expected, "{target}");
        }
    }

    #[test]
    fn the_request_head_no_longer_shares_the_read_buffer() {
        // Stands for hyper's read buffer: the head is parsed as slices of it.
        let buffer = Bytes::from(b"/socket.io/?EIO=4 websocket".to_vec());
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = axum::http::Uri::from_maybe_shared(buffer.slice(..17)).unwrap();
        req.headers_mut().insert(
            header::UPGRADE,
            HeaderValue::from_maybe_shared(buffer.slice(18..)).unwrap(),
        );
        assert!(!buffer.is_unique(), "the test builds a head that shares it");
        let req = detach_head(req);
        assert!(buffer.is_unique(), "URI or a header value still shares it");
        assert_eq!(req.uri(), "/socket.io/?EIO=4");
        assert_eq!(req.headers()[header::UPGRADE], "websocket");
    }
}
