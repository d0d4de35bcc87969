//! A secret (an API key, the admin token) as the proxy holds it: only its SHA-256, so a config
//! dump, a `Debug` print or a core file never shows the secret itself, and an operator may write
//! the digest instead of the secret into the file.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        SecretDigest(Sha256::digest(secret.as_bytes()).into())
    }

    /// A digest written as 64 hex digits (`sha256sum`'s output), either case.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut digest).ok()?;
        Some(SecretDigest(digest))
    }

    /// Whether `presented` is this secret. The comparison takes the same time wherever the
    /// digests differ, so timing tells a caller nothing about how close a guess was.
    pub fn matches(&self, presented: &Self) -> bool {
        self.0.ct_eq(&presented.0).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_its_own_digest_and_its_hex_form() {
        let key = SecretDigest::of("sk-team-a");
        assert!(key.matches(&SecretDigest::of("sk-team-a")));
        assert!(!key.matches(&SecretDigest::of("sk-team-b")));
        // What `printf %s sk-team-a | sha256sum` prints, in either case.
        let hex_of_key = "8879f6a4ae35c420a15d35fed3b8dd07577207803d404f6d4cc4fa829dafa910";
        assert_eq!(SecretDigest::from_hex(hex_of_key), Some(key.clone()));
        let parsed = SecretDigest::from_hex(&hex_of_key.to_uppercase());
        assert_eq!(parsed, Some(key.clone()));
        assert_eq!(SecretDigest::from_hex("abc"), None);
        assert_eq!(SecretDigest::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn debug_never_shows_the_digest() {
        let shown = format!("{:?}", SecretDigest::of("sk-secret"));
        assert_eq!(shown, "SecretDigest(redacted)");
    }
}
