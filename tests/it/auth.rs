//! Optional connection authentication (D25) over the real Socket.IO path: with
//! `auth.jwt_key_file` unset any handshake connects as before (D1); with it set, only a valid
//! `auth.token` connects, as its `sub`, and every refusal reaches the client as a
//! `connect_error` and is counted in `flux_auth_refused_total{reason}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::app::*;
use flux_bff::app::auth::JwtAlgorithm;
use flux_bff::boot::Settings;
use futures::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{Value, json};

const SECRET: &str = "a shared secret of at least 32 bytes, for tests only";

/// Tests that read `flux_auth_refused_total` run one at a time: the metrics recorder is shared
/// by the whole test binary, so a concurrent refusal would blur a delta.
static COUNTED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

/// A key file holding `content`, unique to this test process and name.
fn key_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-auth-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

pub(crate) fn hs256_settings(audience: Option<&str>) -> Settings {
    let mut settings = Settings::default();
    // Trimmed when read: the newline must not become part of the secret.
    settings.auth.jwt_key_file = Some(key_file("hs256.key", &format!("{SECRET}\n")));
    settings.auth.jwt_audience = audience.map(str::to_owned);
    settings
}

fn hs256(claims: Value) -> String {
    hs256_with(claims, SECRET)
}

fn hs256_with(claims: Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    encode(&Header::default(), &claims, &key).unwrap()
}

