//! What a decision hands back: the [`RoutingDecision`] (route, queue or reject) with its
//! reasons, the [`Decision`] that can explain it, and the [`RouteGuard`] of a committed
//! route.

use std::fmt;
use std::sync::Arc;

use crate::intent::{cost_estimate, Scratch};
use crate::pipeline::{return_scratch, scored, Pipeline, PipelineRef};
use crate::routes::RoutePlan;
use crate::{
    Backend, BackendId, BudgetStatus, Constraints, CostEstimate, Fleet, ModelId, Outcome,
    QueueCause, Rejection, RequestRequirements, RouteTicket, Settlement,
};

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
    /// `"route"`, `"queue"` or `"reject"`, as written in JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoutingDecision::Route { .. } => "route",
            RoutingDecision::Queue { .. } => "queue",
            RoutingDecision::Reject { .. } => "reject",
        }
    }
}
/// A decision that holds a share of its pipeline: `Send + 'static`.
pub type OwnedDecision = Decision<Arc<Pipeline>>;

/// A route guard that holds a share of its pipeline: `Send + 'static`, so it can move
/// into the task that streams the answer and be finished there.
pub type OwnedRouteGuard = RouteGuard<Arc<Pipeline>>;

/// What [`Pipeline::decide_parts`] works out, before it is tied to a pipeline handle.
pub(crate) struct DecisionParts {
    pub(crate) plan: Option<u32>,
    pub(crate) requirements: RequestRequirements,
    pub(crate) kind: RoutingDecision,
    pub(crate) model: Option<ModelId>,
    pub(crate) fallback_used: bool,
    pub(crate) budget_status: BudgetStatus,
    pub(crate) ticket: Option<RouteTicket>,
    pub(crate) scratch: Box<Scratch>,
    pub(crate) queue_candidates: Option<Vec<(BackendId, Option<f64>)>>,
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
    pub(crate) fn assemble(pipeline: P, parts: DecisionParts) -> Self {
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
