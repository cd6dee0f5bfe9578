//! The [`Reconciler`] trait: what one stage of the pipeline runs.
//!
//! A stage looks at the [`RoutingIntent`] and only ever narrows it: it excludes
//! candidates (with a [`Reason`]) or multiplies their score weight. It never picks: the
//! pipeline's one [`Selector`](crate::selector::Selector) does, among what every stage left. Because no stage can
//! re-admit a backend, stages compose in any order. Decisions are synchronous and
//! allocation-free; anything that does I/O happens outside them, in background tasks or
//! in [`Reconciler::on_settle`] after the response.
//!
//! Besides `reconcile`, a stage can take part in the two later moments of a request, as
//! the Kubernetes scheduler framework's Reserve and Unreserve points do:
//! [`Reconciler::on_route`] when a backend has been picked (the budget reserves spend
//! there, and may veto), and [`Reconciler::on_settle`] when the request ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::{BackendId, CostEstimate, ExplainContext, Explanation, ModelId, Reason, RoutingIntent};

/// Whether retrying the same decision later could succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A passing condition (a snapshot not loaded yet, a store briefly unavailable).
    Retryable,
    /// Retrying will not help until something is changed.
    Unresolvable,
}

/// A stage could not do its work. What happens next is the stage's [`ErrorPolicy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReconcileError {
    /// Retryable or not.
    pub kind: ErrorKind,
    /// What went wrong and what to do about it.
    pub message: Cow<'static, str>,
}

impl ReconcileError {
    /// A retryable error.
    pub fn retryable(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// An unresolvable error.
    pub fn unresolvable(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: ErrorKind::Unresolvable,
            message: message.into(),
        }
    }
}

/// What the pipeline does when a stage returns an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPolicy {
    /// Skip the stage: keep its candidates, add a warning to the decision.
    FailOpen,
    /// Exclude every remaining candidate, naming the stage's error.
    FailClosed,
}

impl ErrorPolicy {
    /// The policy as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorPolicy::FailOpen => "fail_open",
            ErrorPolicy::FailClosed => "fail_closed",
        }
    }
}

/// A route that was chosen: what stages see in [`Reconciler::on_route`] and
/// [`Reconciler::on_settle`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteTicket {
    /// The chosen backend.
    pub backend: BackendId,
    /// The model it will serve.
    pub model: ModelId,
    /// The estimated cost on that backend.
    pub cost_estimate: CostEstimate,
    /// Whether the model is a fallback of the requested one.
    pub fallback_used: bool,
    /// When the decision was made, in seconds since the Unix epoch.
    pub decided_at_secs: u64,
    /// This route's identity, unique in the process and never 0: a stage that keeps
    /// state for one route (the quality stage's half-open probe) keys it by this, so
    /// that only the route that took it can give it back.
    pub id: u64,
    /// The tenant the request was made for ([`Request::tenant`](crate::Request::tenant)).
    pub tenant: Option<crate::TenantId>,
}

/// How a request ended, as reported by the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Whether the backend answered successfully.
    pub success: bool,
    /// Time from sending to the last byte.
    pub latency: Duration,
    /// Time to the first token, for streaming responses.
    pub time_to_first_token: Option<Duration>,
    /// Actual input tokens, when the backend reported them.
    pub input_tokens: Option<u32>,
    /// Actual output tokens, when the backend reported them.
    pub output_tokens: Option<u32>,
}

impl Outcome {
    /// The longest latency or time to first token that averages count: longer reports
    /// count as this much. An hour is far beyond any generation a backend serves in one
    /// response; a longer report is a hung connection or a caller's bug, and one such
    /// sample must not dominate a backend's average for long.
    pub const MAX_LATENCY: Duration = Duration::from_secs(3_600);

    /// A success after `latency`.
    pub const fn success(latency: Duration) -> Self {
        Self {
            success: true,
            latency,
            time_to_first_token: None,
            input_tokens: None,
            output_tokens: None,
        }
    }

    /// A failure after `latency`.
    pub const fn failure(latency: Duration) -> Self {
        Self {
            success: false,
            latency,
            time_to_first_token: None,
            input_tokens: None,
            output_tokens: None,
        }
    }

    /// Sets the time to first token.
    pub const fn time_to_first_token(mut self, ttft: Duration) -> Self {
        self.time_to_first_token = Some(ttft);
        self
    }

    /// Sets the actual token usage.
    pub const fn usage(mut self, input_tokens: u32, output_tokens: u32) -> Self {
        self.input_tokens = Some(input_tokens);
        self.output_tokens = Some(output_tokens);
        self
    }
}

/// How a routed request ended, for [`Reconciler::on_settle`].
///
/// The time of a settlement is read from the pipeline's clock when the guard is
/// finished or dropped, once for every stage: never derived from what the caller
/// reports (a latency of a month must not move spend into next month), so that every
/// stage files the same request under the same second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Settlement<'a> {
    /// The caller finished the guard with this outcome.
    Finished {
        /// What the caller reported.
        outcome: &'a Outcome,
        /// When the guard was finished, in seconds since the Unix epoch.
        at_secs: u64,
    },
    /// The guard was dropped unfinished: count it as a failure, release what was reserved.
    Abandoned {
        /// When the guard was dropped, in seconds since the Unix epoch.
        at_secs: u64,
    },
    /// The route was withdrawn before any request was sent (a later stage vetoed it, or
    /// the caller cancelled a dry run): release what was reserved, record nothing.
    Cancelled,
}

