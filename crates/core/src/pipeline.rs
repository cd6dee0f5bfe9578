//! The [`Pipeline`]: ordered stages, run for each model a request may be served by.
//!
//! A decision looks up the request's precomputed [`RoutePlan`], then for the resolved
//! model and, if it ends with no viable backend, for each fallback in turn: starts from
//! the model's servers, runs every stage in order, and takes what the selecting stage
//! (the scheduler) chose. A chosen backend is committed by asking every stage's
//! [`Reconciler::on_route`]; a veto excludes it and the selecting stage picks again.
//! A flexible request ([`TierMode::Flexible`]) is decided strictly over the whole plan
//! first, and flexibly only if that finds nothing: a relaxation never does worse than
//! the rule it relaxes.
//!
//! Buffers come from a per-thread pool and go back when the [`Decision`] is dropped, so
//! a Route decision does not allocate once warmed up. Rejection texts are rendered only
//! for a Reject or when [`Decision::rejections`] is called.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::analyzer::{closest, ModelRoutes, RoutePlan, RoutesError};
use crate::intent::{cost_estimate, Phase, Scratch};
use crate::{
    Backend, BackendId, BudgetStatus, Clock, Constraints, CostEstimate, ErrorPolicy,
    ExplainContext, Explanation, Fleet, ModelId, Outcome, PolicySet, QueueCause, Reason,
    Reconciler, Rejection, Request, RequestRequirements, RouteTicket, RoutingIntent, Selection,
    Settlement, SystemClock, TierMode,
};

thread_local! {
    static SCRATCH_POOL: Cell<Option<Box<Scratch>>> = const { Cell::new(None) };
}

fn take_scratch() -> Box<Scratch> {
    SCRATCH_POOL
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn return_scratch(scratch: Box<Scratch>) {
    let _ = SCRATCH_POOL.try_with(|pool| pool.set(Some(scratch)));
}

/// Ids handed out per block: each thread takes a block from [`ROUTE_ID_BLOCKS`] and
/// numbers its routes from it, so that a decision writes no cache line that every
/// thread shares.
const ROUTE_ID_BLOCK: u64 = 1 << 16;
/// Blocks taken so far, process-wide: ids stay unique across pipelines (a reload
/// builds a second one that may share stages' state with the first).
static ROUTE_ID_BLOCKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The next id of this thread's block, and the end of the block.
    static ROUTE_IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A fresh [`RouteTicket::id`]: unique in the process, never 0.
fn next_route_id() -> u64 {
    let block = || {
        let start = ROUTE_ID_BLOCKS.fetch_add(1, Ordering::Relaxed) * ROUTE_ID_BLOCK + 1;
        (start, start + ROUTE_ID_BLOCK)
    };
    ROUTE_IDS
        .try_with(|ids| {
            let (mut next, mut end) = ids.get();
            if next == end {
                (next, end) = block();
            }
            ids.set((next + 1, end));
            next
        })
        // The thread is exiting: a block of its own for this one id.
        .unwrap_or_else(|_| block().0)
}

/// One stage of a pipeline: a reconciler and what to do when it fails.
#[derive(Debug)]
pub struct Stage {
    reconciler: Box<dyn Reconciler>,
    on_error: ErrorPolicy,
    nanos: AtomicU64,
    calls: AtomicU64,
}

impl Stage {
    /// The reconciler.
    pub fn reconciler(&self) -> &dyn Reconciler {
        &*self.reconciler
    }

    /// Its error policy.
    pub fn error_policy(&self) -> ErrorPolicy {
        self.on_error
    }
}

/// Time spent in one stage while timing was on; see [`Pipeline::set_timing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageTiming {
    /// The stage's kind.
    pub name: &'static str,
    /// Times the stage ran.
    pub calls: u64,
    /// Total nanoseconds spent in it.
    pub nanos: u64,
}

/// A problem building a pipeline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Aliases or fallbacks are invalid.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// More stages than a decision can index.
    #[error("a pipeline holds at most {max} stages")]
    TooManyStages {
        /// The limit.
        max: usize,
    },
}

/// Builds a [`Pipeline`]; see [`Pipeline::builder`].
#[derive(Debug)]
pub struct PipelineBuilder {
    fleet: Arc<Fleet>,
    policies: Arc<PolicySet>,
    aliases: BTreeMap<String, String>,
    fallbacks: BTreeMap<String, Vec<String>>,
    stages: Vec<(Box<dyn Reconciler>, Option<ErrorPolicy>)>,
    clock: Arc<dyn Clock>,
    tenant_constraints: Vec<Constraints>,
}

impl PipelineBuilder {
    /// Sets the clock that timestamps outcomes (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the traffic policies.
    pub fn policies(mut self, policies: Arc<PolicySet>) -> Self {
        self.policies = policies;
        self
    }

    /// Adds an alias: requests for `alias` go to `target` (a model or another alias).
    pub fn alias(mut self, alias: impl Into<String>, target: impl Into<String>) -> Self {
        self.aliases.insert(alias.into(), target.into());
        self
    }

