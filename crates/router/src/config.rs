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

use nexus_core::{policy::TrafficPolicy, stage::ErrorPolicy, BackendSpec};
use serde::Deserialize;

use crate::wording::{printable, split_fix, syntax_error, type_error, with_suggestion};

/// The built-in example: two local servers and a cloud API, a restricted policy.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// The name the built-in example is reported under.
pub const EXAMPLE_CONFIG_NAME: &str = "<built-in example>";

/// The largest config file read, in bytes (4 MiB): far above any real fleet, and a
/// bound on what a wrong path (a log, a disk image) costs before it is refused.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the config file at `path`: a regular file of at most [`MAX_CONFIG_BYTES`] in
/// UTF-8. A FIFO or a device (`/dev/zero`) is refused before it is opened, since
/// reading one could block or never end.
pub(crate) fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let name = path.display().to_string();
    let error = |message: String, help: &str| ConfigError {
        file: name.clone(),
        position: None,
        message,
        help: Some(help.to_owned()),
    };
    let cannot_read = |e: std::io::Error| {
        error(
            format!("cannot read the config file: {e}"),
            "check the path given to --config",
        )
    };
    let metadata = std::fs::metadata(path).map_err(cannot_read)?;
    if !metadata.is_file() {
        let what = if metadata.is_dir() {
            "a directory"
        } else {
            "not a regular file (a pipe, socket or device)"
        };
        return Err(error(
            format!("the config path is {what}"),
            "give --config a TOML file",
        ));
    }
    let too_large = || {
        error(
            format!("the config file is larger than {MAX_CONFIG_BYTES} bytes (4 MiB), the most nexus reads"),
            "check the path: a routing config is a few kilobytes",
        )
    };
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    // The file may grow between the check and the read: read one byte past the cap.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The prefix is valid UTF-8, so its line and column are those of the bad byte.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        ConfigError {
            file: name.clone(),
            position: Some(Source::new(&name, prefix).line_col(valid)),
            message: format!(
                "the file is not valid UTF-8: byte 0x{:02x} at byte offset {valid}",
                bytes[valid]
            ),
            help: Some("save the file as UTF-8".to_owned()),
        }
    })
}

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
    /// The `[server]` table, read by `nexus serve`.
    #[serde(default)]
    pub server: crate::ServerConfig,
    /// The `[health]` table, read by `nexus serve`.
    #[serde(default)]
    pub health: crate::HealthConfig,
    /// The `[[tenants]]` tables: with any, a gateway serves only requests with a
    /// tenant's key.
    #[serde(default)]
    pub tenants: Vec<crate::TenantConfig>,
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
        let file = printable(&self.file);
        let message = printable(&self.message);
        match self.position {
            Some((line, column)) => write!(f, "{file}:{line}:{column}: {message}")?,
            None => write!(f, "{file}: {message}")?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {}", printable(help))?;
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
        let file = printable(&self.file);
        let message = printable(&self.message);
        match self.position {
            Some((line, column)) => write!(f, "{file}:{line}:{column}: warning: {message}"),
            None => write!(f, "{file}: warning: {message}"),
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

    /// Parses the text into a [`Config`], or a located error with a suggestion; a value
    /// of the wrong type is named by its key, with the type it takes.
    pub(crate) fn parse(&self) -> Result<Config, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let key = e.span().and_then(|s| self.key_path_at(s.start));
            let (message, help) = match key
                .as_deref()
                .and_then(|key| type_error(key, e.message()).map(|m| (key, m)))
            {
                Some((key, (message, help))) => (format!("{key}: {message}"), Some(help)),
                None => match with_suggestion(e.message()) {
                    (message, None) => syntax_error(&message),
                    found => found,
                },
            };
            ConfigError {
                file: self.name.to_owned(),
                position: e.span().map(|s| self.line_col(s.start)),
                message,
                help,
            }
        })
    }

    fn document(&self) -> Option<&toml_edit::ImDocument<&'a str>> {
        self.document
            .get_or_init(|| toml_edit::ImDocument::parse(self.text).ok())
            .as_ref()
    }

    /// The dotted path (`backends[1].priority`) of the innermost value at `offset`.
    pub(crate) fn key_path_at(&self, offset: usize) -> Option<String> {
        fn in_value(value: &toml_edit::Value, offset: usize, path: String) -> Option<String> {
            if !value.span().is_some_and(|s| s.contains(&offset)) {
                return None;
            }
            let inner = match value {
                toml_edit::Value::Array(array) => array
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| in_value(v, offset, format!("{path}[{i}]"))),
                toml_edit::Value::InlineTable(table) => table
                    .iter()
                    .find_map(|(k, v)| in_value(v, offset, join(&path, k))),
                _ => None,
            };
            Some(inner.unwrap_or(path))
        }
        fn in_table(table: &toml_edit::Table, offset: usize, path: &str) -> Option<String> {
            table.iter().find_map(|(key, item)| {
                let path = join(path, key);
                match item {
                    toml_edit::Item::Value(value) => in_value(value, offset, path),
                    toml_edit::Item::Table(table) => in_table(table, offset, &path),
                    toml_edit::Item::ArrayOfTables(array) => array
                        .iter()
                        .enumerate()
                        .find_map(|(i, table)| in_table(table, offset, &format!("{path}[{i}]"))),
                    toml_edit::Item::None => None,
                }
            })
        }
        fn join(path: &str, key: &str) -> String {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        }
        in_table(self.document()?.as_table(), offset, "")
    }

    /// Whether every step of `path` exists in the document.
    pub(crate) fn contains(&self, path: &[Seg<'_>]) -> bool {
        let Some(document) = self.document() else {
            return false;
        };
        let mut item = Some(Node::Item(document.as_item()));
        for seg in path {
            let Some(node) = item else { return false };
            item = node.step(*seg).0;
        }
        item.is_some()
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
        let document = self.document()?;
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
        let (message, help) = match help {
            Some(help) => (message.into(), Some(help)),
            None => split_fix(message.into()),
        };
        ConfigError {
            file: self.name.to_owned(),
            position: self.locate(path),
            message,
            help,
        }
    }

    /// A stage's `[routing.<kind>]` error, at the key it is about: the key its message
    /// starts with (the convention of `BuildError::InvalidSettings`) or the unknown
    /// field it names; else at the table.
    pub(crate) fn settings_error(&self, kind: &str, message: &str) -> ConfigError {
        let message = message.trim();
        let mut path = vec![Seg::Key("routing"), Seg::Key(kind)];
        // The message leads with the key it is about, bare or in backticks.
        let lead_raw = message.split([' ', ':', ',']).next().unwrap_or_default();
        let lead = lead_raw.trim_matches('`');
        let lead_path = parse_path(lead);
        let mut key = None;
        let mut rest = message;
        if !lead_path.is_empty() && self.contains(&[&path[..], &lead_path[..]].concat()) {
            path.extend(lead_path);
            key = Some(lead);
            // "key: what" is a prefix; "key is ..." is a sentence that keeps its subject.
            if let Some(after) = message[lead_raw.len()..].strip_prefix(": ") {
                rest = after;
            }
        } else if let Some(n) = (1..lead_path.len())
            .rev()
            .find(|n| self.contains(&[&path[..], &lead_path[..*n]].concat()))
        {
            // A missing key of a sub-table (`redis.url is missing`): at that table.
            path.extend_from_slice(&lead_path[..n]);
        }
        let (mut text, help) = match key.and_then(|key| type_error(key, rest)) {
            Some((text, help)) => (text, Some(help)),
            None => match with_suggestion(rest) {
                (text, None) => split_fix(text),
                found => found,
            },
        };
        if let Some(field) = rest
            .strip_prefix("unknown field `")
            .and_then(|t| t.split('`').next())
        {
            path.push(Seg::Key(field));
        }
        if rest.len() != message.len() {
            text = format!("{}: {text}", key.unwrap_or_default());
        }
        ConfigError {
            file: self.name.to_owned(),
            position: self.locate(&path),
            message: format!("[routing.{kind}]: {text}"),
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

/// `a.b[0].c` as steps; empty for an empty text.
fn parse_path(text: &str) -> Vec<Seg<'_>> {
    let mut path = Vec::new();
    for part in text.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            path.push(Seg::Key(key));
        }
        for index in pieces {
            match index.strip_suffix(']').and_then(|i| i.parse().ok()) {
                Some(i) => path.push(Seg::Index(i)),
                None => return Vec::new(),
            }
        }
    }
    path
}

fn first_key_span(table: &toml_edit::Table) -> Option<Range<usize>> {
    table
        .iter()
        .filter_map(|(k, _)| table.key(k).and_then(|k| k.span()))
        .min_by_key(|r| r.start)
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
