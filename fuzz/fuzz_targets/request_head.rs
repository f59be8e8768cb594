//! The head of an HTTP request, as hyper parses it (httparse) and as the gateway prepares it
//! before any handler: copied out of the read buffer, and trimmed to what Socket.IO keeps on
//! `/socket.io/` paths; and the client address from `X-Forwarded-For`, every hop trusted (the
//! walk reads every value). Nothing may panic.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use flux_bff::adapters::http::prepare_head;
use flux_bff::domain::identity;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(path);
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    // What the http crate refuses, hyper refuses before the gateway sees it.
    let Ok(request) = builder.body(Body::empty()) else {
        return;
    };
    let forwarded: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let everyone: [IpNet; 2] = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let _ = identity::limit_address(Some(&forwarded.join(",")), [127, 0, 0, 1].into(), &everyone);
    let _ = prepare_head(request);
});