    /// Sets every alias at once.
    pub fn aliases(mut self, aliases: BTreeMap<String, String>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Sets the fallbacks of `model`, tried in order when it has no viable backend.
    pub fn fallback<I, S>(mut self, model: impl Into<String>, fallbacks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallbacks.insert(
            model.into(),
            fallbacks.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Sets every fallback list at once.
    pub fn fallbacks(mut self, fallbacks: BTreeMap<String, Vec<String>>) -> Self {
        self.fallbacks = fallbacks;
        self
    }

    /// Sets each tenant's overrides, indexed by [`TenantId`](crate::TenantId): a request
    /// made for a tenant ([`Request::tenant`]) has its constraints tightened by them, for
    /// every model it may be served by. Overrides only tighten: combined with the
    /// policies' constraints by taking the strictest of each.
    pub fn tenant_constraints(mut self, tenants: Vec<Constraints>) -> Self {
        self.tenant_constraints = tenants;
        self
    }

    /// Appends a stage with its default error policy.
    pub fn stage(mut self, reconciler: impl Reconciler + 'static) -> Self {
        self.stages.push((Box::new(reconciler), None));
        self
    }

    /// Appends a boxed stage with an explicit error policy (`None`: its default).
    pub fn boxed_stage(
        mut self,
        reconciler: Box<dyn Reconciler>,
        on_error: Option<ErrorPolicy>,
    ) -> Self {
        self.stages.push((reconciler, on_error));
        self
    }

    /// Resolves aliases and fallbacks and builds the pipeline.
    pub fn build(self) -> Result<Pipeline, PipelineError> {
        if self.stages.len() >= usize::from(u16::MAX) {
            return Err(PipelineError::TooManyStages {
                max: usize::from(u16::MAX) - 1,
            });
        }
        let routes = ModelRoutes::new(&self.fleet, &self.policies, &self.aliases, &self.fallbacks)?;
        let stages = self
            .stages
            .into_iter()
            .map(|(reconciler, on_error)| Stage {
                on_error: on_error.unwrap_or_else(|| reconciler.default_error_policy()),
                reconciler,
                nanos: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            })
            .collect();
        Ok(Pipeline {
            fleet: self.fleet,
            policies: self.policies,
            routes,
            stages,
            timing: AtomicBool::new(false),
            clock: self.clock,
            tenant_constraints: self.tenant_constraints.into_boxed_slice(),
        })
    }
}

/// Ordered stages over a fleet: the routing engine.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::{BackendSpec, Fleet, ModelSpec, Pipeline, Request, RequestAnalyzer};
///
/// let fleet = Arc::new(Fleet::new(vec![
///     BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
///         .with_model(ModelSpec::new("llama3:70b")),
/// ])?);
/// let pipeline = Pipeline::builder(fleet).stage(RequestAnalyzer).build()?;
/// let decision = pipeline.decide(&Request::new("llama3:70b"));
/// // Without a scheduler stage the first remaining candidate is chosen.
/// assert_eq!(decision.backend().map(|b| b.name()), Some("gpu-box"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    fleet: Arc<Fleet>,
    policies: Arc<PolicySet>,
    routes: ModelRoutes,
    stages: Box<[Stage]>,
    timing: AtomicBool,
    clock: Arc<dyn Clock>,
    tenant_constraints: Box<[Constraints]>,
}

impl Pipeline {
    /// Starts a pipeline over `fleet`, with no policies, aliases or stages.
    pub fn builder(fleet: Arc<Fleet>) -> PipelineBuilder {
        PipelineBuilder {
            fleet,
            policies: Arc::new(PolicySet::default()),
            aliases: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            stages: Vec::new(),
            clock: Arc::new(SystemClock),
            tenant_constraints: Vec::new(),
        }
    }

    /// The fleet.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The traffic policies.
    pub fn policies(&self) -> &Arc<PolicySet> {
        &self.policies
    }

    /// The resolved names.
    pub fn routes(&self) -> &ModelRoutes {
        &self.routes
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The first stage of concrete type `T`, for stages that expose themselves through
    /// [`Reconciler::as_any`].
    pub fn stage_of<T: 'static>(&self) -> Option<&T> {
        self.stages
            .iter()
            .find_map(|s| s.reconciler.as_any().and_then(|a| a.downcast_ref::<T>()))
    }

    /// Turns per-stage timing on or off. Off (the default), a decision pays one relaxed
    /// load for it.
    pub fn set_timing(&self, on: bool) {
        self.timing.store(on, Ordering::Relaxed);
    }

    /// Time spent in each stage while timing was on.
    pub fn stage_timings(&self) -> Vec<StageTiming> {
        self.stages
            .iter()
            .map(|s| StageTiming {
                name: s.reconciler.name(),
                calls: s.calls.load(Ordering::Relaxed),
                nanos: s.nanos.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Decides where `request` goes. The decision borrows the pipeline; see
    /// [`decide_owned`](Self::decide_owned) for one that can outlive the borrow.
    #[inline]
    pub fn decide(&self, request: &Request<'_>) -> Decision<&Self> {
        Decision::assemble(self, self.decide_parts(request))
    }

    /// Decides where `request` goes, with a decision (and route guard) that holds a
    /// share of the pipeline instead of a borrow: `Send + 'static`, for a server that
    /// finishes the guard in another task, after the handler returned, or after the
    /// router moved on to a new configuration. Costs one reference-count increment
    /// (two for a Route) over [`decide`](Self::decide); still no allocation.
    #[inline]
    pub fn decide_owned(self: &Arc<Self>, request: &Request<'_>) -> OwnedDecision {
        Decision::assemble(Arc::clone(self), self.decide_parts(request))
    }

    fn decide_parts(&self, request: &Request<'_>) -> DecisionParts {
        let requirements = request.requirements();
        let mut scratch = take_scratch();
        scratch.prepare(self.fleet.len());
        let Some(plan_index) = self.routes.plan_index(request.model) else {
            return self.reject_unknown(request.model, requirements, scratch);
        };
        let plan = self.routes.plan_at(plan_index);
        let timing = self.timing.load(Ordering::Relaxed);
        let first = plan.attempts()[0];
        let mut intent = RoutingIntent {
            fleet: &self.fleet,
            policies: &self.policies,
            requested: request.model,
            model: first.model,
            attempt: 0,
            requirements,
            constraints: first.constraints,
            stage: 0,
            budget_status: BudgetStatus::Normal,
            selection: Selection::None,
            selected_by: None,
            phase: Phase::Reconcile,
            explaining: false,
            now_secs: self.clock.now_secs(),
            excluded: request.excluded,
            tenant: request.tenant,
            tenant_constraints: request
                .tenant
                .and_then(|t| self.tenant_constraints.get(t.index()))
                .copied()
                .unwrap_or(Constraints::NONE),
            scratch: &mut scratch,
        };
        // A flexible request first gets what a strict one would: a fallback that meets
        // the tier beats a downgrade of the requested model. Only when no model of the
        // plan meets it is the plan tried again, flexibly, from a clean record (so the
        // decision explains the pass that decided).
        let relaxable = requirements.tier_mode == TierMode::Flexible
            && plan.attempts().iter().any(|a| {
                let c = a.constraints.tightened_by(&intent.tenant_constraints);
                c.min_tier > 0 && c.fallback_allowed
            });
        if relaxable {
            intent.requirements.tier_mode = TierMode::Strict;
        }
        let mut found = self.try_plan(&mut intent, plan, timing);
        if found.is_none() && relaxable {
            intent.requirements.tier_mode = TierMode::Flexible;
            intent.scratch.clear_records();
            found = self.try_plan(&mut intent, plan, timing);
        }
        let budget_status = intent.budget_status;
        let model = intent.model;
        let attempt = intent.attempt;
        let fallback_used = attempt > 0;
        let candidates = intent.scratch.candidates.len() as u32;

        // A queue with no ready backend of its own model: offer a ready backend of a
        // later fallback instead, found through the same stages (so it obeys the same
        // constraints) and committed like a route. The queued model's candidates are
        // kept for the explanation.
        let mut queue_candidates = None;
        if let Some(Committed::Queue {
            fallback: offer @ None,
            ..
        }) = &mut found
        {
            if attempt + 1 < plan.attempts().len() {
                queue_candidates = Some(scored(intent.scratch));
                'models: for (later, plan_attempt) in
                    plan.attempts().iter().enumerate().skip(attempt + 1)
                {
                    intent.reset_for(plan_attempt.model, plan_attempt.constraints, later);
                    self.run_stages(&mut intent, timing);
                    // Each veto removes a candidate, so this ends.
                    while let Some(ready) = ready_choice(&intent) {
                        match self.commit(&intent, ready) {
                            Ok(ticket) => {
                                *offer = Some(ticket);
                                break 'models;
                            }
                            Err((stage, reason)) => {
                                intent.stage = stage;
                                intent.exclude(ready, reason);
                                self.select_again(&mut intent, timing);
                            }
                        }
                    }
                }
            }
        }

        let (kind, ticket, model) = match found {
            Some(Committed::Route { ticket, score }) => (
                RoutingDecision::Route {
                    backend: ticket.backend,
                    model: ticket.model,
                    reason: RouteReason { score, candidates },
                    cost_estimate: ticket.cost_estimate,
                },
                Some(ticket),
                Some(model),
            ),
            Some(Committed::Queue {
                backend,
                cause,
                estimated_wait_ms,
                fallback,
            }) => (
                RoutingDecision::Queue {
                    backend,
                    model,
                    reason: QueueReason { cause, candidates },
                    estimated_wait_ms,
                    fallback_backend: fallback.map(|t| t.backend),
                    fallback_model: fallback.map(|t| t.model),
                },
                fallback,
                Some(model),
            ),
            None => (
                self.reject(plan, &requirements, &scratch, request.tenant),
                None,
                None,
            ),
        };
        DecisionParts {
            plan: Some(plan_index),
            requirements,
            kind,
            // Nothing serves a Reject, so no fallback is used.
            fallback_used: fallback_used && model.is_some(),
            model,
            budget_status,
            ticket,
            scratch,
            queue_candidates,
        }
    }

    /// Tries each model of the plan in order, until one gives a route or a queue.
    fn try_plan(
        &self,
        intent: &mut RoutingIntent<'_>,
        plan: &RoutePlan,
        timing: bool,
    ) -> Option<Committed> {
        for (attempt, plan_attempt) in plan.attempts().iter().enumerate() {
            intent.reset_for(plan_attempt.model, plan_attempt.constraints, attempt);
            self.run_stages(intent, timing);
            if let Some(outcome) = self.settle_selection(intent, timing) {
                return Some(outcome);
            }
        }
        None
    }

    /// Every stage's `reconcile`, then every stage's `refine`, in pipeline order.
    fn run_stages(&self, intent: &mut RoutingIntent<'_>, timing: bool) {
        for index in 0..self.stages.len() {
            self.run_stage(index, intent, timing, Phase::Reconcile);
        }
        for index in 0..self.stages.len() {
            self.run_stage(index, intent, timing, Phase::Refine);
        }
    }

    #[inline]
    fn run_stage(&self, index: usize, intent: &mut RoutingIntent<'_>, timing: bool, phase: Phase) {
        let stage = &self.stages[index];
        intent.stage = index as u16;
        intent.phase = phase;
        let result = if timing {
            self.run_stage_timed(stage, intent, phase)
        } else {
            match phase {
                Phase::Reconcile => stage.reconciler.reconcile(intent),
                Phase::Refine => stage.reconciler.refine(intent),
            }
        };
        if let Err(error) = result {
            self.stage_failed(index, intent, error);
        }
    }

    #[cold]
    fn run_stage_timed(
        &self,
        stage: &Stage,
        intent: &mut RoutingIntent<'_>,
        phase: Phase,
    ) -> Result<(), crate::ReconcileError> {
        let start = Instant::now();
        let result = match phase {
            Phase::Reconcile => stage.reconciler.reconcile(intent),
            Phase::Refine => stage.reconciler.refine(intent),
        };
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stage.nanos.fetch_add(nanos, Ordering::Relaxed);
        if phase == Phase::Reconcile {
            stage.calls.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Applies a failed stage's error policy: a warning (fail-open) or the exclusion of
    /// every remaining candidate (fail-closed).
    #[cold]
    fn stage_failed(
        &self,
        index: usize,
        intent: &mut RoutingIntent<'_>,
        error: crate::ReconcileError,
    ) {
        let stage = &self.stages[index];
        tracing::warn!(stage = stage.reconciler.name(), %error, policy = stage.on_error.as_str(), "routing stage failed");
        let error_index = intent.scratch.errors.len() as f64;
        intent.scratch.errors.push((index as u16, error));
        let reason = Reason::with(Reason::STAGE_FAILED, [error_index, 0.0, 0.0]);
        match stage.on_error {
            ErrorPolicy::FailOpen => intent.warn(None, reason),
            ErrorPolicy::FailClosed => {
                let fleet = intent.fleet;
                for &(backend, _) in fleet.model(intent.model).offers() {
                    intent.exclude(backend, reason);
                }
            }
        }
    }

    /// Turns the selection of the current model into a committed route or queue, picking
    /// again while the selected backend is no longer a candidate or is vetoed.
    fn settle_selection(&self, intent: &mut RoutingIntent<'_>, timing: bool) -> Option<Committed> {
        // Each pass either commits or removes one candidate, so this ends.
        loop {
            if intent.scratch.candidates.is_empty() {
                return None;
            }
            match intent.selection {
                Selection::None => {
                    // No selecting stage: take the heaviest remaining candidate.
                    let best = intent.scratch.candidates.iter().fold(
                        None::<(BackendId, f64)>,
                        |best, b| {
                            let w = intent.weight(b);
                            match best {
                                Some((_, bw)) if bw >= w => best,
                                _ => Some((b, w)),
                            }
                        },
                    );
                    let (backend, weight) = best?;
                    intent.selection = Selection::Route {
                        backend,
                        score: weight,
                    };
                }
                Selection::Route { backend, score } => {
                    if !intent.is_candidate(backend) {
                        self.select_again(intent, timing);
                        continue;
                    }
                    match self.commit(intent, backend) {
                        Ok(ticket) => return Some(Committed::Route { ticket, score }),
                        Err((stage, reason)) => {
                            intent.stage = stage;
                            intent.exclude(backend, reason);
                            self.select_again(intent, timing);
                        }
                    }
                }
                Selection::Queue {
                    backend,
                    cause,
                    estimated_wait_ms,
                    fallback_backend,
                } => {
                    if !intent.is_candidate(backend) {
                        self.select_again(intent, timing);
                        continue;
                    }
                    // The ready alternative is committed like a route (the budget
                    // reserves its cost, it counts in flight), so that offers made to
                    // queued requests cannot together pass a limit. A veto excludes it
                    // and the selecting stage picks again.
                    let fallback = match fallback_backend.filter(|b| intent.is_candidate(*b)) {
                        None => None,
                        Some(ready) => match self.commit(intent, ready) {
                            Ok(ticket) => Some(ticket),
                            Err((stage, reason)) => {
                                intent.stage = stage;
                                intent.exclude(ready, reason);
                                self.select_again(intent, timing);
                                continue;
                            }
                        },
                    };
                    return Some(Committed::Queue {
                        backend,
                        cause,
                        estimated_wait_ms,
                        fallback,
                    });
                }
            }
        }
    }

    fn select_again(&self, intent: &mut RoutingIntent<'_>, timing: bool) {
        let selected_by = intent.selected_by;
        intent.selection = Selection::None;
        intent.selected_by = None;
        if let Some((stage, phase)) = selected_by {
            self.run_stage(usize::from(stage), intent, timing, phase);
        }
    }

    /// Asks every stage to accept the route; on a veto, releases what earlier stages
    /// reserved and reports the vetoing stage and its reason.
    fn commit(
        &self,
        intent: &RoutingIntent<'_>,
        backend: BackendId,
    ) -> Result<RouteTicket, (u16, Reason)> {
        let ticket = RouteTicket {
            backend,
            model: intent.model,
            cost_estimate: intent.cost_estimate(backend),
            fallback_used: intent.attempt > 0,
            decided_at_secs: intent.now_secs,
            id: next_route_id(),
            tenant: intent.tenant,
        };
        for (index, stage) in self.stages.iter().enumerate() {
            if let Err(reason) = stage.reconciler.on_route(&ticket) {
                for earlier in &self.stages[..index] {
                    earlier.reconciler.on_settle(&ticket, Settlement::Cancelled);
                }
                return Err((index as u16, reason));
            }
        }
        self.fleet.backend(backend).live().begin_request();
        Ok(ticket)
    }

    fn reject_unknown(
        &self,
        requested: &str,
        requirements: RequestRequirements,
        scratch: Box<Scratch>,
    ) -> DecisionParts {
        let hint = match closest(requested, self.routes.names()) {
            Some(name) => format!("did you mean '{name}'? "),
            None => String::new(),
        };
        DecisionParts {
            plan: None,
            requirements,
            kind: RoutingDecision::Reject {
                reason: format!("no backend serves model '{requested}' and no alias names it"),
                rejections: Vec::new(),
                fix: Some(Fix {
                    reconciler: "analyzer",
                    suggested_action: format!(
                        "{hint}add a backend that serves '{requested}', or an alias in [routing.aliases]"
                    ),
                    admits: Vec::new(),
                }),
            },
            model: None,
            fallback_used: false,
            budget_status: BudgetStatus::Normal,
            ticket: None,
            scratch,
            queue_candidates: None,
        }
    }

    fn reject(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        scratch: &Scratch,
        tenant: Option<crate::TenantId>,
    ) -> RoutingDecision {
        let rejections = self.render_exclusions(plan, requirements, scratch);
        let primary = plan.attempts()[0].model;
        let servers = self.fleet.model(primary).servers().len();
        let name = self.fleet.model(primary).name();
        let mut reason = if servers == 1 {
            format!("the only backend serving '{name}' was excluded")
        } else {
            format!("all {servers} backends serving '{name}' were excluded")
        };
        if plan.attempts().len() > 1 {
            reason.push_str(&format!(
                ", and so were those of its {} fallback{}",
                plan.attempts().len() - 1,
                if plan.attempts().len() == 2 { "" } else { "s" }
            ));
        }
        let fix = self.best_fix(plan, requirements, tenant);
        RoutingDecision::Reject {
            reason,
            rejections,
            fix,
        }
    }

    /// Finds the stage whose fix would admit the most backends of the resolved model: a
    /// backend that only one stage would exclude is admitted by fixing that stage. Each
    /// stage is run alone over every server of the model to learn who excludes whom.
    fn best_fix(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        tenant: Option<crate::TenantId>,
    ) -> Option<Fix> {
        let tenant_constraints = tenant
            .and_then(|t| self.tenant_constraints.get(t.index()))
            .copied()
            .unwrap_or(Constraints::NONE);
        let attempt = plan.attempts()[0];
        let servers = self.fleet.model(attempt.model).servers();
        // Per backend: how many stages exclude it alone, and the first one that does.
        let mut excluded_by: Vec<(u16, Option<(u16, Reason)>)> = vec![(0, None); self.fleet.len()];
        let mut scratch = Scratch::default();
        let now_secs = self.clock.now_secs();
        for (index, stage) in self.stages.iter().enumerate() {
            let stage_index = index as u16;
            let mut intent = RoutingIntent::new(
                &self.fleet,
                &self.policies,
                &mut scratch,
                attempt.model,
                *requirements,
                attempt.constraints,
            );
            intent.tenant = tenant;
            intent.tenant_constraints = tenant_constraints;
            intent.constraints = attempt.constraints.tightened_by(&tenant_constraints);
            intent.stage = stage_index;
            intent.explaining = true;
            intent.now_secs = now_secs;
            let result = stage.reconciler.reconcile(&mut intent).and_then(|()| {
                intent.phase = Phase::Refine;
                stage.reconciler.refine(&mut intent)
            });
            let mut count = |backend: BackendId, reason: Reason| {
                let entry = &mut excluded_by[backend.index()];
                entry.0 += 1;
                entry.1.get_or_insert((stage_index, reason));
            };
            if result.is_err() && stage.on_error == ErrorPolicy::FailClosed {
                for b in servers.iter() {
                    count(b, Reason::new(Reason::STAGE_FAILED));
                }
                continue;
            }
            for e in &scratch.exclusions {
                count(e.backend, e.reason);
            }
        }
        // The stage that alone excludes the most backends (the earliest on a tie).
        let mut admitted_by = vec![0u32; self.stages.len()];
        for (_, only) in excluded_by.iter().filter(|(n, _)| *n == 1) {
            if let Some((stage, _)) = only {
                admitted_by[usize::from(*stage)] += 1;
            }
        }
        let (stage, _) = admitted_by
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
        let stage = stage as u16;
        let admitted: Vec<(BackendId, Reason)> = excluded_by
            .iter()
            .enumerate()
            .filter_map(|(i, (n, only))| match only {
                Some((s, reason)) if *n == 1 && *s == stage => {
                    Some((BackendId::new(i as u32), *reason))
                }
                _ => None,
            })
            .collect();
        let (first_backend, first_reason) = admitted[0];
        let explanation = self.explain(
            stage,
            &first_reason,
            attempt.model,
            Some(first_backend),
            requirements,
            &attempt.constraints,
            &[],
        );
        Some(Fix {
            reconciler: self.stages[usize::from(stage)].reconciler.name(),
            suggested_action: explanation.suggested_action.into_owned(),
            admits: admitted
                .iter()
                .map(|(b, _)| self.fleet.backend(*b).name().to_owned())
                .collect(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        stage: u16,
        reason: &Reason,
        model: ModelId,
        backend: Option<BackendId>,
        requirements: &RequestRequirements,
        constraints: &Constraints,
        errors: &[(u16, crate::ReconcileError)],
    ) -> Explanation {
        let name = self
            .stages
            .get(usize::from(stage))
            .map_or("pipeline", |s| s.reconciler.name());
        if reason.code == Reason::EXCLUDED_BY_CALLER && stage == Reason::PIPELINE_STAGE {
            return Explanation::new(
                "left out by the caller: an earlier attempt of this request failed there",
                "none needed: the request was decided again without it",
            );
        }
        if reason.code == Reason::STAGE_FAILED {
            let message = errors.get(reason.values[0] as usize).map_or_else(
                || "it returned an error".to_owned(),
                |(_, e)| e.message.to_string(),
            );
            return Explanation::new(
                format!("stage '{name}' failed: {message}"),
                format!("fix what the error names, or set [routing.on_error] {name} = \"fail_open\" to skip the stage when it fails"),
            );
        }
        let ctx = ExplainContext {
            fleet: &self.fleet,
            policies: &self.policies,
            requirements,
            constraints,
            model,
            backend,
        };
        match self.stages.get(usize::from(stage)) {
            Some(stage) => stage.reconciler.explain(reason, &ctx),
            None => Explanation::new("excluded by the pipeline", "see the stage's documentation"),
        }
    }

    fn render_exclusions(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        scratch: &Scratch,
    ) -> Vec<Rejection> {
        scratch
            .exclusions
            .iter()
            .map(|e| {
                let constraints = plan.constraints_for(e.model);
                let explanation = self.explain(
                    e.stage,
                    &e.reason,
                    e.model,
                    Some(e.backend),
                    requirements,
                    &constraints,
                    &scratch.errors,
                );
                Rejection {
                    backend: Arc::clone(self.fleet.backend(e.backend).shared_name()),
                    model: Arc::clone(self.fleet.model(e.model).shared_name()),
                    reconciler: self
                        .stages
                        .get(usize::from(e.stage))
                        .map_or("pipeline", |s| s.reconciler.name()),
                    reason: explanation.reason,
                    suggested_action: explanation.suggested_action,
                }
            })
            .collect()
    }
}

/// The candidates left in `scratch` with their recorded scores.
fn scored(scratch: &Scratch) -> Vec<(BackendId, Option<f64>)> {
    scratch
        .candidates
        .iter()
        .map(|b| {
            (
                b,
                scratch
                    .scored
                    .contains(b)
                    .then(|| scratch.scores[b.index()]),
            )
        })
        .collect()
}

/// A backend the stages would route to right now, without committing to it.
fn ready_choice(intent: &RoutingIntent<'_>) -> Option<BackendId> {
    match intent.selection {
        Selection::Route { backend, .. } => Some(backend),
        Selection::Queue {
            fallback_backend, ..
        } => fallback_backend,
        Selection::None => intent.scratch.candidates.iter().next(),
    }
    .filter(|b| intent.is_candidate(*b))
}

enum Committed {
    Route {
        ticket: RouteTicket,
        score: f64,
    },
    Queue {
        backend: BackendId,
        cause: QueueCause,
        estimated_wait_ms: u64,
        /// The committed ready alternative, if any.
        fallback: Option<RouteTicket>,
    },
}

/// Why a backend was chosen: its score and how many candidates competed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteReason {
    /// The winner's score.
    pub score: f64,
    /// Candidates left when the scheduler picked.
    pub candidates: u32,
}

impl fmt::Display for RouteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "highest score {} of {} candidate{}",
            Significant(self.score),
            self.candidates,
            if self.candidates == 1 { "" } else { "s" }
        )
    }
}

/// Why a request is to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueReason {
    /// Loading or saturated.
    pub cause: QueueCause,
    /// Candidates left.
    pub candidates: u32,
}

impl fmt::Display for QueueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            QueueCause::Loading => f.write_str("the best backend is loading the model"),
            QueueCause::Saturated => write!(
                f,
                "all {} candidate{} at max_concurrency",
                self.candidates,
                if self.candidates == 1 { " is" } else { "s are" }
            ),
        }
    }
}

/// A number shown with three significant digits.
#[derive(Clone, Copy, Debug)]
pub struct Significant(pub f64);

impl fmt::Display for Significant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == 0.0 || !v.is_finite() {
            return write!(f, "{v}");
        }
        let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
        write!(f, "{v:.digits$}")
    }
}

