//! Checks of the names and addresses a config holds, which its types cannot express.
//!
//! Serde proves that `url` is a string; this proves that it is an address a gateway can
//! send to, that no id or model name carries control characters (a terminal escape in
//! an id would be replayed on every screen that prints a decision), and that names and
//! patterns are not empty. They run before anything is built, so each error points at
//! the key that holds the text.

use crate::config::{Config, ConfigError, Seg, Source};

/// Why `text` cannot be a name: empty, or holding a control character.
fn bad_name(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("is empty")
    } else if text.chars().any(char::is_control) {
        Some("contains a control character (a terminal escape, a tab or a line break)")
    } else {
        None
    }
}

/// Why `text` is not a URL a backend can be reached at.
fn bad_url(text: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some("is empty".to_owned());
    }
    // The URL parser drops tabs and line breaks silently; the config should not hold them.
    if text.chars().any(char::is_control) {
        return Some("contains a control character".to_owned());
    }
    if !text.contains("://") {
        let hint = if text.contains(char::is_whitespace) {
            String::new()
        } else {
            format!("; did you mean 'http://{text}'?")
        };
        return Some(format!("is not an http or https URL{hint}"));
    }
    match url::Url::parse(text) {
        Err(e) => Some(format!("is not a URL ({e})")),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Some(format!(
            "has scheme '{}'; backends are reached over http or https",
            url.scheme()
        )),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => Some("has no host".to_owned()),
        Ok(_) => None,
    }
}

/// Refuses bad ids, model names, URLs, alias names and policy patterns.
pub(crate) fn check(source: &Source<'_>, config: &Config) -> Result<(), ConfigError> {
    for (index, backend) in config.backends.iter().enumerate() {
        let at = |key: &'static str| [Seg::Key("backends"), Seg::Index(index), Seg::Key(key)];
        // An empty id has its own error where ids are checked for uniqueness.
        if let Some(problem) = bad_name(&backend.id).filter(|_| !backend.id.is_empty()) {
            return Err(source.error(
                &at("id"),
                format!("backend {index}: id '{}' {problem}", backend.id),
                Some("use letters, digits and - _ . : / in ids".to_owned()),
            ));
        }
        if let Some(problem) = bad_url(&backend.url) {
            return Err(source.error(
                &at("url"),
                format!("backend '{}': url '{}' {problem}", backend.id, backend.url),
                Some(
                    "write the address the backend listens on, e.g. url = \"http://127.0.0.1:11434\""
                        .to_owned(),
                ),
            ));
        }
        for (model_index, model) in backend.models.iter().enumerate() {
            // An empty model name has its own error, with the fleet's other model checks.
            if let Some(problem) = bad_name(&model.name).filter(|_| !model.name.is_empty()) {
                return Err(source.error(
                    &[
                        Seg::Key("backends"),
                        Seg::Index(index),
                        Seg::Key("models"),
                        Seg::Index(model_index),
                        Seg::Key("name"),
                    ],
                    format!(
                        "backend '{}': model name '{}' {problem}",
                        backend.id, model.name
                    ),
                    Some("write the name requests ask for, e.g. name = \"llama3:70b\"".to_owned()),
                ));
            }
        }
    }
    let routing = &config.routing;
    for (alias, target) in &routing.aliases {
        let at = [Seg::Key("routing"), Seg::Key("aliases"), Seg::Key(alias)];
        if let Some(problem) = bad_name(alias) {
            return Err(source.error(
                &at,
                format!("alias name '{alias}' {problem}"),
                Some("name the alias the way clients will ask for it, e.g. \"gpt-4\" = \"llama3:70b\"".to_owned()),
            ));
        }
        if let Some(problem) = bad_name(target) {
            return Err(source.error(
                &at,
                format!("alias '{alias}' points at '{target}', which {problem}"),
                Some("point the alias at a served model or another alias".to_owned()),
            ));
        }
    }
    for (model, targets) in &routing.fallbacks {
        let at = [Seg::Key("routing"), Seg::Key("fallbacks"), Seg::Key(model)];
        let problem = bad_name(model).map(|p| format!("model name '{model}' {p}"));
        let problem = problem.or_else(|| {
            targets.iter().find_map(|target| {
                bad_name(target).map(|p| format!("fallback '{target}' of '{model}' {p}"))
            })
        });
        if let Some(problem) = problem {
            return Err(source.error(
                &at,
                problem,
                Some("name served models or aliases".to_owned()),
            ));
        }
    }
    for (index, policy) in routing.policies.iter().enumerate() {
        if let Some(problem) = bad_name(&policy.model_pattern) {
            return Err(source.error(
                &[
                    Seg::Key("routing"),
                    Seg::Key("policies"),
                    Seg::Index(index),
                    Seg::Key("model_pattern"),
                ],
                format!(
                    "policy {index}: model_pattern '{}' {problem}, so it matches no request",
                    policy.model_pattern
                ),
                Some("match model names with a glob, e.g. model_pattern = \"gpt-4*\"; \"*\" matches every name".to_owned()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_addresses_with_a_host() {
        for good in [
            "http://127.0.0.1:11434",
            "https://api.example.com/v1",
            "http://[::1]:8000",
            "http://gpu-box",
        ] {
            assert_eq!(bad_url(good), None, "{good}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("not a url at all", "is not an http or https URL"),
            (
                "127.0.0.1:11434",
                "is not an http or https URL; did you mean 'http://127.0.0.1:11434'?",
            ),
            (
                "localhost:11434",
                "is not an http or https URL; did you mean",
            ),
            ("ftp://example.com", "has scheme 'ftp'"),
            ("http://", "is not a URL"),
            ("unix:///var/run/x.sock", "has scheme 'unix'"),
            ("http://:80", "is not a URL"),
            ("http://a\tb", "contains a control character"),
        ] {
            let problem = bad_url(bad).unwrap_or_default();
            assert!(problem.starts_with(why), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn names_must_be_printable_and_not_empty() {
        assert_eq!(bad_name("llama3:70b"), None);
        assert_eq!(bad_name("modèle-été"), None);
        assert_eq!(bad_name(""), Some("is empty"));
        assert!(bad_name("a\u{1b}[31mred").is_some());
        assert!(bad_name("a\u{7}").is_some());
        assert!(bad_name("line\nbreak").is_some());
    }
}
