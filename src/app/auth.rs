//! Optional connection authentication (D25): the handshake's `auth.token` verified as a JWT,
//! whose `sub` becomes the user id. Off unless `auth.jwt_key_file` is set. No Socket.IO types
//! here: the adapter's connect middleware calls it through the [`Authenticate`] port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::identity;
use crate::ports::{AuthRefusal as Refusal, Authenticate};
use crate::telemetry::metrics::AUTH_REFUSED;
use crate::telemetry::throttle::{LOG_BURST, LOG_PERIOD, LogThrottle};

/// Optional connection authentication (D25): on when `jwt_key_file` is set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AuthSettings {
    /// `HS256` (the key file holds a shared secret) or `RS256` (a PEM public key).
    pub jwt_algorithm: JwtAlgorithm,
    /// The verification key; none (the default) leaves connections unauthenticated (D1).
    pub jwt_key_file: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    #[serde(alias = "hs256")]
    HS256,
    #[serde(alias = "rs256")]
    RS256,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// Largest `auth.leeway`: clock skew between the token issuer and the gateway, which a
/// longer value would turn into a longer life for every token.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Shortest HS256 secret: RFC 7518 §3.2 wants a key at least as long as the hash (256 bits).
pub const MIN_HS256_SECRET: usize = 32;

/// A verification key with the claims it requires.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// `None` when auth is off (no `auth.jwt_key_file`).
    ///
    /// # Errors
    /// Names the key, the file and the fix: unreadable file, a secret too short, a key that
    /// does not fit the algorithm, issuer or audience given without a key.
    pub fn from_settings(s: &AuthSettings) -> anyhow::Result<Option<Self>> {
        if s.leeway > MAX_LEEWAY {
            anyhow::bail!(
                "auth.leeway: must be at most {} (clock skew, not a token's life), got {}",
                humantime_serde::re::humantime::format_duration(MAX_LEEWAY),
                humantime_serde::re::humantime::format_duration(s.leeway)
            );
        }
        for (key, value) in [
            ("jwt_issuer", &s.jwt_issuer),
            ("jwt_audience", &s.jwt_audience),
        ] {
            match value.as_deref() {
                Some("") => anyhow::bail!(
                    "auth.{key}: is empty; give the expected value or unset FLUX_AUTH__{}",
                    key.to_uppercase()
                ),
                Some(_) if s.jwt_key_file.is_none() => anyhow::bail!(
                    "auth.{key}: is set but auth.jwt_key_file is not, so connections would not be authenticated; set FLUX_AUTH__JWT_KEY_FILE or unset FLUX_AUTH__{}",
                    key.to_uppercase()
                ),
                _ => {}
            }
        }
        let Some(path) = &s.jwt_key_file else {
            return Ok(None);
        };
        let key = read_key(path, s.jwt_algorithm)?;
        let algorithm = match s.jwt_algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = s.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &s.jwt_issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &s.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self { key, validation }))
    }

    /// The user id a token stands for: its `sub`, checked like a guest id (D10).
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<String, Refusal> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| refusal_of(e.kind()))?;
        data.claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(identity::accept_user_id)
            .ok_or(Refusal::Claims)
    }
}

/// The user id for a handshake's `auth` object: the verified `auth.token`'s `sub`.
///
/// # Errors
/// Why the handshake is refused.
pub fn authenticate(auth: Option<&Value>, verifier: &TokenVerifier) -> Result<String, Refusal> {
    match auth.and_then(|a| a.get("token")) {
        None | Some(Value::Null) => Err(Refusal::Missing),
        Some(Value::String(t)) if t.is_empty() => Err(Refusal::Missing),
        Some(Value::String(t)) => verifier.verify(t),
        Some(_) => Err(Refusal::Malformed),
    }
}

/// [`authenticate`] with its refusals counted (`flux_auth_refused_total{reason}`) and logged
/// (rate-limited per reason).
pub struct Authenticator {
    verifier: TokenVerifier,
    refusal_log: LogThrottle<&'static str>,
}

impl Authenticator {
    /// `None` when auth is off.
    ///
    /// # Errors
    /// As for [`TokenVerifier::from_settings`].
    pub fn from_settings(s: &AuthSettings) -> anyhow::Result<Option<Self>> {
        Ok(TokenVerifier::from_settings(s)?.map(|verifier| Self {
            verifier,
            refusal_log: LogThrottle::new(LOG_BURST, LOG_PERIOD),
        }))
    }
}