/// The change that would admit the most backends of a rejected request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    /// The stage to satisfy.
    pub reconciler: &'static str,
    /// What to do.
    pub suggested_action: String,
    /// The backends it would admit.
    pub admits: Vec<String>,
}

/// What the pipeline decided.
#[derive(Clone, Debug, PartialEq)]
pub enum RoutingDecision {
    /// Send the request to `backend`.
    Route {
        /// The chosen backend.
        backend: BackendId,
        /// The model it serves the request with.
        model: ModelId,
        /// Why it won.
        reason: RouteReason,
        /// The estimated cost there.
        cost_estimate: CostEstimate,
    },
    /// Wait: the best backend is loading, or every candidate is saturated.
    Queue {
        /// The backend worth waiting for.
        backend: BackendId,
        /// The model.
        model: ModelId,
        /// Why.
        reason: QueueReason,
        /// Estimated wait.
        estimated_wait_ms: u64,
        /// A ready backend to use instead of waiting, if any: of the same model, else of
        /// a fallback model. It is committed like a Route (every stage accepted it, the
        /// budget reserved its cost, it counts in flight), and the [`Decision`] holds
        /// its guard: see [`Decision::take_guard`].
        fallback_backend: Option<BackendId>,
        /// The model `fallback_backend` would serve.
        fallback_model: Option<ModelId>,
    },
    /// No backend may serve the request.
    Reject {
        /// A one-line summary.
        reason: String,
        /// Every excluded backend, for every model tried.
        rejections: Vec<Rejection>,
        /// The single most useful change, if one can be found.
        fix: Option<Fix>,
    },
}

