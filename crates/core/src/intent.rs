//! [`RoutingIntent`]: the shared state a decision's stages narrow, one model at a time.
//!
//! The intent borrows its buffers (candidate bitset, weights, scores, recorded
//! exclusions) from a [`Scratch`] that the pipeline reuses across decisions, so that
//! running the stages does not touch the heap once the buffers have grown to the size
//! of the fleet.

use std::fmt;

use crate::{
    BackendId, BackendSet, Constraints, CostEstimate, Exclusion, Fleet, ModelEntry, ModelId,
    Offering, PolicySet, Reason, RequestRequirements, Warning,
};

/// Month-to-date spend relative to the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BudgetStatus {
    /// Below the soft limit (or no budget configured).
    #[default]
    Normal,
    /// At or above the soft limit: local backends are preferred.
    SoftLimit,
    /// At or above the limit: the hard-limit action applies.
    HardLimit,
}

impl BudgetStatus {
    /// The status as written in JSON output.
    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetStatus::Normal => "normal",
            BudgetStatus::SoftLimit => "soft_limit",
            BudgetStatus::HardLimit => "hard_limit",
        }
    }
}

impl fmt::Display for BudgetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision is to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueCause {
    /// The best backend is loading the model.
    Loading,
    /// Every candidate is at its `max_concurrency`.
    Saturated,
}

/// Reusable per-decision buffers. One lives per thread in the pipeline's pool; a
/// finished decision gives it back.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) candidates: BackendSet,
    /// Weights, valid where `weighted` has the backend (1.0 elsewhere): resetting a
    /// decision clears a few bitset words instead of rewriting a value per backend.
    pub(crate) weights: Vec<f64>,
    pub(crate) weighted: BackendSet,
    /// Scores, valid where `scored` has the backend.
    pub(crate) scores: Vec<f64>,
    pub(crate) scored: BackendSet,
    pub(crate) exclusions: Vec<Exclusion>,
    pub(crate) warnings: Vec<Warning>,
    pub(crate) errors: Vec<(u16, crate::ReconcileError)>,
}

impl Scratch {
    /// Grows the buffers to `backends` (allocates only when the fleet grew) and clears
    /// what the previous decision recorded.
    pub(crate) fn prepare(&mut self, backends: usize) {
        if self.weights.len() < backends {
            self.weights.resize(backends, 1.0);
            self.scores.resize(backends, 0.0);
            self.candidates = BackendSet::with_capacity(backends);
            self.weighted = BackendSet::with_capacity(backends);
            self.scored = BackendSet::with_capacity(backends);
        }
        let want = backends.max(16);
        if self.exclusions.capacity() < want {
            self.exclusions.reserve(want - self.exclusions.len());
        }
        if self.warnings.capacity() < 8 {
            self.warnings.reserve(8);
        }
        self.clear_records();
    }

    /// Forgets the exclusions, warnings and stage errors recorded so far, keeping the
    /// buffers: for a second pass over the plan that alone explains the decision.
    pub(crate) fn clear_records(&mut self) {
        self.exclusions.clear();
        self.warnings.clear();
        self.errors.clear();
    }
}

/// One candidate, as [`RoutingIntent::visit_candidates`] shows it to a stage and a
/// [`Shortlist`](crate::selector::Shortlist) to the selector (which picks one with
/// [`Pick`](crate::selector::Pick)).
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The backend.
    pub backend: BackendId,
    /// The product of the weights stages applied to it so far.
    pub weight: f64,
    entry: &'a ModelEntry,
    word: usize,
    bit: u32,
}

impl<'a> Candidate<'a> {
    #[inline]
    pub(crate) fn new(
        backend: BackendId,
        weight: f64,
        entry: &'a ModelEntry,
        word: usize,
        bit: u32,
    ) -> Self {
        Self {
            backend,
            weight,
            entry,
            word,
            bit,
        }
    }

