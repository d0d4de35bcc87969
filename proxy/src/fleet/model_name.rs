//! Ollama's model names: `llama3.2` is `llama3.2:latest`; a name is case-sensitive otherwise.

/// Whether two names are the same model as Ollama reads them.
pub fn same(a: &str, b: &str) -> bool {
    with_tag(a) == with_tag(b)
}

/// The name with its tag, `:latest` where none is written (a `:` inside a registry host's
/// port does not count: the tag follows the last `/`).
fn with_tag(name: &str) -> std::borrow::Cow<'_, str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{name}:latest"))
    }
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
}
