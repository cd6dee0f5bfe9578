//! The [`Pipeline`]: ordered stages and one selector, run for each model a request may
//! be served by.
//!
//! A decision looks up the request's precomputed [`RoutePlan`](crate::routes::RoutePlan), then for the resolved
//! model and, if it ends with no viable backend, for each fallback in turn: starts from
//! the model's servers, runs every stage in order, then asks the pipeline's one
//! [`Selector`] (the scheduler) to pick among what is left. A picked backend is
//! committed by asking every stage's [`Reconciler::on_route`]; a veto excludes it and
//! the selector picks again.
//! A flexible request ([`TierMode::Flexible`]) is decided strictly over the whole plan
//! first, and flexibly only if that finds nothing: a relaxation never does worse than
//! the rule it relaxes.
//!
//! Buffers come from a per-thread pool and go back when the [`Decision`] is dropped, so
//! a Route decision does not allocate once warmed up. Rejection texts are rendered only
//! for a Reject or when [`Decision::rejections`] is called.
//!
//! The module is in three parts: [`builder`](PipelineBuilder) assembles a pipeline,
//! `run` decides (the reconcile/refine passes, the selector's pick and its commit), and `explain`
//! renders why backends were excluded and finds the best fix of a Reject. What a
//! decision hands back ([`Decision`], [`RouteGuard`]) and what a request asks for
//! ([`Request`]) are defined in their own files and re-exported here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::routes::{ModelRoutes, RoutesError};
use crate::{
    Clock, ErrorPolicy, Fleet, HeaviestCandidate, PolicySet, Reconciler, Selector, SystemClock,
};

mod builder;
mod explain;
mod fix_texts;
mod run;

pub use crate::decision::{
    Decision, Fix, OwnedDecision, OwnedRouteGuard, QueueReason, RouteGuard, RouteReason,
    RoutingDecision, Significant,
};
pub use crate::id::TenantId;
pub use crate::request::{
    estimate_tokens, CostEstimate, Features, Request, RequestRequirements, TierMode, TokenTier,
};
pub use builder::PipelineBuilder;
pub use fix_texts::FixTexts;
pub(crate) use run::{return_scratch, scored};

/// One stage of a pipeline: a reconciler and what to do when it fails.
#[derive(Debug)]
pub struct Stage {
    pub(crate) reconciler: Box<dyn Reconciler>,
    pub(crate) on_error: ErrorPolicy,
    pub(crate) nanos: AtomicU64,
    pub(crate) calls: AtomicU64,
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

/// Time spent in one stage (or the selector) while timing was on; see
/// [`Pipeline::set_timing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageTiming {
    /// The stage's (or selector's) kind.
    pub name: &'static str,
    /// Times the stage ran (its `reconcile`), or the selector picked.
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

/// Ordered stages over a fleet: the routing engine.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::{analyzer::RequestAnalyzer, BackendSpec, Fleet, ModelSpec, Pipeline, Request};
///
/// let fleet = Arc::new(Fleet::new(vec![
///     BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
///         .with_model(ModelSpec::new("llama3:70b")),
/// ])?);
/// let pipeline = Pipeline::builder(fleet).stage(RequestAnalyzer).build()?;
/// let decision = pipeline.decide(&Request::new("llama3:70b"));
/// // Without a selector of its own, the pipeline routes to the heaviest candidate
/// // (`HeaviestCandidate`); `.selector(Scheduler::new())` is the usual one.
/// assert_eq!(decision.backend().map(|b| b.name()), Some("gpu-box"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) policies: Arc<PolicySet>,
    pub(crate) routes: ModelRoutes,
    pub(crate) stages: Box<[Stage]>,
    /// The one role that picks, after every stage ran.
    pub(crate) selector: Box<dyn Selector>,
    pub(crate) selector_nanos: AtomicU64,
    pub(crate) selector_calls: AtomicU64,
    pub(crate) timing: AtomicBool,
    pub(crate) clock: Arc<dyn Clock>,
    /// Each tenant's overrides, by [`TenantId`](crate::pipeline::TenantId).
    pub(crate) tenant_constraints: Box<[crate::Constraints]>,
    /// How the pipeline's own Rejects word their fix.
    pub(crate) fix_texts: FixTexts,
}

impl Pipeline {
    /// Starts a pipeline over `fleet`, with no policies, aliases or stages, and
    /// [`HeaviestCandidate`] as its selector.
    pub fn builder(fleet: Arc<Fleet>) -> PipelineBuilder {
        PipelineBuilder {
            fleet,
            policies: Arc::new(PolicySet::default()),
            aliases: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            stages: Vec::new(),
            selector: Box::new(HeaviestCandidate),
            clock: Arc::new(SystemClock),
            tenant_constraints: Vec::new(),
            fix_texts: FixTexts::default(),
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

    /// The selector: what picks among the candidates the stages left.
    pub fn selector(&self) -> &dyn Selector {
        &*self.selector
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

    /// Time spent in the selector while timing was on; `calls` counts its picks (more
    /// than one per model after a veto).
    pub fn selector_timing(&self) -> StageTiming {
        StageTiming {
            name: self.selector.name(),
            calls: self.selector_calls.load(Ordering::Relaxed),
            nanos: self.selector_nanos.load(Ordering::Relaxed),
        }
    }

    /// Time spent in each stage while timing was on (the selector's:
    /// [`selector_timing`](Self::selector_timing)).
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
