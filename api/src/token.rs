//! Tokens: join tokens for enrolling replicas, bearer tokens for users.
//!
//! ```text
//! atoll-join.<secret: 64 hex>.<CA fingerprint: SHA-256 of the CA certificate, 64 hex>
//! atoll-user.<secret: 64 hex>
//! ```
//!
//! The secret is 32 random bytes; the gateway stores only its SHA-256 (a fast hash is right for a
//! high-entropy secret). The join token also pins the CA: a replica that has no certificate yet
//! checks that the gateway's CA has this fingerprint before it trusts anything from it.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::rand::SystemRandom;

const JOIN_PREFIX: &str = "atoll-join.";
const USER_PREFIX: &str = "atoll-user.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an atoll {kind} token (expected {expected}...)")]
    WrongKind { kind: &'static str, expected: &'static str },
    #[error("malformed {kind} token: {detail}")]
    Malformed { kind: &'static str, detail: &'static str },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// 32 random bytes from the system RNG, as hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).expect("the system random number generator failed");
    hex(&bytes)
}

/// SHA-256 of a secret, as stored by the gateway.
pub fn hash_secret(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// SHA-256 of DER bytes (the CA fingerprint a join token pins).
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, der).as_ref())
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_fingerprint", &self.ca_fingerprint).finish_non_exhaustive()
    }
}

impl JoinToken {
    pub fn encode(&self) -> String {
        format!("{JOIN_PREFIX}{}.{}", self.secret, self.ca_fingerprint)
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(JOIN_PREFIX)
            .ok_or(TokenError::WrongKind { kind: "join", expected: JOIN_PREFIX })?;
        let (secret, ca) =
            rest.split_once('.').ok_or(TokenError::Malformed { kind: "join", detail: "missing the CA fingerprint" })?;
        if !is_hex64(secret) {
            return Err(TokenError::Malformed { kind: "join", detail: "the secret is not 64 lowercase hex digits" });
        }
        if !is_hex64(ca) {
            return Err(TokenError::Malformed {
                kind: "join",
                detail: "the CA fingerprint is not 64 lowercase hex digits",
            });
        }
        Ok(Self { secret: secret.to_string(), ca_fingerprint: ca.to_string() })
    }
}

/// Whether `name` may name a user token: 1 to 63 of letters, digits, `.`, `_`, `-`, `@`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// A user bearer token.
pub fn new_user_token() -> (String, String) {
    let secret = new_secret();
    (format!("{USER_PREFIX}{secret}"), secret)
}

/// The secret of a user bearer token.
pub fn parse_user_token(text: &str) -> Result<String, TokenError> {
    let secret =
        text.trim().strip_prefix(USER_PREFIX).ok_or(TokenError::WrongKind { kind: "user", expected: USER_PREFIX })?;
    if !is_hex64(secret) {
        return Err(TokenError::Malformed { kind: "user", detail: "the secret is not 64 lowercase hex digits" });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_pin_the_ca() {
        let token = JoinToken { secret: new_secret(), ca_fingerprint: fingerprint(b"ca der") };
        let parsed = JoinToken::parse(&token.encode()).unwrap();
        assert_eq!(parsed, token);
        assert!(!format!("{parsed:?}").contains(&token.secret), "Debug must not show the secret");
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        assert!(matches!(JoinToken::parse("atoll-user.x"), Err(TokenError::WrongKind { .. })));
        assert!(matches!(JoinToken::parse("atoll-join.abc"), Err(TokenError::Malformed { .. })));
        let good = new_secret();
        let err = JoinToken::parse(&format!("atoll-join.{good}.xyz")).unwrap_err();
        assert!(err.to_string().contains("CA fingerprint"), "{err}");
        assert!(parse_user_token(&format!("atoll-join.{good}")).is_err());
        let (token, secret) = new_user_token();
        assert_eq!(parse_user_token(&token).unwrap(), secret);
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(hash_secret("a"), hash_secret("a"));
        assert_ne!(hash_secret("a"), hash_secret("b"));
        assert_eq!(hash_secret("a").len(), 64);
    }
}