impl RoutingDecision {
    /// `"route"`, `"queue"` or `"reject"`.
    pub fn kind(&self) -> &'static str {
        match self {
            RoutingDecision::Route { .. } => "route",
            RoutingDecision::Queue { .. } => "queue",
            RoutingDecision::Reject { .. } => "reject",
        }
    }
}

mod sealed {
    /// Keeps [`PipelineRef`](super::PipelineRef) to the two handles the pipeline hands out.
    pub trait Sealed {}
    impl Sealed for &super::Pipeline {}
    impl Sealed for std::sync::Arc<super::Pipeline> {}
}

/// How a [`Decision`] and its [`RouteGuard`] hold the pipeline that made them: borrowed
/// (`&Pipeline`, from [`Pipeline::decide`]: nothing shared is written) or shared
/// (`Arc<Pipeline>`, from [`Pipeline::decide_owned`]: `Send + 'static`, for servers).
/// Sealed: those are the only two.
pub trait PipelineRef: std::ops::Deref<Target = Pipeline> + Clone + sealed::Sealed {}

impl PipelineRef for &Pipeline {}
impl PipelineRef for Arc<Pipeline> {}

/// A decision that holds a share of its pipeline: `Send + 'static`.
pub type OwnedDecision = Decision<Arc<Pipeline>>;

