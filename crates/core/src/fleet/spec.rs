//! The config schema of a fleet: [`BackendSpec`] and [`ModelSpec`] (the `[[backends]]`
//! and `[[backends.models]]` tables of the config file), the [`Zone`] and [`BackendKind`]
//! they name, and the [`FleetError`]s found when checking them.

use std::fmt;

use serde::Deserialize;

use super::BackendStatus;
use crate::Features;

/// Where a backend runs, which decides what data may be sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    /// On the operator's own machine or network.
    Local,
    /// On infrastructure the operator controls (a private cloud, a VPC).
    Private,
    /// A third-party API.
    Cloud,
}

impl Zone {
    /// The zone as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Zone::Local => "local",
            Zone::Private => "private",
            Zone::Cloud => "cloud",
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
/// The protocol a backend speaks, which tells a gateway how to check its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// An OpenAI-compatible server: vLLM, llama.cpp, LM Studio, OpenAI and every
    /// OpenAI-compatible cloud API.
    #[default]
    Openai,
    /// Ollama: its OpenAI-compatible routes for traffic, `/api/tags` and `/api/ps` for
    /// health and the models it has loaded.
    Ollama,
}

impl BackendKind {
    /// The kind as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendKind::Openai => "openai",
            BackendKind::Ollama => "ollama",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const fn default_priority() -> u32 {
    1
}

const fn default_max_concurrency() -> u32 {
    16
}

/// One backend as configured: the `[[backends]]` table of the config file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Unique id, used in decisions and rejections.
    pub id: String,
    /// Where the backend listens, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    /// The protocol it speaks (`type` in config); default `openai`.
    #[serde(default, rename = "type")]
    pub kind: BackendKind,
    /// The environment variable that holds its API key, sent to it (and only to it) as
    /// `Authorization: Bearer`; the key itself never appears in config.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Where it runs; a missing zone is treated as [`Zone::Cloud`].
    #[serde(default)]
    pub zone: Option<Zone>,
    /// Relative weight in scoring; must be greater than zero. Default 1.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Default capability tier of its models. Default 0.
    #[serde(default)]
    pub tier: Option<u8>,
    /// Requests it serves at once before it counts as saturated. Default 16.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Initial health.
    #[serde(default)]
    pub status: BackendStatus,
    /// The models it serves.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

impl BackendSpec {
    /// A healthy backend with default settings and no models; chain the `with_*` setters.
    ///
    /// ```
    /// use nexus_core::{BackendSpec, ModelSpec, Zone};
    /// let spec = BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
    ///     .with_zone(Zone::Local)
    ///     .with_model(ModelSpec::new("llama3:70b").with_tier(3));
    /// assert_eq!(spec.models.len(), 1);
    /// ```
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            kind: BackendKind::Openai,
            api_key_env: None,
            zone: None,
            priority: default_priority(),
            tier: None,
            max_concurrency: default_max_concurrency(),
            status: BackendStatus::Healthy,
            models: Vec::new(),
        }
    }

    /// Sets the protocol it speaks.
    pub fn with_kind(mut self, kind: BackendKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the environment variable that holds its API key.
    pub fn with_api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: Zone) -> Self {
        self.zone = Some(zone);
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the default tier of its models.
    pub fn with_tier(mut self, tier: u8) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets the concurrency limit.
    pub fn with_max_concurrency(mut self, max: u32) -> Self {
        self.max_concurrency = max;
        self
    }

    /// Sets the initial status.
    pub fn with_status(mut self, status: BackendStatus) -> Self {
        self.status = status;
        self
    }

    /// Adds a served model.
    pub fn with_model(mut self, model: ModelSpec) -> Self {
        self.models.push(model);
        self
    }
}

/// One model served by a backend: the `[[backends.models]]` table of the config file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model name requests ask for, e.g. `llama3:70b`.
    pub name: String,
    /// Capability tier; overrides the backend's tier.
    #[serde(default)]
    pub tier: Option<u8>,
    /// Maximum input plus output tokens.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Accepts images.
    #[serde(default)]
    pub vision: bool,
    /// Supports tool calls.
    #[serde(default)]
    pub tools: bool,
    /// Supports a JSON response mode.
    #[serde(default)]
    pub json_mode: bool,
    /// Price of input in USD per million tokens (0 for local servers).
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price of output in USD per million tokens (0 for local servers).
    #[serde(default)]
    pub output_usd_per_mtok: f64,
}