fn rs256(claims: Value, private_pem: &str) -> String {
    let pem = std::fs::read(fixture_path(private_pem)).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

fn in_a_minute() -> u64 {
    get_current_timestamp() + 60
}

async fn refused(app: &TestApp, reason: &str) -> f64 {
    counter(
        &app.metrics().await,
        "flux_auth_refused_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// What a refused client saw: the error rust_socketio reported and the events it got.
struct Outcome {
    errors: Vec<String>,
    events: Vec<String>,
}

/// Connects with `auth` and waits until the gateway answers the namespace connect: either
/// `session:init` arrives, or rust_socketio reports the `connect_error` as an `Event::Error`
/// (its `connect()` itself succeeds: it does not wait for the namespace's answer).
async fn attempt(app: &TestApp, auth: Value) -> Outcome {
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let (e1, ev1) = (errors.clone(), events.clone());
    let client: Client = ClientBuilder::new(app.url())
        .transport_type(TransportType::Websocket)
        .auth(auth)
        .reconnect(false)
        .on(Event::Error, move |p: Payload, _c: Client| {
            let errors = e1.clone();
            async move {
                let text = match p {
                    Payload::Text(v) => v
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => format!("{other:?}"),
                };
                errors.lock().unwrap().push(text);
            }
            .boxed()
        })
        .on_any(move |event: Event, _p: Payload, _c: Client| {
            let events = ev1.clone();
            async move { events.lock().unwrap().push(String::from(event)) }.boxed()
        })
        .connect()
        .await
        .expect("the Engine.IO connection opens");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answered = !errors.lock().unwrap().is_empty()
            || events.lock().unwrap().iter().any(|e| e == "session:init");
        if answered || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Anything sent after the refusal would arrive now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.disconnect().await;
    let errors = errors.lock().unwrap().clone();
    let events = events.lock().unwrap().clone();
    Outcome { errors, events }
}

/// Asserts the handshake with `auth` is refused with `reason`, seen by the client and counted
/// once.
async fn assert_refused(app: &TestApp, auth: Value, reason: &str) {
    let before = refused(app, reason).await;
    let outcome = attempt(app, auth.clone()).await;
    let message = format!("unauthorized: {reason}");
    assert!(
        outcome
            .errors
            .iter()
            .any(|e| e.contains("ConnectError")
                && e.contains(&format!("{{\"message\":\"{message}\"}}"))),
        "{auth}: expected a connect_error {message:?}, got errors {:?}, events {:?}",
        outcome.errors,
        outcome.events
    );
    assert!(
        outcome.events.is_empty(),
        "{auth}: a refused client got {:?}",
        outcome.events
    );
    assert_eq!(refused(app, reason).await - before, 1.0, "{auth}: counted");
}

#[tokio::test]
async fn with_auth_off_any_or_no_token_connects_as_before() {
    let app = TestApp::spawn().await;
    for auth in [
        json!({"guestId": "alice", "token": "not.a.jwt"}),
        json!({"guestId": "alice", "token": hs256(json!({"sub": "mallory", "exp": 1}))}),
        json!({"guestId": "alice"}),
    ] {
        let c = TestClient::connect_with_auth(&app, auth.clone()).await;
        assert_eq!(
            c.wait_for("session:init").await,
            json!({"userId": "alice", "userType": "guest"}),
            "{auth}"
        );
    }
    // No auth object at all, or a bad guestId: a fresh UUID, never a refusal (D1).
    let c = TestClient::connect_with_auth(&app, json!({"token": 42})).await;
    let init = c.wait_for("session:init").await;
    assert!(uuid::Uuid::parse_str(init["userId"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn with_hs256_a_valid_token_connects_as_its_sub() {
    let app = TestApp::spawn_with(hs256_settings(Some("flux"))).await;
    let token = hs256(json!({"sub": "user-42", "aud": "flux", "exp": in_a_minute()}));
    // The guestId is ignored once a token is verified.
    let c = TestClient::connect_with_auth(&app, json!({"token": token, "guestId": "alice"})).await;
    assert_eq!(
        c.wait_for("session:init").await,
        json!({"userId": "user-42", "userType": "guest"})
    );
    c.emit_empty("getUserId").await;
    assert_eq!(c.wait_for("userUniqueId").await, json!("user-42"));
}

#[tokio::test]
async fn with_hs256_bad_handshakes_are_refused_and_counted() {
    let _counted = COUNTED.lock().await;
    let app = TestApp::spawn_with(hs256_settings(Some("flux"))).await;
    let exp = in_a_minute();
    let cases = [
        (json!({"guestId": "alice"}), "missing"),
        (json!({"token": "not.a.jwt"}), "malformed"),
        (
            json!({"token": hs256_with(json!({"sub": "a", "aud": "flux", "exp": exp}), "another secret, also 32 bytes long!")}),
            "signature",
        ),
        // Expired beyond the 30 s default leeway.
        (
            json!({"token": hs256(json!({"sub": "a", "aud": "flux", "exp": get_current_timestamp() - 120}))}),
            "expired",
        ),
        (
            json!({"token": hs256(json!({"sub": "a", "aud": "flux", "exp": exp, "nbf": get_current_timestamp() + 120}))}),
            "not_yet_valid",
        ),
        (
            json!({"token": hs256(json!({"sub": "a", "aud": "other", "exp": exp}))}),
            "claims",
        ),
        // A sub that would not pass as a guest id.
        (
            json!({"token": hs256(json!({"sub": "   ", "aud": "flux", "exp": exp}))}),
            "claims",
        ),
    ];
    for (auth, reason) in cases {
        assert_refused(&app, auth, reason).await;
    }
    // The gateway still serves valid clients after the refusals.
    let token = hs256(json!({"sub": "bob", "aud": "flux", "exp": exp}));
    let c = TestClient::connect_with_auth(&app, json!({ "token": token })).await;
    assert_eq!(c.wait_for("session:init").await["userId"], "bob");
}

#[tokio::test]
async fn with_rs256_a_token_of_the_key_pair_connects_and_another_keys_is_refused() {
    let _counted = COUNTED.lock().await;
    let mut settings = Settings::default();
    settings.auth.jwt_algorithm = JwtAlgorithm::RS256;
    settings.auth.jwt_key_file = Some(fixture_path("rs256_public.pem"));
    settings.auth.jwt_issuer = Some("https://id.example".into());
    let app = TestApp::spawn_with(settings).await;
    let claims = json!({"sub": "carol", "iss": "https://id.example", "exp": in_a_minute()});

    let token = rs256(claims.clone(), "rs256_private.pem");
    let c = TestClient::connect_with_auth(&app, json!({ "token": token })).await;
    assert_eq!(c.wait_for("session:init").await["userId"], "carol");

    let forged = rs256(claims.clone(), "other_private.pem");
    assert_refused(&app, json!({ "token": forged }), "signature").await;
    // An HS256 token signed with the public key as the secret (algorithm confusion).
    let public = std::fs::read_to_string(fixture_path("rs256_public.pem")).unwrap();
    let confused = hs256_with(claims.clone(), &public);
    assert_refused(&app, json!({ "token": confused }), "signature").await;
    let wrong_issuer = json!({"sub": "carol", "iss": "https://evil.example", "exp": in_a_minute()});
    let token = rs256(wrong_issuer, "rs256_private.pem");
    assert_refused(&app, json!({ "token": token }), "claims").await;
}
