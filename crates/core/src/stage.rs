//! What a stage is written against: the [`Reconciler`] trait, the [`RoutingIntent`] it
//! narrows, the compact [`Reason`]s it records and the typed [`StageReason`]s it
//! converts them from, how it fails ([`ReconcileError`], [`ErrorPolicy`]) and the later
//! moments of a request it may take part in ([`RouteTicket`], [`Outcome`],
//! [`Settlement`]).
//!
//! Words, as docs/architecture.md's glossary uses them: a *reconciler* is a type that
//! implements [`Reconciler`]; a *stage* is a reconciler placed in a pipeline, with its
//! error policy ([`Stage`](crate::pipeline::Stage)); a *kind* is the name a stage is
//! configured and registered by ([`Reconciler::name`], e.g. `"budget"`).

pub use crate::intent::{BudgetStatus, Candidate, QueueCause, RoutingIntent, Scratch, Verdict};
pub use crate::reason::{ExplainContext, Explanation, Reason, Rejection, StageReason};
pub use crate::reconciler::{
    ErrorKind, ErrorPolicy, Outcome, ReconcileError, Reconciler, RouteTicket, Settlement,
};
