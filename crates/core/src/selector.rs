//! The [`Selector`]: the one role that picks, after every stage has narrowed and weighed.
//!
//! As in the Kubernetes scheduler framework, stages ([`Reconciler`](crate::Reconciler)s)
//! filter and score (exclude candidates, scale their weights) and exactly one selector
//! picks. The pipeline calls its selector once per model, after every stage's `reconcile`
//! and `refine` ran, and again after a stage vetoed the pick in
//! [`on_route`](crate::Reconciler::on_route) (the vetoed backend is then no longer a
//! candidate). A selector sees the remaining candidates through a [`Shortlist`], which
//! can only be read and scored, and answers with a [`Pick`], which can only be made from
//! a candidate the shortlist showed it: nothing else can pick, and nothing can be picked
//! that a stage excluded. A pipeline without a selector of its own uses
//! [`HeaviestCandidate`].

use std::fmt;
use std::sync::Arc;

use crate::intent::Candidate;
use crate::{BackendId, QueueCause, RoutingIntent};

/// Picks the backend for one model among the candidates every stage left.
///
/// Implementations must be cheap and must not allocate: `select` runs on the path to
/// every Route decision. `nexus-scheduler`'s `Scheduler` is the built-in one (scores by
/// priority, load, latency and the stages' weights; queues when the best is loading or
/// everyone is saturated).
///
/// ```
/// use nexus_core::selector::{Pick, Selector, Shortlist};
///
/// /// Routes to the candidate with the lowest backend index.
/// #[derive(Debug)]
/// struct FirstCandidate;
///
/// impl Selector for FirstCandidate {
///     fn name(&self) -> &'static str {
///         "first"
///     }
///     fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
///         shortlist.first().map(|candidate| Pick::route(candidate, 1.0))
///     }
/// }
/// ```
pub trait Selector: Send + Sync + fmt::Debug {
    /// The selector's kind as written in config, e.g. `"scheduler"`.
    fn name(&self) -> &'static str;

    /// Picks among the shortlist's candidates (never called with none left): Route to
    /// one ([`Pick::route`]) or wait for one ([`Pick::queue`]). `None` declines: the
    /// model gets neither, and the pipeline goes on to the next fallback model (a
    /// Reject if there is none); the built-in selectors always pick.
    ///
    /// It runs again for the same model after a stage vetoed its pick, with that backend
    /// excluded; a selector that keeps state across calls must expect that.
    fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick>;

    /// The selector as [`Any`](std::any::Any), for code that holds a pipeline and needs
    /// the concrete type ([`Pipeline::selector`](crate::Pipeline::selector)).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

macro_rules! forward_selector {
    () => {
        fn name(&self) -> &'static str {
            (**self).name()
        }
        fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
            (**self).select(shortlist)
        }
        fn as_any(&self) -> Option<&dyn std::any::Any> {
            (**self).as_any()
        }
    };
}

impl<S: Selector + ?Sized> Selector for &S {
    forward_selector!();
}

impl<S: Selector + ?Sized> Selector for Box<S> {
    forward_selector!();
}

impl<S: Selector + ?Sized> Selector for Arc<S> {
    forward_selector!();
}

/// What a [`Selector`] picked for the current model.
///
/// Made only from [`Candidate`]s, which only the pipeline's own views hand out (a
/// [`Shortlist`] to the selector), so a pick names a backend that every stage left in
/// the running; the pipeline still checks, and treats a pick of a backend that is no
/// longer a candidate as declining.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick(pub(crate) Picked);

/// A pick's content, for the pipeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Picked {
    Route {
        backend: BackendId,
        score: f64,
    },
    Queue {
        backend: BackendId,
        cause: QueueCause,
        estimated_wait_ms: u64,
        instead: Option<BackendId>,
    },
}

impl Pick {
    /// Route to `candidate`, whose score was `score` (shown in the decision's reason).
    #[inline]
    pub fn route(candidate: Candidate<'_>, score: f64) -> Self {
        Self(Picked::Route {
            backend: candidate.backend,
            score,
        })
    }

    /// Wait for `candidate`, for `cause`, about `estimated_wait_ms`; `instead` is a ready
    /// candidate the caller may use rather than wait (the pipeline commits it like a
    /// route).
    #[inline]
    pub fn queue(
        candidate: Candidate<'_>,
        cause: QueueCause,
        estimated_wait_ms: u64,
        instead: Option<Candidate<'_>>,
    ) -> Self {
        Self(Picked::Queue {
            backend: candidate.backend,
            cause,
            estimated_wait_ms,
            instead: instead.map(|c| c.backend),
        })
    }

