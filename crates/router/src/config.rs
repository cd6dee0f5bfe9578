//! The TOML configuration: its schema, and errors that point at `FILE:LINE:COLUMN`.
//!
//! Parsing happens in two passes over the same text. `toml` + serde turn it into a
//! [`Config`] (unknown keys are errors, with the closest known key suggested); then
//! building the fleet, policies, aliases and stages validates the meaning. Errors of
//! the second pass carry a path (`routing.policies[2].model_pattern`) that is located
//! in the text with `toml_edit`'s spans, so that every error names its line.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use nexus_core::{BackendSpec, ErrorPolicy, TrafficPolicy};
use serde::Deserialize;

/// The built-in example: two local servers and a cloud API, a restricted policy.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// The name the built-in example is reported under.
pub const EXAMPLE_CONFIG_NAME: &str = "<built-in example>";

/// The keys of `[routing]` other than stage settings.
pub(crate) const ROUTING_KEYS: [&str; 5] =
    ["pipeline", "aliases", "fallbacks", "policies", "on_error"];

/// A whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[[backends]]` tables.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// The `[routing]` table.
    #[serde(default)]
    pub routing: RoutingConfig,
}

/// The `[routing]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RoutingConfig {
    /// Stage kinds in order; `None` means every built-in stage compiled in.
    #[serde(default)]
    pub pipeline: Option<Vec<String>>,
    /// `[routing.aliases]`: requested name -> model or another alias.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// `[routing.fallbacks]`: model -> models to try in order.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// `[[routing.policies]]`, in declaration order.
    #[serde(default)]
    pub policies: Vec<TrafficPolicy>,
    /// `[routing.on_error]`: stage kind -> `fail_open` | `fail_closed`.
    #[serde(default)]
    pub on_error: BTreeMap<String, ErrorPolicy>,
    /// Every other `[routing.<kind>]` table: the settings of stage `<kind>`.
    #[serde(flatten)]
    pub stages: BTreeMap<String, toml::Value>,
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<built-in example>`).
    pub file: String,
    /// 1-based line and column, when the error has a place in the text.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Something valid but probably not meant, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file.
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What looks wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: warning: {}",
                self.file, self.message
            ),
            None => write!(f, "{}: warning: {}", self.file, self.message),
        }
    }
}

/// One step of a path into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The text of a configuration and its name, for parsing and for locating errors.
#[derive(Debug, Clone)]
pub(crate) struct Source<'a> {
    pub(crate) name: &'a str,
    pub(crate) text: &'a str,
    /// The span-keeping parse, made only when an error or warning needs a position:
    /// a valid config is parsed once.
    document: std::cell::OnceCell<Option<toml_edit::ImDocument<&'a str>>>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(name: &'a str, text: &'a str) -> Self {
        Self {
            name,
            text,
            document: std::cell::OnceCell::new(),
        }
    }

    /// Parses the text into a [`Config`], or a located error with a suggestion.
    pub(crate) fn parse(&self) -> Result<Config, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let (message, help) = with_suggestion(e.message());
            ConfigError {
                file: self.name.to_owned(),
                position: e.span().map(|s| self.line_col(s.start)),
                message,
                help,
            }
        })
    }

    /// 1-based line and column of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, column)
    }

    /// The position of the deepest part of `path` that exists in the document.
    pub(crate) fn locate(&self, path: &[Seg<'_>]) -> Option<(usize, usize)> {
        let document = self
            .document
            .get_or_init(|| toml_edit::ImDocument::parse(self.text).ok())
            .as_ref()?;
        let mut best: Option<Range<usize>> = None;
        let mut item = Some(Node::Item(document.as_item()));
        for seg in path {
            let Some(node) = item else { break };
            let (next, span) = node.step(*seg);
            if span.is_some() {
                best = span;
            }
            item = next;
        }
        best.map(|r| self.line_col(r.start))
    }

    /// A located error at `path`.
    pub(crate) fn error(
        &self,
        path: &[Seg<'_>],
        message: impl Into<String>,
        help: Option<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.name.to_owned(),
            position: self.locate(path),
            message: message.into(),
            help,
        }
    }

    /// A located warning at `path`.
    pub(crate) fn warning(&self, path: &[Seg<'_>], message: impl Into<String>) -> ConfigWarning {
        ConfigWarning {
            file: self.name.to_owned(),
            position: self.locate(path),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d toml_edit::Item),
    Value(&'d toml_edit::Value),
    Table(&'d toml_edit::Table),
}

impl<'d> Node<'d> {
    /// Follows one step; returns the child and the best span for it (its key for a key
    /// step, itself for an index step).
    fn step(self, seg: Seg<'_>) -> (Option<Node<'d>>, Option<Range<usize>>) {
        use toml_edit::{Item, Value};
        match (self, seg) {
            (Node::Item(Item::Table(t)) | Node::Table(t), Seg::Key(k)) => {
                let span = t.key(k).and_then(|k| k.span()).or_else(|| t.span());
                (t.get(k).map(Node::Item), span)
            }
            (
                Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)),
                Seg::Key(k),
            ) => {
                let span = t.key(k).and_then(|k| k.span()).or_else(|| t.span());
                (t.get(k).map(Node::Value), span)
            }
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => match a.get(i) {
                Some(t) => (Some(Node::Table(t)), t.span().or_else(|| first_key_span(t))),
                None => (None, a.span()),
            },
            (
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)),
                Seg::Index(i),
            ) => match a.get(i) {
                Some(v) => (Some(Node::Value(v)), v.span()),
                None => (None, a.span()),
            },
            _ => (None, None),
        }
    }
}

fn first_key_span(table: &toml_edit::Table) -> Option<Range<usize>> {
    table
        .iter()
        .filter_map(|(k, _)| table.key(k).and_then(|k| k.span()))
        .min_by_key(|r| r.start)
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant" messages.
pub(crate) fn with_suggestion(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_owned();
    for kind in ["unknown field", "unknown variant"] {
        let Some(rest) = message.strip_prefix(kind) else {
            continue;
        };
        let mut quoted = rest.split('`').skip(1).step_by(2);
        let Some(given) = quoted.next() else { break };
        let expected: Vec<&str> = quoted.collect();
        let help = match nexus_core::closest(given, expected.iter().copied()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_get_the_closest_key() {
        let source = Source::new(
            "f.toml",
            "[[backends]]\nid = \"a\"\nurl = \"u\"\nzon = \"local\"\n",
        );
        let err = source.parse().unwrap_err();
        assert_eq!(err.position, Some((4, 1)));
        assert!(err.message.contains("unknown field `zon`"), "{err}");
        assert_eq!(err.help.as_deref(), Some("did you mean `zone`?"));
        assert!(
            err.to_string()
                .starts_with("f.toml:4:1: unknown field `zon`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_variants_get_the_closest_value() {
        let source = Source::new(
            "f.toml",
            "[[backends]]\nid = \"a\"\nurl = \"u\"\nzone = \"clod\"\n",
        );
        let err = source.parse().unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(4));
        assert_eq!(err.help.as_deref(), Some("did you mean `cloud`?"));
    }

    #[test]
    fn paths_locate_keys_tables_and_elements() {
        let text = "[[backends]]\nid = \"a\"\n\n[[backends]]\nid = \"b\"\npriority = 0\n\n[routing]\npipeline = [\"analyzer\", \"shceduler\"]\n\n[routing.aliases]\n\"gpt-4\" = \"x\"\n";
        let source = Source::new("f.toml", text);
        assert_eq!(
            source.locate(&[Seg::Key("backends"), Seg::Index(1), Seg::Key("priority")]),
            Some((6, 1))
        );
        assert_eq!(
            source
                .locate(&[Seg::Key("backends"), Seg::Index(1)])
                .map(|p| p.0),
            Some(4)
        );
        assert_eq!(
            source.locate(&[Seg::Key("routing"), Seg::Key("pipeline"), Seg::Index(1)]),
            Some((9, 25))
        );
        assert_eq!(
            source.locate(&[Seg::Key("routing"), Seg::Key("aliases"), Seg::Key("gpt-4")]),
            Some((12, 1))
        );
        // A missing key falls back to the deepest part that exists.
        assert_eq!(
            source
                .locate(&[Seg::Key("routing"), Seg::Key("aliases"), Seg::Key("nope")])
                .map(|p| p.0),
            Some(11)
        );
    }

    #[test]
    fn the_example_parses() {
        let config = Source::new(EXAMPLE_CONFIG_NAME, EXAMPLE_CONFIG)
            .parse()
            .unwrap();
        assert_eq!(config.backends.len(), 3);
    }
}
