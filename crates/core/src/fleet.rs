//! The [`Fleet`]: every backend, the models each one serves, and their live state.
//!
//! A fleet is built once from [`BackendSpec`]s (what the config file says) and is then
//! read-only apart from each backend's [`LiveState`], which is a handful of atomics so
//! that decisions read it without locks while route guards update it. The model index
//! (model name -> [`BackendSet`] of its servers, plus each server's [`Offering`]) is
//! computed here so that a decision starts from a precomputed bitset.

use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::{BackendId, BackendSet, Features, ModelId};

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

/// A backend's health as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum BackendStatus {
    /// Serving requests.
    #[default]
    Healthy = 0,
    /// Up, but loading a model: requests routed to it wait (a Queue decision).
    Loading = 1,
    /// Down: not admitted as a candidate.
    Unhealthy = 2,
}

impl BackendStatus {
    /// The status as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Healthy => "healthy",
            BackendStatus::Loading => "loading",
            BackendStatus::Unhealthy => "unhealthy",
        }
    }

    const fn from_u8(value: u8) -> Self {
        match value {
            0 => BackendStatus::Healthy,
            1 => BackendStatus::Loading,
            _ => BackendStatus::Unhealthy,
        }
    }
}

impl fmt::Display for BackendStatus {
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
    #[error("backend {index} has an empty id; set id = \"some-name\"")]
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

/// What one backend offers for one model, resolved from its [`ModelSpec`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offering {
    /// Capability tier: the model's tier, else the backend's, else 0.
    pub tier: u8,
    /// Context window in tokens, if declared.
    pub context_window: Option<u32>,
    /// Supported features.
    pub features: Features,
    /// USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens.
    pub output_usd_per_mtok: f64,
}

impl Offering {
    /// The cost in USD of `input` input tokens and `output` output tokens.
    #[inline]
    pub fn cost_usd(&self, input: u32, output: u32) -> f64 {
        (f64::from(input) * self.input_usd_per_mtok + f64::from(output) * self.output_usd_per_mtok)
            / 1_000_000.0
    }

    /// Whether this offering is free (a local server).
    pub fn is_free(&self) -> bool {
        self.input_usd_per_mtok == 0.0 && self.output_usd_per_mtok == 0.0
    }
}

/// The state of a backend that changes while requests flow: atomics, read without locks.
///
/// Aligned to a cache line so that threads updating neighbouring backends do not slow
/// each other down.
#[derive(Debug)]
#[repr(align(64))]
pub struct LiveState {
    in_flight: AtomicU32,
    status: AtomicU8,
    /// Latency EWMA in milliseconds as `f64` bits; 0 means no sample yet.
    latency_ewma_ms: AtomicU64,
    /// When the last latency sample arrived, seconds since the Unix epoch.
    latency_at_secs: AtomicU64,
}

/// Weight of a new latency sample in the EWMA.
const LATENCY_EWMA_ALPHA: f64 = 0.2;

/// Seconds after which a backend's latency average is old news: it is no longer
/// reported, so schedulers fall back to their default and try the backend again, and the
/// next sample starts the average afresh.
pub const LATENCY_MEMORY_SECS: u64 = 60;