impl ModelSpec {
    /// A free model with no declared capabilities.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tier: None,
            context_window: None,
            vision: false,
            tools: false,
            json_mode: false,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
        }
    }

    /// Sets the tier.
    pub fn with_tier(mut self, tier: u8) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets the context window.
    pub fn with_context_window(mut self, tokens: u32) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// Declares the features it supports.
    pub fn with_features(mut self, features: Features) -> Self {
        self.vision = features.contains(Features::VISION);
        self.tools = features.contains(Features::TOOLS);
        self.json_mode = features.contains(Features::JSON_MODE);
        self
    }

    /// Sets the prices in USD per million input and output tokens.
    pub fn with_prices(mut self, input_usd_per_mtok: f64, output_usd_per_mtok: f64) -> Self {
        self.input_usd_per_mtok = input_usd_per_mtok;
        self.output_usd_per_mtok = output_usd_per_mtok;
        self
    }
}

/// The highest price a model may have, in USD per million tokens: a dollar a token,
/// hundreds of times the dearest API of today. At this price a request of `u32::MAX`
/// input and output tokens costs under $8.6 billion, which budgets counting integer
/// nano-dollars in an `i64` still hold, so that no price can make a cost infinite or
/// overflow a ledger.
pub const MAX_USD_PER_MTOK: f64 = 1e6;

/// What is wrong with a set of [`BackendSpec`]s. `index` is the backend's position in
/// the list (the n-th `[[backends]]` table, from 0).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Two backends share an id.
    #[error("backend id '{id}' is used twice (backends {first} and {index}); give each backend a unique id")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Index of the first backend with it.
        first: usize,
        /// Index of the second.
        index: usize,
    },
    /// A backend has an empty id.
    #[error("backend {index} has an empty id; give every backend a unique, non-empty id")]
    EmptyId {
        /// The backend's index.
        index: usize,
    },
    /// Priority 0.
    #[error("backend '{id}': priority must be greater than 0 (scores are proportional to it); use 1 for the default weight")]
    ZeroPriority {
        /// The backend's id.
        id: String,
        /// The backend's index.
        index: usize,
    },
    /// `max_concurrency` 0.
    #[error("backend '{id}': max_concurrency must be greater than 0; the default is 16")]
    ZeroConcurrency {
        /// The backend's id.
        id: String,
        /// The backend's index.
        index: usize,
    },
    /// A model listed twice on one backend, or with an empty name.
    #[error("backend '{id}': model '{model}' {problem}")]
    InvalidModel {
        /// The backend's id.
        id: String,
        /// The backend's index.
        index: usize,
        /// The model's index within the backend.
        model_index: usize,
        /// The model's name.
        model: String,
        /// What is wrong, as a sentence fragment with the fix.
        problem: &'static str,
    },
    /// A price that is negative, not a number, or above [`MAX_USD_PER_MTOK`].
    #[error("backend '{id}': model '{model}' has {key} = {price}; a price is USD per million tokens, from 0 (local servers) to {MAX_USD_PER_MTOK} (a dollar a token)")]
    InvalidPrice {
        /// The backend's id.
        id: String,
        /// The backend's index.
        index: usize,
        /// The model's index within the backend.
        model_index: usize,
        /// The model's name.
        model: String,
        /// The key: `input_usd_per_mtok` or `output_usd_per_mtok`.
        key: &'static str,
        /// The price given.
        price: f64,
    },
    /// More backends than the fleet can index.
    #[error("a fleet holds at most {max} backends; split the fleet across routers")]
    TooManyBackends {
        /// The limit.
        max: usize,
    },
}

impl FleetError {
    /// The index of the backend the error is about, if any.
    pub fn backend_index(&self) -> Option<usize> {
        match self {
            FleetError::DuplicateId { index, .. }
            | FleetError::EmptyId { index }
            | FleetError::ZeroPriority { index, .. }
            | FleetError::ZeroConcurrency { index, .. }
            | FleetError::InvalidModel { index, .. }
            | FleetError::InvalidPrice { index, .. } => Some(*index),
            FleetError::TooManyBackends { .. } => None,
        }
    }
}