    /// What it offers for the current model (found when asked: stages that do not need
    /// it do not pay for it).
    #[inline]
    pub fn offer(&self) -> &'a Offering {
        self.entry.offer_of_server(self.word, self.bit)
    }
}

/// What [`RoutingIntent::visit_candidates`] does with one candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Nothing.
    Keep,
    /// Multiply its weight by this factor (ignored unless finite and positive).
    Scale(f64),
    /// Exclude it, with this reason.
    Exclude(Reason),
}

impl Scratch {
    #[inline]
    pub(crate) fn weight(&self, backend: BackendId) -> f64 {
        if self.weighted.contains(backend) {
            self.weights[backend.index()]
        } else {
            1.0
        }
    }

    #[inline]
    fn scale(&mut self, backend: BackendId, factor: f64) {
        if !(factor.is_finite() && factor > 0.0) {
            return;
        }
        let i = backend.index();
        if self.weighted.contains(backend) {
            self.weights[i] *= factor;
        } else {
            self.weights[i] = factor;
            self.weighted.insert_within(backend);
        }
    }
}

/// The state of one decision for one model, shared by the stages in order.
///
/// Stages read the request, the fleet and the constraints, and narrow the candidates:
/// [`exclude`](Self::exclude) removes a candidate with a reason,
/// [`scale_weight`](Self::scale_weight) biases its score. There is no way to add a
/// candidate back.
pub struct RoutingIntent<'a> {
    pub(crate) fleet: &'a Fleet,
    pub(crate) policies: &'a PolicySet,
    pub(crate) requested: &'a str,
    pub(crate) model: ModelId,
    pub(crate) attempt: usize,
    pub(crate) requirements: RequestRequirements,
    pub(crate) constraints: Constraints,
    pub(crate) stage: u16,
    pub(crate) budget_status: BudgetStatus,
    pub(crate) explaining: bool,
    pub(crate) now_secs: u64,
    /// Backends the caller left out of this request ([`crate::Request::excluded`]).
    pub(crate) excluded: &'a [BackendId],
    /// The request's tenant ([`crate::Request::tenant`]).
    pub(crate) tenant: Option<crate::TenantId>,
    /// The tenant's overrides, applied to every model's constraints
    /// ([`Constraints::NONE`] without a tenant).
    pub(crate) tenant_constraints: Constraints,
    pub(crate) scratch: &'a mut Scratch,
}

impl fmt::Debug for RoutingIntent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingIntent")
            .field("requested", &self.requested)
            .field("model", &self.fleet.model(self.model).name())
            .field("attempt", &self.attempt)
            .field("candidates", &self.scratch.candidates)
            .field("constraints", &self.constraints)
            .field("budget_status", &self.budget_status)
            .finish_non_exhaustive()
    }
}

impl<'a> RoutingIntent<'a> {
    /// A standalone intent over the servers of `model`, for testing a stage in
    /// isolation (the pipeline builds its own).
    pub fn new(
        fleet: &'a Fleet,
        policies: &'a PolicySet,
        scratch: &'a mut Scratch,
        model: ModelId,
        requirements: RequestRequirements,
        constraints: Constraints,
    ) -> Self {
        scratch.prepare(fleet.len());
        let mut intent = Self {
            fleet,
            policies,
            requested: fleet.model(model).name(),
            model,
            attempt: 0,
            requirements,
            constraints,
            stage: 0,
            budget_status: BudgetStatus::Normal,
            explaining: false,
            now_secs: crate::Clock::now_secs(&crate::SystemClock),
            excluded: &[],
            tenant: None,
            tenant_constraints: Constraints::NONE,
            scratch,
        };
        intent.reset_for(model, constraints, 0);
        intent
    }

