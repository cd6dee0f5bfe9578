//! Deciding: every stage's reconcile and refine passes over each model of the plan,
//! then the selector's pick committed into a route or queue (the selector picks again
//! after a veto), with buffers from a per-thread pool.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Pipeline, Stage};
use crate::decision::{DecisionParts, QueueReason, RouteReason, RoutingDecision};
use crate::intent::Scratch;
use crate::routes::RoutePlan;
use crate::selector::Picked;
use crate::{
    BackendId, BudgetStatus, Constraints, ErrorPolicy, Pick, Reason, Request, RouteTicket,
    RoutingIntent, Settlement, Shortlist, TierMode,
};

/// Which of a stage's two passes is running; see [`Reconciler::refine`](crate::Reconciler::refine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reconcile,
    Refine,
}

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
        // later fallback instead, found through the same stages and selector (so it
        // obeys the same constraints) and committed like a route. The queued model's
        // candidates are kept for the explanation.
        let mut queue_candidates = None;
        if let Some((pick, offer @ None)) = &mut found {
            if pick.is_queue() && attempt + 1 < plan.attempts().len() {
                queue_candidates = Some(scored(intent.scratch));
                for (later, plan_attempt) in plan.attempts().iter().enumerate().skip(attempt + 1) {
                    intent.reset_for(plan_attempt.model, plan_attempt.constraints, later);
                    self.run_stages(&mut intent, timing);
                    // A route, or a queue's ready alternative, of this later model.
                    if let Some((_, Some(ticket))) = self.pick_and_commit(&mut intent, timing) {
                        *offer = Some(ticket);
                        break;
                    }
                }
            }
        }

        let (kind, ticket, model) = match found {
            Some((Pick(Picked::Route { score, .. }), Some(ticket))) => (
                RoutingDecision::Route {
                    backend: ticket.backend,
                    model: ticket.model,
                    reason: RouteReason { score, candidates },
                    cost_estimate: ticket.cost_estimate,
                },
                Some(ticket),
                Some(model),
            ),
            Some((
                Pick(Picked::Queue {
                    backend,
                    cause,
                    estimated_wait_ms,
                    ..
                }),
                offer,
            )) => (
                RoutingDecision::Queue {
                    backend,
                    model,
                    reason: QueueReason { cause, candidates },
                    estimated_wait_ms,
                    fallback_backend: offer.map(|t| t.backend),
                    fallback_model: offer.map(|t| t.model),
                },
                offer,
                Some(model),
            ),
            // A route is always committed (`pick_and_commit`), so this is a Reject.
            Some((Pick(Picked::Route { .. }), None)) | None => (
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
    ) -> Option<(Pick, Option<RouteTicket>)> {
        for (attempt, plan_attempt) in plan.attempts().iter().enumerate() {
            intent.reset_for(plan_attempt.model, plan_attempt.constraints, attempt);
            self.run_stages(intent, timing);
            if let Some(outcome) = self.pick_and_commit(intent, timing) {
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

    /// The selector's pick among the current model's candidates, committed: a route's
    /// backend, or a queue's ready alternative, must be accepted by every stage's
    /// `on_route`; a veto excludes it and the selector picks again. The ticket is the
    /// committed backend's (always there for a route; for a queue, when it offered a
    /// ready alternative). `None`: no candidate left, or the selector declined.
    fn pick_and_commit(
        &self,
        intent: &mut RoutingIntent<'_>,
        timing: bool,
    ) -> Option<(Pick, Option<RouteTicket>)> {
        // Each veto removes a candidate, so this ends.
        loop {
            let pick = self.pick(intent, timing)?;
            let Some(ready) = pick.ready() else {
                return Some((pick, None));
            };
            match self.commit(intent, ready) {
                Ok(ticket) => return Some((pick, Some(ticket))),
                Err((stage, reason)) => {
                    intent.stage = stage;
                    intent.exclude(ready, reason);
                }
            }
        }
    }

    /// Asks the selector to pick among the remaining candidates, if any. A pick that
    /// names a backend that is no longer a candidate (a selector that kept a candidate
    /// from an earlier call) counts as declining, so that nothing a stage excluded is
    /// ever routed to.
    fn pick(&self, intent: &mut RoutingIntent<'_>, timing: bool) -> Option<Pick> {
        if intent.scratch.candidates.is_empty() {
            return None;
        }
        let pick = if timing {
            self.pick_timed(intent)
        } else {
            self.selector.select(&mut Shortlist::new(intent))
        }?;
        let picked = [Some(pick.backend()), pick.ready()];
        if picked.iter().flatten().all(|b| intent.is_candidate(*b)) {
            Some(pick)
        } else {
            stale_pick(self.selector.name());
            None
        }
    }

    #[cold]
    fn pick_timed(&self, intent: &mut RoutingIntent<'_>) -> Option<Pick> {
        let start = Instant::now();
        let pick = self.selector.select(&mut Shortlist::new(intent));
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.selector_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.selector_calls.fetch_add(1, Ordering::Relaxed);
        pick
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

#[cold]
fn stale_pick(selector: &str) {
    tracing::warn!(
        selector,
        "the selector picked a backend that is not a candidate; the model gets no pick"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    use super::*;
    use crate::{
        BackendSpec, Fleet, HeaviestCandidate, ModelSpec, QueueCause, ReconcileError, Reconciler,
        RoutingDecision, Selector, Verdict,
    };

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

    /// Routes to the first candidate; counts its calls and the candidates it saw.
    #[derive(Debug, Default)]
    struct First {
        calls: AtomicU32,
        saw: AtomicU32,
    }

    impl Selector for First {
        fn name(&self) -> &'static str {
            "first"
        }
        fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.saw.store(shortlist.len() as u32, Ordering::Relaxed);
            shortlist.first().map(|c| Pick::route(c, 1.0))
        }
    }

    /// Excludes one backend, in `reconcile` or in `refine`.
    #[derive(Debug)]
    struct Exclude {
        name: &'static str,
        in_refine: bool,
    }

    impl Exclude {
        fn apply(&self, intent: &mut RoutingIntent<'_>) {
            let fleet = intent.fleet();
            intent.visit_candidates(|c| {
                if fleet.backend(c.backend).name() == self.name {
                    Verdict::Exclude(Reason::new(5))
                } else {
                    Verdict::Keep
                }
            });
        }
    }

    impl Reconciler for Exclude {
        fn name(&self) -> &'static str {
            "exclude"
        }
        fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            if !self.in_refine {
                self.apply(intent);
            }
            Ok(())
        }
        fn refine(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            if self.in_refine {
                self.apply(intent);
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

    /// Scales each named backend's weight.
    #[derive(Debug)]
    struct Weigh(&'static [(&'static str, f64)]);

    impl Reconciler for Weigh {
        fn name(&self) -> &'static str {
            "weigh"
        }
        fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            let fleet = intent.fleet();
            intent.visit_candidates(|c| {
                let name = fleet.backend(c.backend).name();
                self.0
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(Verdict::Keep, |(_, f)| Verdict::Scale(*f))
            });
            Ok(())
        }
    }

    fn route_of(pipeline: &Pipeline) -> (Option<String>, Option<f64>) {
        let decision = pipeline.decide(&Request::new("m"));
        let score = match decision.kind() {
            RoutingDecision::Route { reason, .. } => Some(reason.score),
            _ => None,
        };
        (decision.backend().map(|b| b.name().to_owned()), score)
    }

    #[test]
    fn the_selector_picks_once_after_every_stage_ran_both_passes() {
        // Whichever pass excludes "a", and wherever the stage sits, the selector sees the
        // final candidates, once.
        for in_refine in [false, true] {
            let selector = Arc::new(First::default());
            let pipeline = Pipeline::builder(fleet(&["a", "b", "c"]))
                .selector(Arc::clone(&selector))
                .stage(Exclude {
                    name: "a",
                    in_refine,
                })
                .build()
                .expect("a pipeline");
            assert_eq!(route_of(&pipeline).0.as_deref(), Some("b"));
            assert_eq!(selector.calls.load(Ordering::Relaxed), 1);
            assert_eq!(selector.saw.load(Ordering::Relaxed), 2);
        }
    }

    #[test]
    fn a_veto_makes_the_selector_pick_again_among_what_is_left() {
        let fleet = fleet(&["a", "b", "c"]);
        let a = fleet.backend_by_name("a").expect("a").id();
        let selector = Arc::new(First::default());
        let pipeline = Pipeline::builder(fleet)
            .stage(Veto(a))
            .selector(Arc::clone(&selector))
            .build()
            .expect("a pipeline");
        let decision = pipeline.decide(&Request::new("m"));
        assert_eq!(decision.backend().map(|b| b.name()), Some("b"));
        // Once for the model, once more after the veto, without "a".
        assert_eq!(selector.calls.load(Ordering::Relaxed), 2);
        assert_eq!(selector.saw.load(Ordering::Relaxed), 2);
        let rejections = decision.rejections();
        assert_eq!(rejections.len(), 1);
        assert_eq!(&*rejections[0].backend, "a");
        assert_eq!(rejections[0].reconciler, "veto");
    }

    #[test]
    fn without_a_selector_the_heaviest_candidate_is_picked_earliest_on_ties() {
        let pipeline = Pipeline::builder(fleet(&["a", "b", "c"]))
            .stage(Weigh(&[("b", 2.0), ("c", 2.0)]))
            .build()
            .expect("a pipeline");
        assert_eq!(pipeline.selector().name(), "heaviest");
        assert_eq!(route_of(&pipeline), (Some("b".to_owned()), Some(2.0)));

        let pipeline = Pipeline::builder(fleet(&["a", "b"]))
            .selector(HeaviestCandidate)
            .build()
            .expect("a pipeline");
        assert_eq!(route_of(&pipeline), (Some("a".to_owned()), Some(1.0)));
    }

    /// Declines every pick; or queues on the first candidate with the last as the
    /// ready alternative.
    #[derive(Debug)]
    struct Queues {
        decline: bool,
    }

    impl Selector for Queues {
        fn name(&self) -> &'static str {
            "queues"
        }
        fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
            if self.decline {
                return None;
            }
            let mut last = None;
            shortlist.each(|c| {
                last = Some(c);
                true
            });
            let first = shortlist.first()?;
            let instead = last.filter(|l| l.backend != first.backend);
            Some(Pick::queue(first, QueueCause::Loading, 500, instead))
        }
    }

    #[test]
    fn a_selector_that_declines_leaves_the_model_without_a_route() {
        let pipeline = Pipeline::builder(fleet(&["a", "b"]))
            .selector(Queues { decline: true })
            .build()
            .expect("a pipeline");
        let decision = pipeline.decide(&Request::new("m"));
        assert!(matches!(decision.kind(), RoutingDecision::Reject { .. }));
    }

    #[test]
    fn a_queues_ready_alternative_is_committed_and_a_veto_of_it_picks_again() {
        let fleet = fleet(&["a", "b", "c"]);
        let c = fleet.backend_by_name("c").expect("c").id();
        let pipeline = Pipeline::builder(Arc::clone(&fleet))
            .stage(Veto(c))
            .selector(Queues { decline: false })
            .build()
            .expect("a pipeline");
        let mut decision = pipeline.decide(&Request::new("m"));
        let RoutingDecision::Queue {
            backend,
            fallback_backend,
            estimated_wait_ms,
            ..
        } = *decision.kind()
        else {
            panic!("a queue: {:?}", decision.kind())
        };
        assert_eq!(fleet.backend(backend).name(), "a");
        assert_eq!(estimated_wait_ms, 500);
        // "c" was vetoed: the selector picked again and offered "b".
        assert_eq!(fallback_backend.map(|b| fleet.backend(b).name()), Some("b"));
        let guard = decision.take_guard().expect("the offer's guard");
        assert_eq!(guard.backend().name(), "b");
        assert_eq!(fleet.backend_by_name("b").unwrap().live().in_flight(), 1);
        guard.cancel();
    }
}
