//! Who may call what (docs/configuration.md, Access control): client API keys with their
//! model allow-lists and limits, and the admin token. Secrets are held only as digests
//! (`secret`); limits are budgets (`budget`) kept per key (`limits`).
//!
//! The relay and the admin listener ask here and answer a refusal in their own protocol's shape;
//! nothing here writes a response.

mod budget;
mod limits;
mod secret;

use std::sync::Arc;
use std::time::Duration;

pub use self::budget::retry_after_secs;
pub use self::limits::{Limit, Limited, Limiter};
pub use self::secret::SecretDigest;
use crate::config::{AdminConfig, KeyConfig};

/// The credential of `Authorization: Bearer <credential>`; the scheme's case does not matter.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// Keys are configured and the call presents none.
    NoKey,
    UnknownKey,
    ModelNotAllowed {
        key: String,
        model: String,
    },
    Limited {
        key: String,
        limited: Limited,
    },
    /// The call needs the admin token and the config has none.
    AdminTokenUnset,
    /// The call needs the admin token and does not present it.
    AdminTokenMissing,
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::NoKey | Denied::UnknownKey | Denied::AdminTokenMissing => 401,
            Denied::ModelNotAllowed { .. } | Denied::AdminTokenUnset => 403,
            Denied::Limited { .. } => 429,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Denied::NoKey => {
                "this proxy needs an API key: send it as Authorization: Bearer <key>".into()
            }
            Denied::UnknownKey => "invalid API key".into(),
            Denied::ModelNotAllowed { key, model } => {
                format!("key {key:?} may not use model {model:?}")
            }
            Denied::Limited { key, limited } => format!(
                "key {key:?} is past its {} limit of {}; retry in {} s",
                limited.limit.setting(),
                limited.size,
                retry_after_secs(limited.retry_after)
            ),
            Denied::AdminTokenUnset => "this call needs the admin token and none is configured: set admin.token (or admin.token_sha256) in the proxy's config".into(),
            Denied::AdminTokenMissing => {
                "this call needs the admin token: send Authorization: Bearer <admin token>".into()
            }
        }
    }

    /// OpenAI's `code` for this refusal.
    pub fn openai_code(&self) -> &'static str {
        match self {
            Denied::NoKey | Denied::UnknownKey => "invalid_api_key",
            Denied::ModelNotAllowed { .. } => "model_not_allowed",
            Denied::Limited { .. } => "rate_limit_exceeded",
            Denied::AdminTokenUnset | Denied::AdminTokenMissing => "admin_token_required",
        }
    }

    /// `Retry-After` for a limit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Denied::Limited { limited, .. } => Some(limited.retry_after),
            _ => None,
        }
    }
}

/// The key a client API call presents: `Ok(None)` when no keys are configured (the API is open).
/// Every configured key is compared, so the time taken says nothing about which one matched.
pub fn identify<'a>(
    keys: &'a [Arc<KeyConfig>],
    headers: &http::HeaderMap,
) -> Result<Option<&'a Arc<KeyConfig>>, Denied> {
    if keys.is_empty() {
        return Ok(None);
    }
    let presented = SecretDigest::of(bearer(headers).ok_or(Denied::NoKey)?);
    let mut found = None;
    for key in keys {
        if key.digest.matches(&presented) {
            found = Some(key);
        }
    }
    found.map(Some).ok_or(Denied::UnknownKey)
}

/// Whether a call that needs the admin token presents it.
pub fn check_admin(admin: &AdminConfig, headers: &http::HeaderMap) -> Result<(), Denied> {
    let token = admin.token.as_ref().ok_or(Denied::AdminTokenUnset)?;
    let presented = bearer(headers).ok_or(Denied::AdminTokenMissing)?;
    if token.matches(&SecretDigest::of(presented)) {
        Ok(())
    } else {
        Err(Denied::AdminTokenMissing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyLimits;

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(value) = auth {
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).unwrap_or(http::HeaderValue::from_static("")),
            );
        }
        h
    }

    fn key(id: &str, secret: &str) -> Arc<KeyConfig> {
        Arc::new(KeyConfig {
            id: id.into(),
            digest: SecretDigest::of(secret),
            models: Some(vec!["llama3.2:3b".into()]),
            limits: KeyLimits::default(),
        })
    }

    #[test]
    fn bearer_reads_the_credential_whatever_the_scheme_case() {
        assert_eq!(bearer(&headers(Some("Bearer sk-1"))), Some("sk-1"));
        assert_eq!(bearer(&headers(Some("bearer  sk-1 "))), Some("sk-1"));
        assert_eq!(bearer(&headers(Some("Basic dXNlcjpwdw=="))), None);
        assert_eq!(bearer(&headers(Some("Bearer "))), None);
        assert_eq!(bearer(&headers(None)), None);
    }

    #[test]
    fn identify_finds_the_key_or_says_why_not() {
        let keys = [key("team-a", "sk-a"), key("team-b", "sk-b")];
        let found = identify(&keys, &headers(Some("Bearer sk-b")));
        assert_eq!(found.ok().flatten().map(|k| &*k.id), Some("team-b"));
        assert_eq!(
            identify(&keys, &headers(Some("Bearer sk-c"))),
            Err(Denied::UnknownKey)
        );
        assert_eq!(identify(&keys, &headers(None)), Err(Denied::NoKey));
        assert_eq!(identify(&[], &headers(None)), Ok(None));
    }

    #[test]
    fn allow_list() {
        let k = key("team-a", "sk-a");
        assert!(k.allows("llama3.2:3b"));
        assert!(!k.allows("qwen3:8b"));
        let open = KeyConfig {
            models: None,
            ..(*k).clone()
        };
        assert!(open.allows("qwen3:8b"));
        let latest = KeyConfig {
            models: Some(vec!["llama3.2:latest".into(), "qwen3".into()]),
            ..(*k).clone()
        };
        assert!(latest.allows("llama3.2"));
        assert!(latest.allows("qwen3:latest"));
        assert!(!latest.allows("qwen3:8b"));
    }

    #[test]
    fn admin_token() {
        let mut admin = AdminConfig::default();
        assert_eq!(
            check_admin(&admin, &headers(Some("Bearer x"))),
            Err(Denied::AdminTokenUnset)
        );
        admin.token = Some(SecretDigest::of("adm"));
        assert_eq!(check_admin(&admin, &headers(Some("Bearer adm"))), Ok(()));
        assert_eq!(
            check_admin(&admin, &headers(Some("Bearer nope"))),
            Err(Denied::AdminTokenMissing)
        );
        assert_eq!(
            check_admin(&admin, &headers(None)),
            Err(Denied::AdminTokenMissing)
        );
        assert!(Denied::AdminTokenUnset.message().contains("admin.token"));
    }
}
