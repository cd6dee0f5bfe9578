//! How config errors are worded: the closest known key or value, what a type means,
//! the usual fix for a TOML syntax error, and text made safe to print.
//!
//! serde and toml say what went wrong in their terms ("expected u32"); an operator
//! needs the key, what it takes, and a line to copy. These turn one into the other.

/// `text` with control characters (terminal escapes among them) written as escapes, so
/// that a message quoting the config cannot drive the terminal it is printed on; line
/// breaks stay.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            '\n' => "\n".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// How the pipeline's own Rejects word their fix in a router built from config: they
/// name the config's tables (core's defaults name the pipeline builder's calls).
pub(crate) const FIX_TEXTS: nexus_core::pipeline::FixTexts = nexus_core::pipeline::FixTexts {
    unknown_model: |model| {
        format!("add a backend that serves '{model}', or an alias in [routing.aliases]")
    },
    failed_stage: |kind| {
        format!("fix what the error names, or set [routing.on_error] {kind} = \"fail_open\" to skip the stage when it fails")
    },
};

/// Errors of the engine's crates read "what is wrong; how to fix it": the fix becomes
/// the `help:` line.
pub(crate) fn split_fix(message: String) -> (String, Option<String>) {
    match message.rsplit_once("; ") {
        Some((what, fix)) if !what.is_empty() && !fix.is_empty() => {
            (what.to_owned(), Some(fix.to_owned()))
        }
        _ => (message, None),
    }
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant" messages, and what to add to "missing field" ones.
pub(crate) fn with_suggestion(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_owned();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let help = format!("add `{field} = ...` to this table; it has no default");
        return (message, Some(help));
    }
    for kind in ["unknown field", "unknown variant"] {
        let Some(rest) = message.strip_prefix(kind) else {
            continue;
        };
        let mut quoted = rest.split('`').skip(1).step_by(2);
        let Some(given) = quoted.next() else { break };
        let expected: Vec<&str> = quoted.collect();
        let help = match nexus_core::routes::closest(given, expected.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None if !expected.is_empty() => format!(
                "use one of {}",
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "remove it".to_owned(),
        };
        return (message, Some(help));
    }
    (message, None)
}

/// A TOML syntax error on one line, with the usual fix.
pub(crate) fn syntax_error(message: &str) -> (String, Option<String>) {
    let message = message.trim().replace('\n', ", ");
    let help = if message.starts_with("invalid string") {
        "put the value in double quotes, e.g. id = \"gpu-box\""
    } else if message.starts_with("invalid basic string") {
        "end the string with a double quote on the same line"
    } else if message.starts_with("duplicate key") {
        "a key may appear once in a table: remove or rename one of them"
    } else if message.starts_with("invalid table header") {
        "write a table header as [name] or [[name]] on a line of its own"
    } else {
        "compare with the keys and values described in docs/configuration.md"
    };
    (message, Some(help.to_owned()))
}

/// What a serde type name means in a config, and a value of it.
fn describe_type(expected: &str) -> Option<(&'static str, &'static str)> {
    Some(match expected {
        "u8" => ("a whole number from 0 to 255", "3"),
        "u16" => ("a whole number from 0 to 65535", "8"),
        "u32" => ("a whole number from 0 to 4294967295", "8"),
        "u64" | "usize" => ("a whole number of 0 or more", "60"),
        "i8" | "i16" | "i32" | "i64" | "isize" => ("a whole number", "1"),
        "f32" | "f64" => ("a number", "0.5"),
        "a boolean" => ("true or false", "true"),
        "a string" | "a borrowed string" | "path string" => ("a string in quotes", "\"...\""),
        "a sequence" => ("an array", "[\"...\"]"),
        "a map" => ("a table", "{ ... }"),
        s if s.starts_with("struct ") => ("a table", "{ ... }"),
        _ => return None,
    })
}

/// serde's "invalid type: string \"x\", expected u32" for the value of `key` (a dotted
/// path), as "expected <what it takes>, found <what was there>" and a help line with an
/// example; `None` for other messages.
pub(crate) fn type_error(key: &str, message: &str) -> Option<(String, String)> {
    let message = message.trim();
    let name = key.rsplit('.').next().unwrap_or(key);
    let name = name.split('[').next().unwrap_or(name);
    // toml's words for a value of a choice (a zone, an action) that is not a string.
    if message == "wanted string or table" {
        return Some((
            "expected one of its names in quotes".to_owned(),
            format!("{name} takes a string in quotes, e.g. {name} = \"...\"; see docs/configuration.md for its values"),
        ));
    }
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.rsplit_once(", expected ")?;
    match describe_type(expected) {
        Some((what, example)) => Some((
            format!("expected {what}, found {found}"),
            format!("{name} takes {what}, e.g. {name} = {example}"),
        )),
        None => Some((
            format!("expected {expected}, found {found}"),
            format!("{name} takes {expected}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_line_breaks_kept() {
        assert!(matches!(
            printable("plain\ntext"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\u{1b}[31mb\tc\nd"), "a\\u{1b}[31mb\\tc\nd");
    }

    #[test]
    fn type_errors_say_what_the_key_takes() {
        assert_eq!(
            type_error(
                "backends[0].priority",
                "invalid type: string \"x\", expected u32"
            ),
            Some((
                "expected a whole number from 0 to 4294967295, found string \"x\"".to_owned(),
                "priority takes a whole number from 0 to 4294967295, e.g. priority = 8".to_owned()
            ))
        );
        assert_eq!(
            type_error(
                "a.b[2]",
                "invalid type: integer `1`, expected something odd"
            )
            .map(|(_, help)| help),
            Some("b takes something odd".to_owned())
        );
        assert_eq!(type_error("k", "unknown field `x`"), None);
    }

    #[test]
    fn a_fix_after_a_semicolon_becomes_the_help() {
        assert_eq!(
            split_fix("got 75; did you mean 0.75?".to_owned()),
            ("got 75".to_owned(), Some("did you mean 0.75?".to_owned()))
        );
        assert_eq!(split_fix("no fix".to_owned()), ("no fix".to_owned(), None));
    }
}
