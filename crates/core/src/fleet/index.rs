//! The model index of a fleet: every [`Backend`] with the [`Offering`]s of the models it
//! serves, and per model the [`BackendSet`] of its servers ([`ModelEntry`]), computed
//! once so that a decision starts from a precomputed bitset.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    BackendKind, BackendSpec, BackendStatus, FleetError, LiveState, Zone, MAX_USD_PER_MTOK,
};
use crate::{BackendId, BackendSet, Features, ModelId};

/// What one backend offers for one model, resolved from its [`ModelSpec`](super::ModelSpec).
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
/// # Ok::<(), nexus_core::fleet::FleetError>(())
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
    /// use nexus_core::{fleet::BackendStatus, BackendSpec, Fleet, ModelSpec};
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
    /// # Ok::<(), nexus_core::fleet::FleetError>(())
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
