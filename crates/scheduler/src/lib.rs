//! # nexus-scheduler
//!
//! The `scheduler` selector: the one role of a pipeline that picks. After every stage
//! has narrowed the candidates and weighed them, it scores every remaining candidate and
//! either routes to the best or queues ([`nexus_core::selector::Selector`]; the pipeline calls it
//! with at least one candidate, and again after a stage vetoed its pick). In config it is
//! listed in `[routing] pipeline` like a stage (`"scheduler"`, registered as a selector
//! kind); in code it is given with `Pipeline::builder(..).selector(Scheduler::new())`.
//!
//! ## Score
//! `priority × (1 − load_factor) × (1 / latency_ewma_ms) × weight`, where
//! `load_factor = in_flight / max_concurrency` (capped at 1), and `weight` is the
//! product of the factors earlier stages set (quality, budget preference). The latency
//! EWMA falls back to [`SchedulerSettings::default_latency_ms`] until the backend has
//! answered, and again once its last answer is older than
//! [`LATENCY_MEMORY_SECS`](nexus_core::fleet::LATENCY_MEMORY_SECS): a backend that lost all its
//! traffic for being slow is tried again after a while instead of being judged forever
//! by old news.
//!
//! A score is always a finite number ≥ 0: the latency is taken as at least
//! [`MIN_LATENCY_MS`], and a weight that overflowed to infinity counts as the largest
//! finite number, so that no input makes every score infinite and equal (which would
//! ignore priority and load), and a NaN never wins a comparison.
//!
//! ## Queue
//! When the best candidate is `loading`, or every candidate is at `max_concurrency`, the
//! decision is Queue with an estimated wait and the best ready backend (if any) as an
//! alternative to waiting.
//!
//! ## Ties
//! Equal scores are broken at random, so that requests deciding at the same moment
//! spread over equal backends instead of herding onto the first. The random source is
//! per thread (no shared cache line is written per decision); tests fix it with
//! [`Scheduler::with_seed`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use nexus_core::{
    fleet::{Backend, BackendStatus},
    registry::{BuildContext, BuildError},
    selector::{Pick, Selector, Shortlist},
    stage::{Candidate, QueueCause},
};
use serde::Deserialize;

/// The smallest latency scoring uses, in milliseconds: the fleet records no sample
/// below one microsecond either, and `1 / latency` stays finite for every priority.
pub const MIN_LATENCY_MS: f64 = 0.001;

/// The range accepted for [`SchedulerSettings::default_latency_ms`]: from a millisecond
/// (no LLM backend answers faster) to an hour.
pub const DEFAULT_LATENCY_RANGE_MS: std::ops::RangeInclusive<f64> = 1.0..=3_600_000.0;

/// The `[routing.scheduler]` settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Latency assumed for a backend that has not answered yet, in milliseconds, within
    /// [`DEFAULT_LATENCY_RANGE_MS`]. Default 100.
    pub default_latency_ms: f64,
    /// Estimated wait for a backend that is loading its model, in milliseconds.
    /// Default 10 000.
    pub load_wait_ms: u64,
    /// Fixes the tie-breaking random sequence, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            default_latency_ms: 100.0,
            load_wait_ms: 10_000,
            seed: None,
        }
    }
}

impl SchedulerSettings {
    /// Checks the values; the error names the key (in backticks, so that config errors
    /// point at its line) and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        let latency = self.default_latency_ms;
        if !DEFAULT_LATENCY_RANGE_MS.contains(&latency) {
            return Err(format!(
                "`default_latency_ms` must be a latency in milliseconds from {} to {} (an hour), got {latency}; it is assumed for a backend that has not answered yet, the default is 100",
                DEFAULT_LATENCY_RANGE_MS.start(),
                DEFAULT_LATENCY_RANGE_MS.end(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
enum TieBreak {
    PerThread,
    Seeded(AtomicU64),
}

/// The `scheduler` selector. See the crate docs for the score and the queue rules.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::{BackendSpec, Fleet, ModelSpec, Pipeline, Request, RoutingDecision};
/// use nexus_scheduler::Scheduler;
///
/// let fleet = Arc::new(Fleet::new(vec![
///     BackendSpec::new("small", "http://127.0.0.1:1").with_model(ModelSpec::new("m")),
///     BackendSpec::new("big", "http://127.0.0.1:2").with_priority(3).with_model(ModelSpec::new("m")),
/// ])?);
/// let pipeline = Pipeline::builder(fleet).selector(Scheduler::new()).build()?;
/// let decision = pipeline.decide(&Request::new("m"));
/// assert_eq!(decision.backend().unwrap().name(), "big");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Scheduler {
    settings: SchedulerSettings,
    ties: TieBreak,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static THREAD_RNG: Cell<u64> = const { Cell::new(0) };
}

/// SplitMix64's output function: a good 64-bit mix of a counter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Scheduler {
    /// A scheduler with default settings and per-thread random tie-breaking.
    pub fn new() -> Self {
        Self::with_settings(SchedulerSettings::default())
    }

    /// A scheduler with `settings`.
    pub fn with_settings(settings: SchedulerSettings) -> Self {
        let ties = match settings.seed {
            Some(seed) => TieBreak::Seeded(AtomicU64::new(seed)),
            None => TieBreak::PerThread,
        };
        Self { settings, ties }
    }

    /// A scheduler whose ties are broken by a sequence fixed by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::with_settings(SchedulerSettings {
            seed: Some(seed),
            ..SchedulerSettings::default()
        })
    }