    /// The backend routed to or waited for.
    #[inline]
    pub fn backend(&self) -> BackendId {
        match self.0 {
            Picked::Route { backend, .. } | Picked::Queue { backend, .. } => backend,
        }
    }

    /// Whether the pick is to wait.
    #[inline]
    pub fn is_queue(&self) -> bool {
        matches!(self.0, Picked::Queue { .. })
    }

    /// The backend a request could be sent to now: the routed one, or a queue's ready
    /// alternative.
    #[inline]
    pub(crate) fn ready(&self) -> Option<BackendId> {
        match self.0 {
            Picked::Route { backend, .. } => Some(backend),
            Picked::Queue { instead, .. } => instead,
        }
    }
}

/// The candidates every stage left for the current model, as a [`Selector`] sees them:
/// read-only, in backend order, with their weights, and a place to record the score
/// each got (shown with the decision, [`Decision::scored_candidates`](crate::pipeline::Decision::scored_candidates)).
///
/// A shortlist dereferences to the decision's [`RoutingIntent`] for reading only (its
/// fleet, model, offers, time, requirements, constraints, budget status, candidates):
/// nothing that excludes, weighs or re-admits is reachable through it.
pub struct Shortlist<'a, 'i> {
    intent: &'i mut RoutingIntent<'a>,
}

impl fmt::Debug for Shortlist<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shortlist").field(&self.intent).finish()
    }
}

impl<'a> std::ops::Deref for Shortlist<'a, '_> {
    type Target = RoutingIntent<'a>;

    #[inline]
    fn deref(&self) -> &RoutingIntent<'a> {
        self.intent
    }
}

impl<'a, 'i> Shortlist<'a, 'i> {
    /// The shortlist of `intent`'s candidates: what the pipeline hands its selector, and
    /// how to test a selector alone (run the stages on an intent, then select).
    pub fn new(intent: &'i mut RoutingIntent<'a>) -> Self {
        Self { intent }
    }

    /// How many candidates are left (at least one when the pipeline asks).
    #[inline]
    pub fn len(&self) -> usize {
        self.intent.scratch.candidates.len()
    }

    /// Whether no candidate is left (never, when the pipeline asks).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.intent.scratch.candidates.is_empty()
    }

    /// The candidate with the lowest backend index.
    #[inline]
    pub fn first(&self) -> Option<Candidate<'a>> {
        let mut first = None;
        self.each(|c| {
            first = Some(c);
            false
        });
        first
    }

    /// Visits every candidate in backend order; `visit` returns whether to go on.
    #[inline]
    pub fn each(&self, mut visit: impl FnMut(Candidate<'a>) -> bool) {
        let entry = self.intent.model_entry();
        let scratch = &*self.intent.scratch;
        for (word_index, &word) in scratch.candidates.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let backend = BackendId::new(word_index as u32 * 64 + bit);
                let candidate =
                    Candidate::new(backend, scratch.weight(backend), entry, word_index, bit);
                if !visit(candidate) {
                    return;
                }
            }
        }
    }

    /// Visits every candidate in backend order and records the score `score` returns
    /// for it: the way to rank candidates in one pass (the candidate may be kept
    /// outside the closure, to [`Pick`] it after).
    #[inline]
    pub fn score_each(&mut self, mut score: impl FnMut(Candidate<'a>) -> f64) {
        let entry = self.intent.model_entry();
        let scratch = &mut *self.intent.scratch;
        for word_index in 0..scratch.candidates.words.len() {
            let mut bits = scratch.candidates.words[word_index];
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let backend = BackendId::new(word_index as u32 * 64 + bit);
                let candidate =
                    Candidate::new(backend, scratch.weight(backend), entry, word_index, bit);
                scratch.scores[backend.index()] = score(candidate);
                scratch.scored.insert_within(backend);
            }
        }
    }
}

/// The selector of a pipeline that was given none: routes to the candidate with the
/// largest weight (the product of the factors stages applied; 1.0 when none), the
/// lowest backend index among equals, with that weight as its score. It never queues
/// and records no scores. Config uses `nexus-scheduler`'s `Scheduler` by default; this
/// one is for pipelines built in code without it, and for configs whose pipeline lists
/// no selector.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaviestCandidate;

impl Selector for HeaviestCandidate {
    fn name(&self) -> &'static str {
        "heaviest"
    }

    fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
        let mut best: Option<Candidate<'_>> = None;
        shortlist.each(|c| {
            if best.is_none_or(|b| c.weight > b.weight) {
                best = Some(c);
            }
            true
        });
        best.map(|c| Pick::route(c, c.weight))
    }
}