/// A route guard that holds a share of its pipeline: `Send + 'static`, so it can move
/// into the task that streams the answer and be finished there.
pub type OwnedRouteGuard = RouteGuard<Arc<Pipeline>>;

/// What [`Pipeline::decide_parts`] works out, before it is tied to a pipeline handle.
struct DecisionParts {
    plan: Option<u32>,
    requirements: RequestRequirements,
    kind: RoutingDecision,
    model: Option<ModelId>,
    fallback_used: bool,
    budget_status: BudgetStatus,
    ticket: Option<RouteTicket>,
    scratch: Box<Scratch>,
    queue_candidates: Option<Vec<(BackendId, Option<f64>)>>,
}

/// A decision, with what is needed to explain it and the [`RouteGuard`] of the backend
/// it committed: a Route's backend, or a Queue's `fallback_backend`.
///
/// `P` is how it holds the pipeline ([`PipelineRef`]): `Decision<&Pipeline>` from
/// [`Pipeline::decide`], [`OwnedDecision`] from [`Pipeline::decide_owned`].
///
/// Dropping the decision gives its buffers back to the pipeline's pool. Dropping it
/// while it still holds a Route's guard counts the route as failed; dropping it while it
/// holds a Queue's unused fallback guard withdraws the offer (as
/// [`RouteGuard::cancel`]: the reservation is released, no outcome is recorded). Take
/// the guard with [`take_guard`](Self::take_guard) to keep it.
#[derive(Debug)]
pub struct Decision<P: PipelineRef> {
    pipeline: P,
    plan: Option<u32>,
    requirements: RequestRequirements,
    kind: RoutingDecision,
    model: Option<ModelId>,
    fallback_used: bool,
    budget_status: BudgetStatus,
    guard: Option<RouteGuard<P>>,
    scratch: Option<Box<Scratch>>,
    /// For a Queue that probed fallbacks: the queued model's candidates and scores.
    queue_candidates: Option<Vec<(BackendId, Option<f64>)>>,
}

