//! Test fleets, written as the config an operator writes.
//!
//! The tests of this crate each need a few `[[backends]]` entries, tailored to what they
//! check (a price here, a status or a concurrency limit there). [`Backend`] writes one
//! entry in the config's own syntax from the few facts a test cares about, and [`fleet`]
//! joins them, so that a test states its fleet in a line per backend and appends the
//! `[routing.*]` tables it is about.
#![allow(dead_code, unreachable_pub)]

use std::fmt::{self, Display, Write};

/// One `[[backends]]` entry.
#[derive(Clone, Debug)]
pub struct Backend {
    id: String,
    url: String,
    zone: Option<&'static str>,
    keys: Vec<(&'static str, String)>,
    models: Vec<Model>,
}

/// One `[[backends.models]]` entry of a backend.
#[derive(Clone, Debug)]
struct Model {
    name: String,
    keys: Vec<(&'static str, String)>,
}

/// A backend at `url`, with no zone and no models yet.
pub fn backend(id: &str, url: &str) -> Backend {
    Backend {
        id: id.to_owned(),
        url: url.to_owned(),
        zone: None,
        keys: Vec::new(),
        models: Vec::new(),
    }
}

/// A local backend (`zone = "local"`) at `http://127.0.0.1:<port>`.
pub fn local(id: &str, port: u16) -> Backend {
    backend(id, &format!("http://127.0.0.1:{port}")).zone("local")
}

/// A cloud backend (`zone = "cloud"`) at `https://api.example.com`.
pub fn cloud(id: &str) -> Backend {
    backend(id, "https://api.example.com").zone("cloud")
}

/// The entries, one after another, as a config's `[[backends]]` part.
pub fn fleet<I: IntoIterator<Item = Backend>>(backends: I) -> String {
    backends
        .into_iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Backend {
    /// `zone = "<zone>"`.
    pub fn zone(mut self, zone: &'static str) -> Self {
        self.zone = Some(zone);
        self
    }

    /// `priority = <n>`.
    pub fn priority(self, n: u32) -> Self {
        self.key("priority", n)
    }

    /// `max_concurrency = <n>`.
    pub fn max_concurrency(self, n: u32) -> Self {
        self.key("max_concurrency", n)
    }

    /// The backend's default `tier = <n>` for its models.
    pub fn tier(self, n: u8) -> Self {
        self.key("tier", n)
    }

    /// `status = "<status>"` (`unhealthy`, `loading`, ...).
    pub fn status(self, status: &str) -> Self {
        self.key("status", format!("\"{status}\""))
    }

    /// Any other key, its value written as TOML (`"text"` quoted by the caller).
    pub fn key(mut self, key: &'static str, value: impl Display) -> Self {
        self.keys.push((key, value.to_string()));
        self
    }

    /// Serves `name`, free.
    pub fn serves(mut self, name: &str) -> Self {
        self.models.push(Model {
            name: name.to_owned(),
            keys: Vec::new(),
        });
        self
    }

    /// Serves `name` at `tier`.
    pub fn serves_at_tier(self, name: &str, tier: u8) -> Self {
        self.serves(name).model_key("tier", tier)
    }

    /// Serves `name` at `input` USD per million input tokens and, when given, `output`
    /// per million output tokens.
    pub fn serves_priced(self, name: &str, input: f64, output: Option<f64>) -> Self {
        let priced = self
            .serves(name)
            .model_key("input_usd_per_mtok", format!("{input:?}"));
        match output {
            Some(output) => priced.model_key("output_usd_per_mtok", format!("{output:?}")),
            None => priced,
        }
    }

    /// A key of the model added last, its value written as TOML.
    pub fn model_key(mut self, key: &'static str, value: impl Display) -> Self {
        let model = self.models.last_mut().expect("a model to set the key of");
        model.keys.push((key, value.to_string()));
        self
    }
}

impl Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = format!(
            "[[backends]]\nid = \"{}\"\nurl = \"{}\"\n",
            self.id, self.url
        );
        if let Some(zone) = self.zone {
            writeln!(text, "zone = \"{zone}\"")?;
        }
        for (key, value) in &self.keys {
            writeln!(text, "{key} = {value}")?;
        }
        for model in &self.models {
            writeln!(text, "  [[backends.models]]\n  name = \"{}\"", model.name)?;
            for (key, value) in &model.keys {
                writeln!(text, "  {key} = {value}")?;
            }
        }
        f.write_str(&text)
    }
}
