//! # nexus-core
//!
//! The small, stable heart of the Nexus LLM routing control plane: the [`Reconciler`]
//! trait that every stage's reconciler implements, the [`RoutingIntent`] stages narrow, the
//! [`Selector`] that picks among what they left, the
//! [`RoutingDecision`] they arrive at, the [`Fleet`] of backends with their live state,
//! traffic policies, name resolution and the [`Pipeline`] that runs it all. Policy
//! crates (`nexus-privacy`, `nexus-budget`, ...) depend on this crate only; the
//! `nexus-router` facade builds pipelines from configuration.
//!
//! ## Where names live
//! Every public name lives in the module of its idea:
//!
//! | module | what it holds |
//! |---|---|
//! | [`stage`] | what a stage is written against: `Reconciler`, `RoutingIntent`, `Candidate`, `Verdict`, `Reason`, `StageReason`, `Explanation`, `ReconcileError`, `ErrorPolicy`, `Outcome`, `RouteTicket`, `Settlement` |
//! | [`fleet`] | backends and models: `Fleet`, `BackendSpec`, `ModelSpec`, `Zone`, `LiveState`, `BackendId`, `BackendSet` |
//! | [`policy`] | traffic policies: `PolicySet`, `TrafficPolicy`, `Constraints`, `Privacy` |
//! | [`selector`] | the one role that picks after every stage ran: `Selector`, `Shortlist`, `Pick`, `HeaviestCandidate` (the default) |
//! | [`routes`] | name resolution at load time: `ModelRoutes`, `RoutePlan`, `closest` |
//! | [`pipeline`] | building and running a pipeline: `Pipeline`, `PipelineBuilder`, `Request`, `Decision`, `RoutingDecision`, `RouteGuard` |
//! | [`registry`] | building stages by kind: `Registry`, `ReconcilerFactory`, `SelectorFactory`, `BuildContext`, `BuildError` |
//! | [`analyzer`] | the built-in `analyzer` stage: `RequestAnalyzer` |
//! | [`clock`] | `Clock`, `SystemClock` (and `FakeClock` with the `test-util` feature) |
//!
//! The root re-exports only the names a first program uses, and that is the rule for
//! adding one: those of the example below, which describes a fleet, builds a pipeline,
//! decides a request and finishes its route ([`Fleet`], [`BackendSpec`], [`ModelSpec`],
//! [`Zone`], [`Pipeline`], [`Request`], [`Outcome`]), the [`RoutingDecision`] every
//! caller matches on, and the two names a stage author implements against
//! ([`Reconciler`], [`RoutingIntent`]).
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
//! use nexus_core::analyzer::RequestAnalyzer;
//! use nexus_core::{BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, Zone};
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

pub mod analyzer;
pub mod clock;
pub mod fleet;
pub mod pipeline;
pub mod policy;
pub mod registry;
pub mod routes;
pub mod selector;
pub mod stage;

mod decision;
mod id;
mod intent;
mod reason;
mod reconciler;
mod request;
mod set;

// The crate root: the names of a first program (see the crate docs).
pub use fleet::{BackendSpec, Fleet, ModelSpec, Zone};
pub use pipeline::{Pipeline, Request, RoutingDecision};
pub use stage::{Outcome, Reconciler, RoutingIntent};

// Inside the crate every name is also reachable at `crate::Name`, so that a file does not
// need to know which module re-exports what it uses.
pub(crate) use analyzer::RequestAnalyzer;
pub(crate) use clock::{Clock, SystemClock};
pub(crate) use fleet::{Backend, BackendId, BackendSet, ModelEntry, ModelId, Offering};
pub(crate) use pipeline::{
    CostEstimate, Features, RequestRequirements, TenantId, TierMode, TokenTier,
};
pub(crate) use policy::{Constraints, PolicySet};
#[cfg(test)]
pub(crate) use policy::{Privacy, TrafficPolicy};
pub(crate) use reason::{Exclusion, Warning};
pub(crate) use routes::closest;
pub(crate) use selector::{HeaviestCandidate, Pick, Selector, Shortlist};
#[cfg(test)]
pub(crate) use stage::Verdict;
pub(crate) use stage::{
    BudgetStatus, ErrorPolicy, ExplainContext, Explanation, QueueCause, Reason, ReconcileError,
    Rejection, RouteTicket, Settlement, StageReason,
};

/// The snippets of `docs/writing-a-reconciler.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/writing-a-reconciler.md")]
pub struct WritingAReconcilerDoc;