impl<P: PipelineRef> Decision<P> {
    fn assemble(pipeline: P, parts: DecisionParts) -> Self {
        let guard = parts.ticket.map(|ticket| RouteGuard {
            pipeline: pipeline.clone(),
            ticket,
            settled: false,
        });
        Self {
            pipeline,
            plan: parts.plan,
            requirements: parts.requirements,
            kind: parts.kind,
            model: parts.model,
            fallback_used: parts.fallback_used,
            budget_status: parts.budget_status,
            guard,
            scratch: Some(parts.scratch),
            queue_candidates: parts.queue_candidates,
        }
    }

    fn scratch(&self) -> &Scratch {
        self.scratch.as_deref().expect("scratch is held until drop")
    }

    fn plan(&self) -> Option<&RoutePlan> {
        self.plan.map(|i| self.pipeline.routes.plan_at(i))
    }

    /// What was decided.
    pub fn kind(&self) -> &RoutingDecision {
        &self.kind
    }

    /// The backend chosen (Route) or waited for (Queue).
    pub fn backend(&self) -> Option<&Backend> {
        match self.kind {
            RoutingDecision::Route { backend, .. } | RoutingDecision::Queue { backend, .. } => {
                Some(self.pipeline.fleet.backend(backend))
            }
            RoutingDecision::Reject { .. } => None,
        }
    }