impl Settlement<'_> {
    /// When the request ended, for the settlements that record something.
    pub const fn at_secs(&self) -> Option<u64> {
        match self {
            Settlement::Finished { at_secs, .. } | Settlement::Abandoned { at_secs } => {
                Some(*at_secs)
            }
            Settlement::Cancelled => None,
        }
    }
}

/// What one stage of the routing pipeline runs: a *reconciler*. Placed in a pipeline
/// (with its [`ErrorPolicy`]) it is a *stage*; [`name`](Self::name) is its *kind*.
///
/// Implementations must be cheap and must not allocate in `reconcile` on the path to a
/// Route decision; see the crate docs for the hot-path rules.
///
/// ```
/// use nexus_core::{stage::{Reason, ReconcileError, Verdict}, Reconciler, RoutingIntent};
///
/// /// Excludes backends whose id starts with "test-".
/// #[derive(Debug)]
/// struct NoTestBackends;
///
/// impl Reconciler for NoTestBackends {
///     fn name(&self) -> &'static str {
///         "no-test"
///     }
///     fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
///         let fleet = intent.fleet();
///         intent.visit_candidates(|candidate| {
///             if fleet.backend(candidate.backend).name().starts_with("test-") {
///                 Verdict::Exclude(Reason::new(1))
///             } else {
///                 Verdict::Keep
///             }
///         });
///         Ok(())
///     }
/// }
/// ```
pub trait Reconciler: Send + Sync + std::fmt::Debug {
    /// The reconciler's kind: the name it is registered and configured by, e.g.
    /// `"privacy"`; decisions name the stage by it.
    fn name(&self) -> &'static str;

    /// Narrows the intent: exclude candidates or scale their weights.
    ///
    /// It may run more than once for one request: for each fallback model, and alone
    /// when a Reject is explained ([`RoutingIntent::is_explaining`]). Picking among what
    /// is left is not a stage's job: the pipeline's [`Selector`](crate::selector::Selector) does
    /// it after every stage ran.
    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError>;

    /// A second pass, after every stage's `reconcile`, for rules that depend on what the
    /// other stages left: the tier stage's flexible mode ("if no candidate meets the
    /// tier, keep the best below it") lives here, so that the outcome does not depend
    /// on where the stage sits in the pipeline. Stages run their `refine` in pipeline
    /// order; the default does nothing.
    fn refine(&self, _intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        Ok(())
    }

    /// Renders one of this stage's reasons. The default names the code; stages should
    /// say what was measured and how to fix it.
    fn explain(&self, reason: &Reason, _ctx: &ExplainContext<'_>) -> Explanation {
        Explanation::new(
            format!("excluded by {} (code {})", self.name(), reason.code()),
            "see the documentation of this reconciler",
        )
    }

    /// The stage as [`Any`](std::any::Any), so that code holding a pipeline can reach a
    /// concrete stage ([`Pipeline::stage_of`](crate::Pipeline::stage_of)), e.g. the
    /// budget's ledger. Stages that offer such access return `Some(self)`.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// What the pipeline does when `reconcile` fails, unless config overrides it.
    fn default_error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::FailClosed
    }

    /// A backend was picked. Return `Err` to veto it (it is then excluded with that
    /// reason and the selector picks again); a stage that reserves something here must
    /// release it in [`on_settle`](Self::on_settle).
    fn on_route(&self, _ticket: &RouteTicket) -> Result<(), Reason> {
        Ok(())
    }

    /// A route this stage accepted in `on_route` has ended.
    fn on_settle(&self, _ticket: &RouteTicket, _settlement: Settlement<'_>) {}
}

macro_rules! forward_reconciler {
    () => {
        fn name(&self) -> &'static str {
            (**self).name()
        }
        fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            (**self).reconcile(intent)
        }
        fn refine(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            (**self).refine(intent)
        }
        fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
            (**self).explain(reason, ctx)
        }
        fn as_any(&self) -> Option<&dyn std::any::Any> {
            (**self).as_any()
        }
        fn default_error_policy(&self) -> ErrorPolicy {
            (**self).default_error_policy()
        }
        fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
            (**self).on_route(ticket)
        }
        fn on_settle(&self, ticket: &RouteTicket, settlement: Settlement<'_>) {
            (**self).on_settle(ticket, settlement)
        }
    };
}

impl<R: Reconciler + ?Sized> Reconciler for &R {
    forward_reconciler!();
}

impl<R: Reconciler + ?Sized> Reconciler for Box<R> {
    forward_reconciler!();
}

impl<R: Reconciler + ?Sized> Reconciler for Arc<R> {
    forward_reconciler!();
}

/// An optional stage: `None` does nothing, so a deployment can switch a stage off
/// without changing the pipeline's type.
impl<R: Reconciler> Reconciler for Option<R> {
    fn name(&self) -> &'static str {
        self.as_ref().map_or("disabled", Reconciler::name)
    }
    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        self.as_ref().map_or(Ok(()), |r| r.reconcile(intent))
    }
    fn refine(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        self.as_ref().map_or(Ok(()), |r| r.refine(intent))
    }
    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        match self {
            Some(r) => r.explain(reason, ctx),
            None => Explanation::new("excluded by a disabled stage", "none needed"),
        }
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.as_ref().and_then(Reconciler::as_any)
    }
    fn default_error_policy(&self) -> ErrorPolicy {
        self.as_ref()
            .map_or(ErrorPolicy::FailOpen, Reconciler::default_error_policy)
    }
    fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
        self.as_ref().map_or(Ok(()), |r| r.on_route(ticket))
    }
    fn on_settle(&self, ticket: &RouteTicket, settlement: Settlement<'_>) {
        if let Some(r) = self {
            r.on_settle(ticket, settlement);
        }
    }
}
