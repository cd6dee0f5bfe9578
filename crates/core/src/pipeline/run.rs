//! Deciding: every stage's reconcile and refine passes over each model of the plan,
//! then the selection settled into a committed route or queue (picking again after a
//! veto), with buffers from a per-thread pool.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Pipeline, Stage};
use crate::decision::{DecisionParts, QueueReason, RouteReason, RoutingDecision};
use crate::intent::{Phase, Scratch};
use crate::routes::RoutePlan;
use crate::{
    BackendId, BudgetStatus, Constraints, ErrorPolicy, QueueCause, Reason, Request, RouteTicket,
    RoutingIntent, Selection, Settlement, TierMode,
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

pub(crate) fn return_scratch(scratch: Box<Scratch>) {
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
impl Pipeline {
    pub(super) fn decide_parts(&self, request: &Request<'_>) -> DecisionParts {
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
        let reason = Reason::pipeline(Reason::STAGE_FAILED, [error_index, 0.0, 0.0]);
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
}

/// The candidates left in `scratch` with their recorded scores.
pub(crate) fn scored(scratch: &Scratch) -> Vec<(BackendId, Option<f64>)> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    use super::*;
    use crate::{BackendSpec, Fleet, ModelSpec, ReconcileError, Reconciler};

    fn fleet(names: &[&str]) -> Arc<Fleet> {
        Arc::new(
            Fleet::new(
                names
                    .iter()
                    .map(|n| {
                        BackendSpec::new(*n, "http://127.0.0.1:1").with_model(ModelSpec::new("m"))
                    })
                    .collect(),
            )
            .expect("a valid fleet"),
        )
    }

    /// How often a [`Picker`] ran each pass.
    #[derive(Debug, Default)]
    struct Calls {
        reconcile: AtomicU32,
        refine: AtomicU32,
    }

    /// Selects the first remaining candidate, in `reconcile` or in `refine`.
    #[derive(Debug)]
    struct Picker {
        in_refine: bool,
        calls: Arc<Calls>,
    }

    impl Picker {
        fn pick(intent: &mut RoutingIntent<'_>) {
            if let Some(first) = intent.candidates().iter().next() {
                intent.select(first, 1.0);
            }
        }
    }

    impl Reconciler for Picker {
        fn name(&self) -> &'static str {
            "picker"
        }
        fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            self.calls.reconcile.fetch_add(1, Ordering::Relaxed);
            if !self.in_refine {
                Self::pick(intent);
            }
            Ok(())
        }
        fn refine(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            self.calls.refine.fetch_add(1, Ordering::Relaxed);
            if self.in_refine {
                Self::pick(intent);
            }
            Ok(())
        }
    }

    /// Vetoes routes to one backend.
    #[derive(Debug)]
    struct Veto(BackendId);

    impl Reconciler for Veto {
        fn name(&self) -> &'static str {
            "veto"
        }
        fn reconcile(&self, _intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            Ok(())
        }
        fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
            if ticket.backend == self.0 {
                Err(Reason::new(7))
            } else {
                Ok(())
            }
        }
    }

    fn intent<'a>(pipeline: &'a Pipeline, scratch: &'a mut Scratch) -> RoutingIntent<'a> {
        let model = pipeline.fleet.model_id("m").expect("model m");
        let constraints = pipeline.routes.plan("m").expect("a plan").attempts()[0].constraints;
        scratch.prepare(pipeline.fleet.len());
        RoutingIntent::new(
            &pipeline.fleet,
            &pipeline.policies,
            scratch,
            model,
            Request::new("m").requirements(),
            constraints,
        )
    }

    fn id(pipeline: &Pipeline, name: &str) -> BackendId {
        pipeline
            .fleet
            .backend_by_name(name)
            .expect("a backend")
            .id()
    }

    #[test]
    fn select_again_reruns_the_selecting_stage_in_the_pass_it_selected_in() {
        for in_refine in [false, true] {
            let calls = Arc::new(Calls::default());
            let pipeline = Pipeline::builder(fleet(&["a", "b"]))
                .stage(crate::RequestAnalyzer)
                .stage(Picker {
                    in_refine,
                    calls: Arc::clone(&calls),
                })
                .build()
                .expect("a pipeline");
            let mut scratch = Scratch::default();
            let mut intent = intent(&pipeline, &mut scratch);
            pipeline.run_stages(&mut intent, false);
            let phase = if in_refine {
                Phase::Refine
            } else {
                Phase::Reconcile
            };
            assert_eq!(intent.selected_by, Some((1, phase)));
            let a = id(&pipeline, "a");
            assert!(matches!(intent.selection, Selection::Route { backend, .. } if backend == a));
            let before = (
                calls.reconcile.load(Ordering::Relaxed),
                calls.refine.load(Ordering::Relaxed),
            );

            intent.exclude(a, Reason::new(7));
            pipeline.select_again(&mut intent, false);
            let b = id(&pipeline, "b");
            assert!(
                matches!(intent.selection, Selection::Route { backend, .. } if backend == b),
                "the selecting stage picked again among what is left: {:?}",
                intent.selection
            );
            assert_eq!(intent.selected_by, Some((1, phase)));
            let after = (
                calls.reconcile.load(Ordering::Relaxed),
                calls.refine.load(Ordering::Relaxed),
            );
            let expected = if in_refine {
                (before.0, before.1 + 1)
            } else {
                (before.0 + 1, before.1)
            };
            assert_eq!(after, expected, "only the pass that selected runs again");
        }
    }

    #[test]
    fn select_again_without_a_selecting_stage_clears_the_selection() {
        let pipeline = Pipeline::builder(fleet(&["a", "b"]))
            .stage(crate::RequestAnalyzer)
            .build()
            .expect("a pipeline");
        let mut scratch = Scratch::default();
        let mut intent = intent(&pipeline, &mut scratch);
        pipeline.run_stages(&mut intent, false);
        // A selection nobody owns (as the pipeline's own fallback pick makes).
        intent.selection = Selection::Route {
            backend: id(&pipeline, "a"),
            score: 1.0,
        };
        pipeline.select_again(&mut intent, false);
        assert_eq!(intent.selection, Selection::None);
        assert_eq!(intent.selected_by, None);
    }

    #[test]
    fn a_veto_makes_the_selecting_stage_pick_the_next_backend() {
        let calls = Arc::new(Calls::default());
        let fleet = fleet(&["a", "b", "c"]);
        let a = fleet.backend_by_name("a").expect("a").id();
        let pipeline = Pipeline::builder(fleet)
            .stage(Picker {
                in_refine: false,
                calls: Arc::clone(&calls),
            })
            .stage(Veto(a))
            .build()
            .expect("a pipeline");
        let decision = pipeline.decide(&Request::new("m"));
        assert_eq!(decision.backend().map(|b| b.name()), Some("b"));
        // Once for the model, once more after the veto.
        assert_eq!(calls.reconcile.load(Ordering::Relaxed), 2);
        let rejections = decision.rejections();
        assert_eq!(rejections.len(), 1);
        assert_eq!(&*rejections[0].backend, "a");
        assert_eq!(rejections[0].reconciler, "veto");
    }
}