    /// Starts over for another model (a fallback): its servers become the candidates.
    pub(crate) fn reset_for(&mut self, model: ModelId, constraints: Constraints, attempt: usize) {
        let entry = self.fleet.model(model);
        self.model = model;
        self.constraints = constraints.tightened_by(&self.tenant_constraints);
        self.attempt = attempt;
        self.scratch.candidates.copy_from(entry.servers());
        self.scratch.weighted.clear();
        self.scratch.scored.clear();
        for &backend in self.excluded {
            if self.scratch.candidates.remove(backend) {
                self.scratch.exclusions.push(Exclusion {
                    backend,
                    model,
                    stage: Reason::PIPELINE_STAGE,
                    reason: Reason::pipeline(Reason::EXCLUDED_BY_CALLER, [0.0; 3]),
                });
            }
        }
    }

    /// The tenant the request is made for, if any ([`crate::Request::tenant`]).
    #[inline]
    pub fn tenant(&self) -> Option<crate::TenantId> {
        self.tenant
    }

    /// The fleet.
    #[inline]
    pub fn fleet(&self) -> &'a Fleet {
        self.fleet
    }

    /// The traffic policies.
    #[inline]
    pub fn policies(&self) -> &'a PolicySet {
        self.policies
    }

    /// The name the client asked for.
    #[inline]
    pub fn requested_model(&self) -> &'a str {
        self.requested
    }

    /// The model being decided for.
    #[inline]
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The model's entry in the fleet.
    #[inline]
    pub fn model_entry(&self) -> &'a ModelEntry {
        self.fleet.model(self.model)
    }

    /// What `backend` offers for the current model.
    #[inline]
    pub fn offer(&self, backend: BackendId) -> Option<&'a Offering> {
        self.fleet.model(self.model).offer(backend)
    }

    /// Whether the current model is a fallback (0 is the resolved model).
    #[inline]
    pub fn is_fallback(&self) -> bool {
        self.attempt > 0
    }

    /// The decision's time, in seconds since the Unix epoch: read once per decision
    /// from the pipeline's clock, so that stages agree on it and do not each pay for a
    /// clock read.
    #[inline]
    pub fn now_secs(&self) -> u64 {
        self.now_secs
    }

    /// Whether this run only explains a Reject: to find which fix would admit the most
    /// backends, the pipeline runs each stage alone over every server of the model.
    /// Such a run decides nothing; a stage with side effects in `reconcile` (counters,
    /// probes) should skip them.
    #[inline]
    pub fn is_explaining(&self) -> bool {
        self.explaining
    }

    /// What the request needs.
    #[inline]
    pub fn requirements(&self) -> &RequestRequirements {
        &self.requirements
    }

    /// The constraints of every policy matched on the way to the current model.
    #[inline]
    pub fn constraints(&self) -> &Constraints {
        &self.constraints
    }

    /// The backends still in the running.
    #[inline]
    pub fn candidates(&self) -> &BackendSet {
        &self.scratch.candidates
    }

    /// Whether `backend` is still in the running.
    #[inline]
    pub fn is_candidate(&self, backend: BackendId) -> bool {
        self.scratch.candidates.contains(backend)
    }

    /// Removes `backend` from the candidates and records why. Excluding a backend that
    /// is not a candidate does nothing.
    #[inline]
    pub fn exclude(&mut self, backend: BackendId, reason: Reason) {
        if self.scratch.candidates.remove(backend) {
            self.scratch.exclusions.push(Exclusion {
                backend,
                model: self.model,
                stage: self.stage,
                reason,
            });
        }
    }

    /// Excludes every candidate that is in `set`, recording `reason` for each: a word
    /// at a time, for stages that precompute which backends a rule rules out.
    pub fn exclude_set(&mut self, set: &BackendSet, reason: Reason) {
        self.exclude_words(|i| set.words.get(i).copied().unwrap_or(0), reason);
    }

    /// Multiplies `backend`'s score weight by `factor`. A factor that is not a finite,
    /// positive number is ignored: to rule a backend out, exclude it with a reason.
    #[inline]
    pub fn scale_weight(&mut self, backend: BackendId, factor: f64) {
        if self.is_candidate(backend) {
            self.scratch.scale(backend, factor);
        }
    }

    /// The product of every factor stages applied to `backend` (1.0 when none).
    #[inline]
    pub fn weight(&self, backend: BackendId) -> f64 {
        self.scratch.weight(backend)
    }

    /// Visits every candidate with what it offers for the current model, in backend
    /// order, and applies the [`Verdict`] `visit` returns for it. This is the fast way
    /// for a stage to check each candidate: it walks the candidate bitset, finds each
    /// offering in constant time, and needs no second pass to apply exclusions.
    #[inline]
    pub fn visit_candidates(&mut self, mut visit: impl FnMut(Candidate<'_>) -> Verdict) {
        let entry = self.fleet.model(self.model);
        let (model, stage) = (self.model, self.stage);
        let scratch = &mut *self.scratch;
        for word_index in 0..scratch.candidates.words.len() {
            // A copy: the word may change under us as candidates are excluded.
            let mut bits = scratch.candidates.words[word_index];
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let backend = BackendId::new(word_index as u32 * 64 + bit);
                let candidate = Candidate {
                    backend,
                    weight: scratch.weight(backend),
                    entry,
                    word: word_index,
                    bit,
                };
                match visit(candidate) {
                    Verdict::Keep => {}
                    Verdict::Scale(factor) => scratch.scale(backend, factor),
                    Verdict::Exclude(reason) => {
                        scratch.candidates.words[word_index] &= !(1u64 << bit);
                        scratch.exclusions.push(Exclusion {
                            backend,
                            model,
                            stage,
                            reason,
                        });
                    }
                }
            }
        }
    }

    /// Excludes every candidate whose bit `mask(word index)` sets, recording `reason`:
    /// for masks kept outside a [`BackendSet`], such as atomic words.
    pub(crate) fn exclude_words(&mut self, mask: impl Fn(usize) -> u64, reason: Reason) {
        let (model, stage) = (self.model, self.stage);
        let exclusions = &mut self.scratch.exclusions;
        self.scratch.candidates.remove_words(mask, |backend| {
            exclusions.push(Exclusion {
                backend,
                model,
                stage,
                reason,
            });
        });
    }

    /// Adds a warning to the decision, rendered by the current stage.
    /// A stage that runs again for a fallback model does not repeat a warning it already
    /// gave: the same stage, backend and reason are recorded once.
    pub fn warn(&mut self, backend: Option<BackendId>, reason: Reason) {
        let stage = self.stage;
        let repeated = self
            .scratch
            .warnings
            .iter()
            .any(|w| w.stage == stage && w.backend == backend && w.reason == reason);
        if !repeated {
            self.scratch.warnings.push(Warning {
                stage,
                model: self.model,
                backend,
                reason,
            });
        }
    }

    /// The budget status stages have reported so far.
    #[inline]
    pub fn budget_status(&self) -> BudgetStatus {
        self.budget_status
    }

    /// Reports a budget status; the decision keeps the most severe one reported.
    pub fn raise_budget_status(&mut self, status: BudgetStatus) {
        self.budget_status = self.budget_status.max(status);
    }

    /// The estimated cost of this request on `backend` for the current model.
    pub fn cost_estimate(&self, backend: BackendId) -> CostEstimate {
        cost_estimate(&self.requirements, self.offer(backend))
    }
}

pub(crate) fn cost_estimate(
    requirements: &RequestRequirements,
    offer: Option<&Offering>,
) -> CostEstimate {
    CostEstimate {
        input_tokens: requirements.input_tokens,
        max_input_tokens: requirements.max_input_tokens,
        estimated_output_tokens: requirements.estimated_output_tokens,
        cost_usd: offer.map_or(0.0, |o| {
            o.cost_usd(
                requirements.input_tokens,
                requirements.estimated_output_tokens,
            )
        }),
        token_tier: crate::TokenTier::of(requirements.total_tokens()),
    }
}