    /// The model that will serve, after aliases and fallbacks (None for a Reject).
    pub fn model(&self) -> Option<&str> {
        self.model.map(|m| self.pipeline.fleet.model(m).name())
    }

    /// The requested name's alias chain, when it was known.
    pub fn alias_chain(&self) -> Vec<&str> {
        self.plan()
            .map_or_else(Vec::new, |p| p.alias_chain().collect())
    }

    /// Whether a fallback model serves the request.
    pub fn fallback_used(&self) -> bool {
        self.fallback_used
    }

    /// The most severe budget status a stage reported.
    pub fn budget_status(&self) -> BudgetStatus {
        self.budget_status
    }

    /// The request's derived requirements.
    pub fn requirements(&self) -> &RequestRequirements {
        &self.requirements
    }

    /// The cost estimate on the chosen (or awaited) backend; for a Reject, the tokens
    /// with no cost.
    pub fn cost_estimate(&self) -> Option<CostEstimate> {
        match &self.kind {
            RoutingDecision::Route { cost_estimate, .. } => Some(*cost_estimate),
            RoutingDecision::Queue { backend, model, .. } => Some(cost_estimate(
                &self.requirements,
                self.pipeline.fleet.model(*model).offer(*backend),
            )),
            RoutingDecision::Reject { .. } => None,
        }
    }

