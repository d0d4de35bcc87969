//! Ollama's model names: `llama3.2` is `llama3.2:latest`; a name is case-sensitive otherwise.
//! Nodes list their models with the tag (`/api/tags`), while clients often leave it out.

/// Whether two names are the same model as Ollama reads them.
pub fn same(a: &str, b: &str) -> bool {
    let untagged_is = |plain: &str, tagged: &str| tagged.strip_suffix(":latest") == Some(plain);
    a == b
        || match (tag_of(a), tag_of(b)) {
            (None, Some("latest")) => untagged_is(a, b),
            (Some("latest"), None) => untagged_is(b, a),
            _ => false,
        }
}

/// What `get` finds under `name`, else under its other spelling: the one rule for looking a
/// client's model name up in anything keyed by the names nodes list (or an operator wrote).
pub fn find<T>(name: &str, get: impl Fn(&str) -> Option<T>) -> Option<T> {
    get(name).or_else(|| get(other_spelling(name)?.as_ref()))
}

/// The same model written the other way (`llama3.2` ↔ `llama3.2:latest`); `None` for a name
/// with another tag. Only looked up where the name itself is not found.
fn other_spelling(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    match tag_of(name) {
        None => Some(std::borrow::Cow::Owned(format!("{name}:latest"))),
        Some("latest") => name.strip_suffix(":latest").map(std::borrow::Cow::Borrowed),
        Some(_) => None,
    }
}

/// The tag after the last `/` (a `:` inside a registry host's port is not one).
fn tag_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map(|(_, tag)| tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tag_is_latest() {
        assert!(same("llama3.2", "llama3.2:latest"));
        assert!(same("llama3.2:3b", "llama3.2:3b"));
        assert!(!same("llama3.2:3b", "llama3.2"));
        assert!(same("host:5000/ns/m", "host:5000/ns/m:latest"));
        assert!(!same("Llama3.2", "llama3.2"));
    }

    #[test]
    fn the_other_spelling_adds_or_drops_latest_only() {
        assert_eq!(
            other_spelling("llama3.2").as_deref(),
            Some("llama3.2:latest")
        );
        assert_eq!(
            other_spelling("llama3.2:latest").as_deref(),
            Some("llama3.2")
        );
        assert_eq!(other_spelling("llama3.2:3b"), None);
        assert_eq!(
            other_spelling("host:5000/ns/m").as_deref(),
            Some("host:5000/ns/m:latest")
        );
        assert_eq!(
            other_spelling("host:5000/ns/m:latest").as_deref(),
            Some("host:5000/ns/m")
        );
        assert_eq!(other_spelling("host:5000/ns/m:q4"), None);
    }
}