    /// The settings.
    pub fn settings(&self) -> &SchedulerSettings {
        &self.settings
    }

    /// Builds the selector from `[routing.scheduler]`; the selector factory registered
    /// as `"scheduler"`.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError> {
        let settings: SchedulerSettings = ctx.validated_settings(SchedulerSettings::validate)?;
        Ok(Box::new(Self::with_settings(settings)))
    }

    /// A seed for this decision's tie-breaking: one step of the shared (seeded) or
    /// per-thread sequence per decision, then a local generator for the ties.
    fn random(&self) -> u64 {
        match &self.ties {
            TieBreak::Seeded(state) => mix(state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)),
            TieBreak::PerThread => THREAD_RNG
                .try_with(|cell| {
                    let mut state = cell.get();
                    if state == 0 {
                        let mut hasher =
                            std::collections::hash_map::RandomState::new().build_hasher();
                        hasher.write_u64(std::ptr::from_ref(cell) as usize as u64);
                        state = hasher.finish() | 1;
                    }
                    state = state.wrapping_add(GOLDEN_GAMMA);
                    cell.set(state);
                    mix(state)
                })
                .unwrap_or(0),
        }
    }

    /// The latency used for scoring: the EWMA while fresh, else the default; never
    /// below [`MIN_LATENCY_MS`] (`!(x >= min)` also catches NaN).
    #[inline]
    fn latency_ms(&self, live: &nexus_core::fleet::LiveState, now_secs: u64) -> f64 {
        let latency = live
            .latency_ewma_ms(now_secs)
            .unwrap_or(self.settings.default_latency_ms);
        if latency >= MIN_LATENCY_MS {
            latency
        } else {
            MIN_LATENCY_MS
        }
    }

    /// The score of `backend` with weight `weight` at `now_secs`; see the crate docs.
    /// Always finite and ≥ 0, whatever the weight and settings.
    #[inline]
    pub fn score(&self, backend: &Backend, weight: f64, now_secs: u64) -> f64 {
        let live = backend.live();
        let load = (f64::from(live.in_flight()) / f64::from(backend.max_concurrency())).min(1.0);
        // At most u32::MAX / MIN_LATENCY_MS: finite.
        let base = f64::from(backend.priority()) * (1.0 - load) / self.latency_ms(live, now_secs);
        finite_score(base * finite_score(weight))
    }
}

/// `x` as a score: NaN (and anything below 0) is 0, +∞ is the largest finite number.
#[inline]
fn finite_score(x: f64) -> f64 {
    if x >= 0.0 {
        x.min(f64::MAX)
    } else {
        0.0
    }
}

/// Candidates are compared by score, then by readiness, so that among equal scores a
/// ready backend beats a loading one.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
struct Rank {
    score: f64,
    ready: bool,
}

impl Selector for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn select(&self, shortlist: &mut Shortlist<'_, '_>) -> Option<Pick> {
        let fleet = shortlist.fleet();
        let now = shortlist.now_secs();
        // The best candidate so far, with how many tied with it: each new tie replaces
        // it with probability 1/ties (reservoir sampling), so ties are broken uniformly
        // in one pass.
        let mut best: Option<(Candidate<'_>, Rank)> = None;
        let mut ties = 0u64;
        let mut best_ready: Option<(Candidate<'_>, f64)> = None;
        // When every candidate is saturated: the one expected to free a slot first.
        let mut soonest_free: Option<(Candidate<'_>, f64)> = None;
        let mut any_unsaturated = false;
        // Drawn lazily: decisions without ties never touch the random sequence.
        let mut rng = 0u64;
        shortlist.score_each(|candidate| {
            let b = fleet.backend(candidate.backend);
            let live = b.live();
            let in_flight = live.in_flight();
            let max = b.max_concurrency();
            let saturated = in_flight >= max;
            let score = self.score(b, candidate.weight, now);
            let ready = !saturated && live.status() == BackendStatus::Healthy;
            any_unsaturated |= !saturated;
            if saturated {
                let latency = self.latency_ms(live, now);
                let wait = latency * f64::from(in_flight - max + 1) / f64::from(max);
                if soonest_free.is_none_or(|(_, w)| wait < w) {
                    soonest_free = Some((candidate, wait));
                }
            }
            if ready && best_ready.is_none_or(|(_, s)| score > s) {
                best_ready = Some((candidate, score));
            }
            let rank = Rank { score, ready };
            match best.map(|(_, r)| rank.partial_cmp(&r)) {
                None | Some(Some(std::cmp::Ordering::Greater)) => {
                    best = Some((candidate, rank));
                    ties = 1;
                }
                Some(Some(std::cmp::Ordering::Equal)) => {
                    ties += 1;
                    if rng == 0 {
                        rng = self.random() | 1;
                    }
                    rng = mix(rng.wrapping_add(GOLDEN_GAMMA));
                    if rng.is_multiple_of(ties) {
                        best = Some((candidate, rank));
                    }
                }
                _ => {}
            }
            score
        });

        let (candidate, rank) = best?;
        if !any_unsaturated {
            let (waited, wait) = soonest_free?;
            Some(Pick::queue(
                waited,
                QueueCause::Saturated,
                wait.ceil() as u64,
                None,
            ))
        } else if fleet.backend(candidate.backend).live().status() == BackendStatus::Loading {
            Some(Pick::queue(
                candidate,
                QueueCause::Loading,
                self.settings.load_wait_ms,
                best_ready.map(|(c, _)| c),
            ))
        } else {
            Some(Pick::route(candidate, rank.score))
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
