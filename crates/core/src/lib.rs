//! # nexus-core
//!
//! The small, stable heart of the Nexus LLM routing control plane: the [`Reconciler`]
//! trait that every policy stage implements, the [`RoutingIntent`] stages narrow, the
//! [`Selector`] that picks among what they left, the [`RoutingDecision`] they arrive at, the [`Fleet`] of backends with their live state,
//! traffic [`PolicySet`]s, request analysis ([`ModelRoutes`]) and the [`Pipeline`] that
//! runs it all. Policy crates (`nexus-privacy`, `nexus-budget`, ...) depend on this
//! crate only; the `nexus-router` facade builds pipelines from TOML.
//!
//! ## Hot-path rules
//! Everything is parsed, compiled and indexed when the pipeline is built. A decision
//! does one hash lookup for the requested name, copies a precomputed bitset of the
//! model's servers, and lets each stage clear bits and scale weights in buffers reused
//! from a per-thread pool: a Route decision does not touch the heap. Live backend state
//! is atomics. Rejections are recorded as compact [`Reason`] codes and rendered into
//! words only for a Reject or when asked.
//!
//! ## Example
//! ```
//! use std::sync::Arc;
//! use nexus_core::*;
//!
//! let fleet = Arc::new(Fleet::new(vec![
//!     BackendSpec::new("gpu-box", "http://127.0.0.1:11434")
//!         .with_zone(Zone::Local)
//!         .with_model(ModelSpec::new("llama3:70b")),
//! ])?);
//! let pipeline = Pipeline::builder(fleet)
//!     .alias("gpt-4", "llama3:70b")
//!     .stage(RequestAnalyzer)
//!     .build()?;
//! let mut decision = pipeline.decide(&Request::new("gpt-4").input_tokens(1000));
//! assert_eq!(decision.model(), Some("llama3:70b"));
//! let guard = decision.take_guard().expect("a route");
//! guard.finish(Outcome::success(std::time::Duration::from_millis(420)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod analyzer;
mod clock;
mod decision;
mod fleet;
mod id;
mod intent;
mod pipeline;
mod policy;
mod reason;
mod reconciler;
mod registry;
mod request;
mod routes;
mod selector;
mod set;

pub use analyzer::{AnalyzerReason, RequestAnalyzer};
#[cfg(any(test, feature = "test-util"))]
pub use clock::FakeClock;
pub use clock::{Clock, SystemClock};
pub use decision::{
    Decision, Fix, OwnedDecision, OwnedRouteGuard, QueueReason, RouteGuard, RouteReason,
    RoutingDecision, Significant,
};
pub use fleet::{
    Backend, BackendKind, BackendSpec, BackendStatus, Fleet, FleetError, LiveState, ModelEntry,
    ModelSpec, OfferSummary, Offering, Zone, LATENCY_MEMORY_SECS, MAX_USD_PER_MTOK,
};
pub use id::{BackendId, ModelId, TenantId};
pub use intent::{BudgetStatus, Candidate, QueueCause, RoutingIntent, Scratch, Verdict};
pub use pipeline::{Pipeline, PipelineBuilder, PipelineError, PipelineRef, Stage, StageTiming};
pub use policy::{Constraints, PolicyError, PolicySet, Privacy, Shadowed, TrafficPolicy};
pub use reason::{Exclusion, ExplainContext, Explanation, Reason, Rejection, StageReason, Warning};
pub use reconciler::{
    ErrorKind, ErrorPolicy, Outcome, ReconcileError, Reconciler, RouteTicket, Settlement,
};
pub use registry::{
    check_fraction, BuildContext, BuildError, DuplicateKind, ReconcilerFactory, Registry,
    SelectorFactory,
};
pub use request::{
    estimate_tokens, CostEstimate, Features, Request, RequestRequirements, TierMode, TokenTier,
};
pub use routes::{closest, Attempt, ModelRoutes, RoutePlan, RoutesError, MAX_ALIAS_NAMES};
pub use selector::{HeaviestCandidate, Pick, Selector, Shortlist};
pub use set::{BackendSet, Iter as BackendSetIter};

/// The snippets of `docs/writing-a-reconciler.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/writing-a-reconciler.md")]
pub struct WritingAReconcilerDoc;