impl LiveState {
    fn new(status: BackendStatus) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            status: AtomicU8::new(status as u8),
            latency_ewma_ms: AtomicU64::new(0),
            latency_at_secs: AtomicU64::new(0),
        }
    }

    /// Requests routed to the backend and not yet finished.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current health.
    #[inline]
    pub fn status(&self) -> BackendStatus {
        BackendStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// The latency EWMA in milliseconds at `now_secs`: `None` before the first sample
    /// and once the last one is more than [`LATENCY_MEMORY_SECS`] old.
    #[inline]
    pub fn latency_ewma_ms(&self, now_secs: u64) -> Option<f64> {
        let at = self.latency_at_secs.load(Ordering::Relaxed);
        if now_secs.saturating_sub(at) > LATENCY_MEMORY_SECS {
            return None;
        }
        let bits = self.latency_ewma_ms.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Folds a latency sample taken at `now_secs` into the EWMA (weight 0.2 for the new
    /// sample); after [`LATENCY_MEMORY_SECS`] without samples it starts afresh. A sample
    /// above [`Outcome::MAX_LATENCY`](crate::Outcome::MAX_LATENCY) counts as that much.
    pub fn record_latency(&self, latency: Duration, now_secs: u64) {
        let previous = self
            .latency_at_secs
            .swap(now_secs.max(1), Ordering::Relaxed);
        let stale = now_secs.saturating_sub(previous) > LATENCY_MEMORY_SECS;
        let latency = latency.min(crate::Outcome::MAX_LATENCY);
        let sample = (latency.as_secs_f64() * 1000.0).max(0.001);
        // A lost update under contention would only drop one sample, but the CAS loop is
        // cheap and keeps the average exact.
        let _ = self
            .latency_ewma_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == 0 || stale {
                    sample
                } else {
                    let old = f64::from_bits(bits);
                    old + LATENCY_EWMA_ALPHA * (sample - old)
                };
                Some(next.to_bits())
            });
    }

    /// Counts a request as started.
    pub fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request as finished. Each `begin_request` must be matched by exactly one
    /// call (route guards see to it); an extra call is ignored rather than wrapping.
    pub fn end_request(&self) {
        let previous = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if previous == 0 {
            // Undo an unmatched call instead of leaving the counter at u32::MAX.
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One backend of a [`Fleet`].
#[derive(Debug)]
pub struct Backend {
    id: BackendId,
    name: Arc<str>,
    url: Box<str>,
    kind: BackendKind,
    api_key_env: Option<Box<str>>,
    zone: Option<Zone>,
    priority: u32,
    tier: Option<u8>,
    max_concurrency: u32,
    models: Box<[ModelId]>,
    /// Shared so that a reloaded fleet keeps a kept backend's state
    /// ([`Fleet::adopt_live_state`]).
    live: Arc<LiveState>,
}

impl Backend {
    /// Its handle.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// Its configured id, e.g. `"gpu-box"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configured id, shared: cloning it does not allocate.
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The protocol it speaks.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The environment variable that holds its API key, if it has one.
    pub fn api_key_env(&self) -> Option<&str> {
        self.api_key_env.as_deref()
    }

    /// The zone as configured (`None` when missing).
    pub fn configured_zone(&self) -> Option<Zone> {
        self.zone
    }

    /// The zone that policies apply: a missing zone counts as [`Zone::Cloud`].
    #[inline]
    pub fn zone(&self) -> Zone {
        self.zone.unwrap_or(Zone::Cloud)
    }

    /// Its scoring priority (> 0).
    #[inline]
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// Its default tier for models that do not set one.
    pub fn tier(&self) -> Option<u8> {
        self.tier
    }

    /// Requests at once before it is saturated.
    #[inline]
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    /// The models it serves.
    pub fn models(&self) -> &[ModelId] {
        &self.models
    }

    /// Its live state.
    #[inline]
    pub fn live(&self) -> &LiveState {
        &self.live
    }
}

/// A model name and the backends that serve it.
#[derive(Debug)]
pub struct ModelEntry {
    name: Arc<str>,
    servers: BackendSet,
    /// Sorted by backend id, one per server.
    offers: Box<[(BackendId, Offering)]>,
    /// For each word of `servers`, how many servers lie in the words before it: the
    /// position of a server's offering is then one popcount away.
    rank: Box<[u32]>,
    summary: OfferSummary,
}

/// What every server of a model has in common, so that stages can skip their loop when
/// no server can fail their check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OfferSummary {
    /// The lowest tier of any server.
    pub min_tier: u8,
    /// The smallest declared context window (`None` when no server declares one).
    pub min_context_window: Option<u32>,
    /// The features every server supports.
    pub common_features: Features,
    /// The highest input price of any server, USD per million tokens.
    pub max_input_usd_per_mtok: f64,
    /// The highest output price of any server, USD per million tokens.
    pub max_output_usd_per_mtok: f64,
}

impl OfferSummary {
    fn of(offers: &[(BackendId, Offering)]) -> Self {
        let mut summary = Self {
            min_tier: u8::MAX,
            min_context_window: None,
            common_features: Features::from_bits(u8::MAX),
            max_input_usd_per_mtok: 0.0,
            max_output_usd_per_mtok: 0.0,
        };
        for (_, offer) in offers {
            summary.min_tier = summary.min_tier.min(offer.tier);
            if let Some(window) = offer.context_window {
                summary.min_context_window =
                    Some(summary.min_context_window.map_or(window, |w| w.min(window)));
            }
            summary.common_features =
                Features::from_bits(summary.common_features.bits() & offer.features.bits());
            summary.max_input_usd_per_mtok =
                summary.max_input_usd_per_mtok.max(offer.input_usd_per_mtok);
            summary.max_output_usd_per_mtok = summary
                .max_output_usd_per_mtok
                .max(offer.output_usd_per_mtok);
        }
        summary
    }

    /// The most any server would charge for `input` and `output` tokens.
    #[inline]
    pub fn max_cost_usd(&self, input: u32, output: u32) -> f64 {
        (f64::from(input) * self.max_input_usd_per_mtok
            + f64::from(output) * self.max_output_usd_per_mtok)
            / 1_000_000.0
    }
}

impl ModelEntry {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's name, shared: cloning it does not allocate.
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The backends that serve it.
    pub fn servers(&self) -> &BackendSet {
        &self.servers
    }

    /// Each server with what it offers for this model, in backend order.
    pub fn offers(&self) -> &[(BackendId, Offering)] {
        &self.offers
    }

    /// What `backend` offers for this model, if it serves it.
    #[inline]
    pub fn offer(&self, backend: BackendId) -> Option<&Offering> {
        if !self.servers.contains(backend) {
            return None;
        }
        let i = backend.index();
        Some(self.offer_of_server(i / 64, (i % 64) as u32))
    }

    /// The offering of the server at bit `bit` of word `word` (which must be a server).
    #[inline]
    pub(crate) fn offer_of_server(&self, word: usize, bit: u32) -> &Offering {
        let below = self.servers.words[word] & ((1u64 << bit) - 1);
        &self.offers[self.rank[word] as usize + below.count_ones() as usize].1
    }

    /// What all its servers have in common.
    #[inline]
    pub fn summary(&self) -> &OfferSummary {
        &self.summary
    }
}

/// A model's servers and their offerings, while a fleet is being indexed.
type Offers = Vec<(BackendId, Offering)>;

/// Every backend and model known to a router, indexed for decisions.
///
/// ```
/// use nexus_core::{BackendSpec, Fleet, ModelSpec, Zone};
///
/// let fleet = Fleet::new(vec![
///     BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
///         .with_zone(Zone::Local)
///         .with_model(ModelSpec::new("llama3:70b")),
///     BackendSpec::new("openai", "https://api.openai.com")
///         .with_model(ModelSpec::new("gpt-4o").with_prices(2.5, 10.0)),
/// ])?;
/// let model = fleet.model_id("llama3:70b").unwrap();
/// assert_eq!(fleet.model(model).servers().len(), 1);
/// assert_eq!(fleet.backend_by_name("openai").unwrap().zone(), Zone::Cloud);
/// # Ok::<(), nexus_core::FleetError>(())
/// ```
#[derive(Debug)]
pub struct Fleet {
    backends: Box<[Backend]>,
    by_name: HashMap<Box<str>, BackendId>,
    models: Box<[ModelEntry]>,
    model_index: HashMap<Box<str>, ModelId>,
    /// One bit per backend whose status is unhealthy, kept in step with each
    /// backend's [`LiveState`] by [`Fleet::set_status`], so that health is checked a
    /// word at a time.
    unhealthy: Box<[AtomicU64]>,
}

impl Fleet {
    /// The most backends one fleet can hold.
    pub const MAX_BACKENDS: usize = 1 << 20;

    /// Validates the specs and builds the indexes.
    pub fn new(specs: Vec<BackendSpec>) -> Result<Self, FleetError> {
        if specs.len() > Self::MAX_BACKENDS {
            return Err(FleetError::TooManyBackends {
                max: Self::MAX_BACKENDS,
            });
        }
        let mut by_name: HashMap<Box<str>, BackendId> =
            HashMap::with_capacity_and_hasher(specs.len(), Default::default());
        let mut model_index: HashMap<Box<str>, ModelId> = HashMap::default();
        let mut model_offers: Vec<(Arc<str>, Offers)> = Vec::new();
        let mut backends = Vec::with_capacity(specs.len());

        for (index, spec) in specs.into_iter().enumerate() {
            let id = BackendId::new(index as u32);
            if spec.id.trim().is_empty() {
                return Err(FleetError::EmptyId { index });
            }
            if let Some(&first) = by_name.get(spec.id.as_str()) {
                return Err(FleetError::DuplicateId {
                    id: spec.id,
                    first: first.index(),
                    index,
                });
            }
            if spec.priority == 0 {
                return Err(FleetError::ZeroPriority { id: spec.id, index });
            }
            if spec.max_concurrency == 0 {
                return Err(FleetError::ZeroConcurrency { id: spec.id, index });
            }
            let mut served = Vec::with_capacity(spec.models.len());
            for (model_index_in_backend, model) in spec.models.iter().enumerate() {
                let invalid = |problem| FleetError::InvalidModel {
                    id: spec.id.clone(),
                    index,
                    model_index: model_index_in_backend,
                    model: model.name.clone(),
                    problem,
                };
                if model.name.trim().is_empty() {
                    return Err(invalid("has an empty name; set name = \"model:tag\""));
                }
                if model.context_window == Some(0) {
                    return Err(invalid(
                        "has context_window = 0; remove the key or give the window in tokens",
                    ));
                }
                for (key, price) in [
                    ("input_usd_per_mtok", model.input_usd_per_mtok),
                    ("output_usd_per_mtok", model.output_usd_per_mtok),
                ] {
                    if !(0.0..=MAX_USD_PER_MTOK).contains(&price) {
                        return Err(FleetError::InvalidPrice {
                            id: spec.id.clone(),
                            index,
                            model_index: model_index_in_backend,
                            model: model.name.clone(),
                            key,
                            price,
                        });
                    }
                }
                let next = ModelId::new(model_offers.len() as u32);
                let model_id = *model_index
                    .entry(model.name.as_str().into())
                    .or_insert_with(|| {
                        model_offers.push((model.name.as_str().into(), Vec::new()));
                        next
                    });
                if served.contains(&model_id) {
                    return Err(invalid(
                        "is listed twice on this backend; keep one [[backends.models]] entry per model",
                    ));
                }
                served.push(model_id);
                model_offers[model_id.index()].1.push((
                    id,
                    Offering {
                        tier: model.tier.or(spec.tier).unwrap_or(0),
                        context_window: model.context_window,
                        features: Features::from_flags(model.vision, model.tools, model.json_mode),
                        input_usd_per_mtok: model.input_usd_per_mtok,
                        output_usd_per_mtok: model.output_usd_per_mtok,
                    },
                ));
            }
            by_name.insert(spec.id.as_str().into(), id);
            backends.push(Backend {
                id,
                name: spec.id.as_str().into(),
                url: spec.url.into(),
                kind: spec.kind,
                api_key_env: spec.api_key_env.map(Into::into),
                zone: spec.zone,
                priority: spec.priority,
                tier: spec.tier,
                max_concurrency: spec.max_concurrency,
                models: served.into(),
                live: Arc::new(LiveState::new(spec.status)),
            });
        }

        let len = backends.len();
        let models = model_offers
            .into_iter()
            .map(|(name, offers)| {
                let mut servers = BackendSet::with_capacity(len);
                for (b, _) in &offers {
                    servers.insert(*b);
                }
                let mut before = 0u32;
                let rank = servers
                    .words
                    .iter()
                    .map(|w| {
                        let here = before;
                        before += w.count_ones();
                        here
                    })
                    .collect();
                ModelEntry {
                    name,
                    summary: OfferSummary::of(&offers),
                    servers,
                    offers: offers.into(),
                    rank,
                }
            })
            .collect();
        let unhealthy: Box<[AtomicU64]> =
            (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        for backend in &backends {
            if backend.live.status() == BackendStatus::Unhealthy {
                let i = backend.id.index();
                unhealthy[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
        }
        Ok(Self {
            backends: backends.into(),
            by_name,
            models,
            model_index,
            unhealthy,
        })
    }

    /// Sets a backend's health (from a health checker, or an operator).
    pub fn set_status(&self, backend: BackendId, status: BackendStatus) {
        let Some(b) = self.backends.get(backend.index()) else {
            return;
        };
        b.live.status.store(status as u8, Ordering::Relaxed);
        let i = backend.index();
        let bit = 1u64 << (i % 64);
        if status == BackendStatus::Unhealthy {
            self.unhealthy[i / 64].fetch_or(bit, Ordering::Relaxed);
        } else {
            self.unhealthy[i / 64].fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Takes over the live state (in flight, latency average, health) of every backend
    /// of `previous` whose id this fleet has too, sharing it: requests still in flight
    /// on `previous` finish on the same counters this fleet reads. Backends that are new
    /// keep their configured initial status; a backend `previous` had and this fleet has
    /// not is simply not carried. Returns how many backends were carried over.
    ///
    /// This is how a config reload keeps what the gateway learned about its backends;
    /// call it before the fleet is shared.
    ///
    /// ```
    /// use nexus_core::{BackendSpec, BackendStatus, Fleet, ModelSpec};
    ///
    /// let spec = |id: &str| BackendSpec::new(id, "http://127.0.0.1:1").with_model(ModelSpec::new("m"));
    /// let old = Fleet::new(vec![spec("a"), spec("b")])?;
    /// old.backend_by_name("b").unwrap().live().begin_request();
    /// old.set_status(old.backend_by_name("b").unwrap().id(), BackendStatus::Unhealthy);
    ///
    /// let mut new = Fleet::new(vec![spec("b"), spec("c")])?;
    /// assert_eq!(new.adopt_live_state(&old), 1);
    /// let b = new.backend_by_name("b").unwrap();
    /// assert_eq!((b.live().in_flight(), b.live().status()), (1, BackendStatus::Unhealthy));
    /// old.backend_by_name("b").unwrap().live().end_request(); // finishes on the old fleet
    /// assert_eq!(b.live().in_flight(), 0);
    /// assert_eq!(new.backend_by_name("c").unwrap().live().in_flight(), 0);
    /// # Ok::<(), nexus_core::FleetError>(())
    /// ```
    pub fn adopt_live_state(&mut self, previous: &Fleet) -> usize {
        let mut carried = 0;
        for backend in self.backends.iter_mut() {
            if let Some(old) = previous.backend_by_name(&backend.name) {
                backend.live = Arc::clone(&old.live);
                carried += 1;
            }
        }
        self.sync_status();
        carried
    }

    /// Recomputes the unhealthy bitset from each backend's live status: after
    /// [`adopt_live_state`](Self::adopt_live_state), and after a reload swapped this
    /// fleet in, when a status set on the previous fleet in between may have reached
    /// the shared state but not this fleet's bitset.
    pub fn sync_status(&self) {
        for (w, word) in self.unhealthy.iter().enumerate() {
            let mut bits = 0u64;
            for (i, backend) in self.backends.iter().enumerate().skip(w * 64).take(64) {
                if backend.live.status() == BackendStatus::Unhealthy {
                    bits |= 1 << (i % 64);
                }
            }
            word.store(bits, Ordering::Relaxed);
        }
    }

    /// Word `index` of the unhealthy backends' bitset.
    #[inline]
    pub(crate) fn unhealthy_word(&self, index: usize) -> u64 {
        self.unhealthy
            .get(index)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// The number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the fleet has no backends.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backend with handle `id`.
    ///
    /// # Panics
    /// If `id` belongs to another fleet and is out of range.
    #[inline]
    pub fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.index()]
    }

    /// Every backend, in configuration order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend with configured id `name`.
    pub fn backend_by_name(&self, name: &str) -> Option<&Backend> {
        self.by_name.get(name).map(|id| self.backend(*id))
    }

    /// The handle of the model called `name`, if any backend serves it.
    #[inline]
    pub fn model_id(&self, name: &str) -> Option<ModelId> {
        self.model_index.get(name).copied()
    }

    /// The model with handle `id`.
    ///
    /// # Panics
    /// If `id` belongs to another fleet and is out of range.
    #[inline]
    pub fn model(&self, id: ModelId) -> &ModelEntry {
        &self.models[id.index()]
    }

    /// Every model, in order of first appearance.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> BackendSpec {
        BackendSpec::new(id, "http://127.0.0.1:1").with_model(ModelSpec::new("m"))
    }

    #[test]
    fn duplicate_ids_name_both_positions() {
        let err = Fleet::new(vec![spec("a"), spec("b"), spec("a")]).unwrap_err();
        assert_eq!(
            err,
            FleetError::DuplicateId {
                id: "a".into(),
                first: 0,
                index: 2
            }
        );
        assert_eq!(err.backend_index(), Some(2));
    }

    #[test]
    fn tier_resolves_model_then_backend_then_zero() {
        let fleet = Fleet::new(vec![
            BackendSpec::new("a", "u")
                .with_tier(2)
                .with_model(ModelSpec::new("x"))
                .with_model(ModelSpec::new("y").with_tier(4)),
            BackendSpec::new("b", "u").with_model(ModelSpec::new("x")),
        ])
        .unwrap();
        let x = fleet.model(fleet.model_id("x").unwrap());
        let y = fleet.model(fleet.model_id("y").unwrap());
        assert_eq!(x.offer(BackendId::new(0)).unwrap().tier, 2);
        assert_eq!(x.offer(BackendId::new(1)).unwrap().tier, 0);
        assert_eq!(y.offer(BackendId::new(0)).unwrap().tier, 4);
        assert!(y.offer(BackendId::new(1)).is_none());
    }

    #[test]
    fn bad_values_are_rejected_with_the_backend() {
        let zero = Fleet::new(vec![spec("a").with_priority(0)]).unwrap_err();
        assert!(matches!(zero, FleetError::ZeroPriority { index: 0, .. }));
        let twice = Fleet::new(vec![spec("a").with_model(ModelSpec::new("m"))]).unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        let negative = Fleet::new(vec![
            BackendSpec::new("a", "u").with_model(ModelSpec::new("m").with_prices(-1.0, 0.0))
        ])
        .unwrap_err();
        assert_eq!(
            negative.to_string(),
            "backend 'a': model 'm' has input_usd_per_mtok = -1; a price is USD per million tokens, from 0 (local servers) to 1000000 (a dollar a token)"
        );
        for price in [1e12, f64::INFINITY, f64::NAN] {
            let error =
                Fleet::new(vec![BackendSpec::new("a", "u")
                    .with_model(ModelSpec::new("m").with_prices(0.0, price))])
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    FleetError::InvalidPrice {
                        key: "output_usd_per_mtok",
                        model_index: 0,
                        ..
                    }
                ),
                "{error}"
            );
        }
        // The dearest allowed price keeps the dearest request finite and inside an
        // i64 of nano-dollars.
        let offer = Offering {
            tier: 0,
            context_window: None,
            features: Features::NONE,
            input_usd_per_mtok: MAX_USD_PER_MTOK,
            output_usd_per_mtok: MAX_USD_PER_MTOK,
        };
        let dearest = offer.cost_usd(u32::MAX, u32::MAX) * 1e9;
        assert!(
            dearest.is_finite() && dearest < i64::MAX as f64,
            "{dearest}"
        );
    }

    #[test]
    fn latency_ewma_starts_at_first_sample_then_smooths() {
        let live = LiveState::new(BackendStatus::Healthy);
        assert_eq!(live.latency_ewma_ms(1_000), None);
        live.record_latency(Duration::from_millis(100), 1_000);
        assert_eq!(live.latency_ewma_ms(1_000), Some(100.0));
        live.record_latency(Duration::from_millis(200), 1_001);
        assert!((live.latency_ewma_ms(1_001).unwrap() - 120.0).abs() < 1e-9);
        // Old news is forgotten, and the next sample starts afresh.
        assert_eq!(live.latency_ewma_ms(1_001 + LATENCY_MEMORY_SECS + 1), None);
        live.record_latency(Duration::from_millis(500), 1_100);
        assert_eq!(live.latency_ewma_ms(1_100), Some(500.0));
    }

    #[test]
    fn an_absurd_latency_counts_as_the_cap() {
        let live = LiveState::new(BackendStatus::Healthy);
        live.record_latency(Duration::from_secs(u64::MAX), 1_000);
        assert_eq!(live.latency_ewma_ms(1_000), Some(3_600_000.0));
        live.record_latency(Duration::MAX, 1_001);
        assert_eq!(live.latency_ewma_ms(1_001), Some(3_600_000.0));
    }

    #[test]
    fn in_flight_never_wraps() {
        let live = LiveState::new(BackendStatus::Healthy);
        live.end_request();
        assert_eq!(live.in_flight(), 0);
        live.begin_request();
        assert_eq!(live.in_flight(), 1);
    }
}