impl Authenticate for Authenticator {
    fn admit(&self, auth: Option<&Value>, ip: Option<&str>) -> Result<String, Refusal> {
        authenticate(auth, &self.verifier).inspect_err(|refusal| {
            let reason = refusal.reason();
            metrics::counter!(AUTH_REFUSED, "reason" => reason).increment(1);
            if let Some(held_back) = self.refusal_log.admit(&reason) {
                tracing::warn!(reason, ip, held_back, "connection refused: bad auth.token");
            }
        })
    }
}

/// Declares `flux_auth_refused_total` at zero for every reason (also with auth off: nothing
/// is refused then, and the dashboard shows it).
pub fn declare_metrics() {
    for refusal in Refusal::ALL {
        metrics::counter!(AUTH_REFUSED, "reason" => refusal.reason()).increment(0);
    }
}

/// The refusal a token verification error stands for.
fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::Signature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_) => Refusal::Claims,
        _ => Refusal::Malformed,
    }
}

fn read_key(path: &Path, algorithm: JwtAlgorithm) -> anyhow::Result<DecodingKey> {
    let shown = path.display();
    let content = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "auth.jwt_key_file: cannot read {shown}: {e} (check FLUX_AUTH__JWT_KEY_FILE and the file's permissions)"
        )
    })?;
    let content = content.trim();
    let is_pem = content.starts_with("-----BEGIN");
    match algorithm {
        JwtAlgorithm::HS256 if is_pem => anyhow::bail!(
            "auth.jwt_key_file: {shown} holds a PEM key but auth.jwt_algorithm is HS256; set FLUX_AUTH__JWT_ALGORITHM=RS256 for a public key, or write the shared secret into the file"
        ),
        JwtAlgorithm::HS256 if content.len() < MIN_HS256_SECRET => anyhow::bail!(
            "auth.jwt_key_file: {shown} holds {} bytes after trimming; an HS256 secret needs at least {MIN_HS256_SECRET} (e.g. `openssl rand -hex 32`)",
            content.len()
        ),
        JwtAlgorithm::HS256 => Ok(DecodingKey::from_secret(content.as_bytes())?),
        JwtAlgorithm::RS256 if !is_pem => anyhow::bail!(
            "auth.jwt_key_file: {shown} is not a PEM key but auth.jwt_algorithm is RS256; give the issuer's RSA public key (-----BEGIN PUBLIC KEY-----), or set FLUX_AUTH__JWT_ALGORITHM=HS256 for a shared secret"
        ),
        JwtAlgorithm::RS256 if content.contains("PRIVATE KEY-----") => anyhow::bail!(
            "auth.jwt_key_file: {shown} holds a private key; give only the public key (`openssl rsa -in KEY -pubout`), the gateway never signs"
        ),
        JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(content.as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "auth.jwt_key_file: {shown} is not an RSA public key in PEM ({e}); with auth.jwt_algorithm RS256 give the issuer's RSA public key"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A new file per call: tests run in parallel, and one rewriting a file another is
    /// reading made that one see it empty.
    fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flux-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{n}-{name}"));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn settings(path: &Path, algorithm: JwtAlgorithm) -> AuthSettings {
        AuthSettings {
            jwt_algorithm: algorithm,
            jwt_key_file: Some(path.to_owned()),
            ..AuthSettings::default()
        }
    }

    fn error(s: &AuthSettings) -> String {
        match TokenVerifier::from_settings(s) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        encode(&Header::default(), &claims, &key).unwrap()
    }

    fn hs256() -> TokenVerifier {
        let path = temp_file("hs.key", &format!("  {SECRET}\n"));
        TokenVerifier::from_settings(&settings(&path, JwtAlgorithm::HS256))
            .unwrap()
            .expect("on")
    }

    #[test]
    fn auth_is_off_without_a_key_file() {
        assert!(
            TokenVerifier::from_settings(&AuthSettings::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn key_file_problems_name_the_key_the_file_and_the_fix() {
        let missing = std::env::temp_dir().join("flux-auth-no-such-file");
        let err = error(&settings(&missing, JwtAlgorithm::HS256));
        assert!(
            err.contains("auth.jwt_key_file")
                && err.contains("flux-auth-no-such-file")
                && err.contains("FLUX_AUTH__JWT_KEY_FILE"),
            "{err}"
        );

        let short = temp_file("short.key", "tooshort\n");
        let err = error(&settings(&short, JwtAlgorithm::HS256));
        assert!(
            err.contains("short.key") && err.contains("at least 32"),
            "{err}"
        );

        let pem = temp_file(
            "pub.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        );
        let err = error(&settings(&pem, JwtAlgorithm::HS256));
        assert!(err.contains("pub.pem") && err.contains("RS256"), "{err}");

        let secret = temp_file("secret.key", SECRET);
        let err = error(&settings(&secret, JwtAlgorithm::RS256));
        assert!(
            err.contains("secret.key") && err.contains("not a PEM") && err.contains("HS256"),
            "{err}"
        );

        let bad_pem = temp_file(
            "bad.pem",
            "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        );
        let err = error(&settings(&bad_pem, JwtAlgorithm::RS256));
        assert!(
            err.contains("bad.pem") && err.contains("RSA public key"),
            "{err}"
        );

        let private = temp_file(
            "private.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let err = error(&settings(&private, JwtAlgorithm::RS256));
        assert!(
            err.contains("private.pem") && err.contains("-pubout"),
            "{err}"
        );
    }

    #[test]
    fn issuer_or_audience_without_a_key_is_an_error() {
        let s = AuthSettings {
            jwt_audience: Some("flux".into()),
            ..AuthSettings::default()
        };
        let err = error(&s);
        assert!(err.contains("auth.jwt_audience") && err.contains("FLUX_AUTH__JWT_KEY_FILE"));
    }

    #[test]
    fn a_valid_token_gives_its_trimmed_sub() {
        let v = hs256();
        let token = sign(json!({"sub": " alice ", "exp": now() + 60}));
        assert_eq!(
            authenticate(Some(&json!({ "token": token, "guestId": "g" })), &v),
            Ok("alice".into())
        );
    }

    #[test]
    fn each_bad_token_has_its_reason() {
        let v = hs256();
        let exp = now() + 60;
        let other = EncodingKey::from_secret(b"another secret, another secret!!").unwrap();
        let forged = encode(&Header::default(), &json!({"sub": "a", "exp": exp}), &other).unwrap();
        let cases = [
            (json!({}), Refusal::Missing),
            (json!({ "token": null }), Refusal::Missing),
            (json!({ "token": "" }), Refusal::Missing),
            (json!({ "token": 42 }), Refusal::Malformed),
            (json!({ "token": "not.a.jwt" }), Refusal::Malformed),
            (json!({ "token": forged }), Refusal::Signature),
            (
                json!({ "token": sign(json!({"sub": "a", "exp": now() - 120})) }),
                Refusal::Expired,
            ),
            (
                json!({ "token": sign(json!({"sub": "a", "exp": exp, "nbf": now() + 120})) }),
                Refusal::NotYetValid,
            ),
            (
                json!({ "token": sign(json!({"sub": "a"})) }),
                Refusal::Claims,
            ),
            (
                json!({ "token": sign(json!({"exp": exp})) }),
                Refusal::Claims,
            ),
            (
                json!({ "token": sign(json!({"sub": 7, "exp": exp})) }),
                Refusal::Claims,
            ),
            (
                json!({ "token": sign(json!({"sub": "x".repeat(129), "exp": exp})) }),
                Refusal::Claims,
            ),
        ];
        for (auth, want) in cases {
            assert_eq!(authenticate(Some(&auth), &v), Err(want), "{auth}");
        }
        assert_eq!(authenticate(None, &v), Err(Refusal::Missing));
    }

    #[test]
    fn leeway_applies_to_expiry() {
        let path = temp_file("leeway.key", SECRET);
        let mut s = settings(&path, JwtAlgorithm::HS256);
        s.leeway = Duration::from_secs(30);
        let v = TokenVerifier::from_settings(&s).unwrap().unwrap();
        let just_expired = sign(json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(v.verify(&just_expired), Ok("a".into()));
        s.leeway = Duration::ZERO;
        let v = TokenVerifier::from_settings(&s).unwrap().unwrap();
        assert_eq!(v.verify(&just_expired), Err(Refusal::Expired));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let path = temp_file("claims.key", SECRET);
        let mut s = settings(&path, JwtAlgorithm::HS256);
        s.jwt_issuer = Some("https://id.example".into());
        s.jwt_audience = Some("flux".into());
        let v = TokenVerifier::from_settings(&s).unwrap().unwrap();
        let exp = now() + 60;
        let good =
            sign(json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "flux"}));
        assert_eq!(v.verify(&good), Ok("a".into()));
        for claims in [
            json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "flux"}),
            json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "other"}),
            json!({"sub": "a", "exp": exp, "aud": "flux"}),
        ] {
            assert_eq!(
                v.verify(&sign(claims.clone())),
                Err(Refusal::Claims),
                "{claims}"
            );
        }
    }
}
