//! The recovery session id: [`SessionClaims`] signed with HMAC-SHA256, so that no session
//! store is shared between replicas.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a recovery session id says, signed by the replica that issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The user id of the session (the handshake identity).
    #[serde(rename = "u")]
    pub user_id: String,
    /// Not valid after this time (ms since the Unix epoch).
    #[serde(rename = "e")]
    pub expires_ms: u64,
    /// Random, so that two sessions of one user never share an id.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a session id is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

impl TokenError {
    pub const ALL: [Self; 3] = [Self::Malformed, Self::BadSignature, Self::Expired];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_token",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
        }
    }
}

const TOKEN_PREFIX: &str = "r1.";
/// Longest session id accepted from a client.
const MAX_TOKEN_CHARS: usize = 1024;

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(TOKEN_PREFIX.as_bytes());
    mac.update(body.as_bytes());
    mac
}

impl SessionClaims {
    /// The session id: `r1.<base64url JSON claims>.<base64url HMAC-SHA256>`.
    pub fn sign(&self, secret: &[u8]) -> String {
        let json = serde_json::to_vec(self).expect("claims serialise");
        let body = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(secret, &body).finalize().into_bytes();
        format!("{TOKEN_PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a session id's signature (in constant time) and expiry.
    ///
    /// # Errors
    /// A [`TokenError`] saying why it is refused.
    pub fn verify(token: &str, secret: &[u8], now_ms: u64) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        mac(secret, body)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Self = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_ms < now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_is_accepted_only_with_its_signature_and_before_its_expiry() {
        let claims = SessionClaims {
            user_id: "guest-1".into(),
            expires_ms: 10_000,
            nonce: "abc".into(),
        };
        let token = claims.sign(b"secret");
        assert_eq!(
            SessionClaims::verify(&token, b"secret", 9_999),
            Ok(claims.clone())
        );
        assert_eq!(
            SessionClaims::verify(&token, b"other", 9_999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            SessionClaims::verify(&token, b"secret", 10_001),
            Err(TokenError::Expired)
        );
        // One character changed anywhere: refused.
        for i in TOKEN_PREFIX.len()..token.len() {
            let mut forged = token.clone().into_bytes();
            forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert!(
                SessionClaims::verify(&forged, b"secret", 0).is_err(),
                "{forged}"
            );
        }
        for bad in ["", "r1.", "r1.x.y", "xyz", &"r".repeat(2000)] {
            assert_eq!(
                SessionClaims::verify(bad, b"secret", 0),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }
}