    /// Every excluded backend with its reason, rendered now.
    pub fn rejections(&self) -> Vec<Rejection> {
        match (&self.kind, self.plan()) {
            (RoutingDecision::Reject { rejections, .. }, _) => rejections.clone(),
            (_, Some(plan)) => {
                self.pipeline
                    .render_exclusions(plan, &self.requirements, self.scratch())
            }
            (_, None) => Vec::new(),
        }
    }

    /// The decision's warnings, rendered now.
    pub fn warnings(&self) -> Vec<String> {
        let scratch = self.scratch();
        let plan = self.plan();
        scratch
            .warnings
            .iter()
            .map(|w| {
                let constraints = plan.map_or(Constraints::NONE, |p| p.constraints_for(w.model));
                self.pipeline
                    .explain(
                        w.stage,
                        &w.reason,
                        w.model,
                        w.backend,
                        &self.requirements,
                        &constraints,
                        &scratch.errors,
                    )
                    .reason
                    .into_owned()
            })
            .collect()
    }

    /// The candidates left for the final model, with their scores where the scheduler
    /// computed one, best first.
    pub fn scored_candidates(&self) -> Vec<(&Backend, Option<f64>)> {
        if matches!(self.kind, RoutingDecision::Reject { .. }) {
            return Vec::new();
        }
        let fleet: &Fleet = &self.pipeline.fleet;
        let mut list: Vec<_> = match &self.queue_candidates {
            Some(list) => list.clone(),
            None => scored(self.scratch()),
        }
        .into_iter()
        .map(|(b, score)| (fleet.backend(b), score))
        .collect();
        list.sort_by(|a, b| {
            b.1.unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.1.unwrap_or(f64::NEG_INFINITY))
        });
        list
    }

    /// Takes the guard the decision holds, once:
    /// - for a Route, the route's: send the request to [`RouteGuard::backend`] and
    ///   finish the guard with the outcome;
    /// - for a Queue that offers a `fallback_backend`, the offer's (its backend is the
    ///   fallback, its ticket names the model it serves): finish it if the fallback
    ///   serves the request, or [`cancel`](RouteGuard::cancel) it to wait instead,
    ///   which releases what was reserved and records nothing. Until then the offer
    ///   holds its budget reservation and an in-flight slot, so that offers made to many
    ///   queued requests cannot together pass a limit;
    /// - otherwise `None`.
    ///
    /// A caller that only reports the decision (a dry run) cancels whatever it gets.
    pub fn take_guard(&mut self) -> Option<RouteGuard<P>> {
        self.guard.take()
    }

    /// The pipeline that decided.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The handle the decision holds its pipeline by (a borrow, or a share for an
    /// [`OwnedDecision`]).
    pub fn pipeline_ref(&self) -> &P {
        &self.pipeline
    }
}

impl<P: PipelineRef> Drop for Decision<P> {
    fn drop(&mut self) {
        // An offer nobody took was never used: withdraw it rather than count a failure.
        if matches!(self.kind, RoutingDecision::Queue { .. }) {
            if let Some(offer) = self.guard.take() {
                offer.cancel();
            }
        }
        if let Some(scratch) = self.scratch.take() {
            return_scratch(scratch);
        }
    }
}

/// A routed request in flight. Finish it with the outcome; dropping it unfinished counts
/// as a failure and releases what stages reserved.
///
/// `P` is how it holds the pipeline ([`PipelineRef`]); an [`OwnedRouteGuard`] is
/// `Send + 'static`.
#[derive(Debug)]
#[must_use = "finish the guard with the request's outcome; dropping it counts as a failure"]
pub struct RouteGuard<P: PipelineRef> {
    pipeline: P,
    ticket: RouteTicket,
    settled: bool,
}

impl<P: PipelineRef> RouteGuard<P> {
    /// The route.
    pub fn ticket(&self) -> &RouteTicket {
        &self.ticket
    }

    /// The backend to send the request to.
    pub fn backend(&self) -> &Backend {
        self.pipeline.fleet.backend(self.ticket.backend)
    }

    /// The name of the model to ask the backend for (after aliases and fallbacks).
    pub fn model(&self) -> &str {
        self.pipeline.fleet.model(self.ticket.model).name()
    }

    /// The pipeline the route was decided on.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
    /// Reports how the request went: updates the backend's in-flight count and latency
    /// average, and lets stages settle (the budget with the actual cost, quality with
    /// the outcome). The settlement's time is the pipeline's clock now, whatever
    /// latency the outcome reports.
    pub fn finish(mut self, outcome: Outcome) {
        let at_secs = self.pipeline.clock.now_secs();
        if outcome.success {
            self.backend()
                .live()
                .record_latency(outcome.latency, at_secs);
        }
        self.settle(Settlement::Finished {
            outcome: &outcome,
            at_secs,
        });
    }

    /// Withdraws the route before any request was sent (a dry run): releases what was
    /// reserved and records no outcome.
    pub fn cancel(mut self) {
        self.settle(Settlement::Cancelled);
    }

    fn settle(&mut self, settlement: Settlement<'_>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.backend().live().end_request();
        for stage in self.pipeline.stages.iter() {
            stage.reconciler.on_settle(&self.ticket, settlement);
        }
    }
}

impl<P: PipelineRef> Drop for RouteGuard<P> {
    fn drop(&mut self) {
        if !self.settled {
            let at_secs = self.pipeline.clock.now_secs();
            self.settle(Settlement::Abandoned { at_secs });
        }
    }
}
