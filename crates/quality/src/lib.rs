//! # nexus-quality
//!
//! The `quality` stage: routing that learns from what actually happens to requests.
//!
//! Every finished route guard reports its outcome (success or failure, latency, time
//! to first token). Per backend the [`QualityTracker`] keeps sliding windows in atomic
//! time buckets (no lock, no allocation on record or read): error rate over the last
//! hour (one-minute buckets), success rate over 24 hours (one-hour buckets) and average
//! time to first token over the hour.
//!
//! ## Exclusion: the circuit breaker
//! A backend's circuit opens after `failure_threshold` consecutive failures, or when its
//! error rate over the hour reaches `max_error_rate` with at least `min_samples`
//! outcomes. An open circuit excludes the backend for `cooldown_secs`; then it is
//! half-open and admits **one** probe request at a time (claimed atomically when the
//! route is committed, so concurrent decisions cannot both probe). A successful probe
//! closes the circuit; a failed one re-opens it for another cooldown; a cancelled one
//! is given back. The probe belongs to the route that claimed it (by
//! [`RouteTicket::id`]): a request decided before the circuit opened may end while the
//! probe is in flight, and its outcome counts in the windows but neither ends nor
//! gives back the probe, so two probes never run at once. A backend that
//! failed is therefore never shut out for an hour: it is probed every cooldown.
//!
//! ## Weight
//! Candidates that pass get a score weight the scheduler multiplies in:
//!
//! `weight = (1 − e)² × t × s`, clamped to [0.01, 1], where
//! - `e` is the error rate over the hour (0 below `min_samples` outcomes),
//! - `t = min(1, target_ttft_ms / average TTFT over the last five minutes)` (1 without
//!   TTFT samples; the hour's average is tracked and reported, but a backend that has
//!   recovered should not wait an hour to be trusted again),
//! - `s = 0.5 + 0.5 × success rate over 24 hours` (1 without outcomes).
//!
//! A backend with no history gets the neutral weight 1.0. The weight is cached per
//! backend for `weight_refresh_secs` so a decision reads two atomic words per backend.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod tracker;
mod window;

use std::sync::Arc;

use nexus_core::{
    clock::Clock,
    registry::{BuildContext, BuildError},
    stage::{
        Candidate, ExplainContext, Explanation, Reason, ReconcileError, RouteTicket, Settlement,
        StageReason, Verdict,
    },
    Fleet, Reconciler, RoutingIntent,
};
use serde::Deserialize;

pub use tracker::{Circuit, OpenCause, QualityStats, QualityTracker, RECENT_TTFT_MINUTES};

/// Why the quality stage excluded (or, in `on_route`, vetoed) a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityReason {
    /// The circuit is open after consecutive failures.
    CircuitOpen {
        /// The consecutive failures that opened it (`failure_threshold`).
        failures: u32,
        /// Seconds until it half-opens.
        seconds_left: u64,
    },
    /// The circuit is open because of the error rate over the last hour.
    ErrorRate {
        /// Failed outcomes in the last hour.
        failed: u64,
        /// All outcomes in the last hour.
        outcomes: u64,
        /// Seconds until it half-opens.
        seconds_left: u64,
    },
    /// The circuit is half-open and its one probe is in flight.
    ProbeInFlight,
}

// Compact codes: `values = [failures, seconds left, 0]`, `[failed, outcomes, seconds
// left]`, `[0, 0, 0]`.
const CIRCUIT_OPEN: u16 = 1;
const ERROR_RATE: u16 = 2;
const PROBE_IN_FLIGHT: u16 = 3;

impl From<QualityReason> for Reason {
    #[inline]
    fn from(reason: QualityReason) -> Reason {
        match reason {
            QualityReason::CircuitOpen {
                failures,
                seconds_left,
            } => Reason::with(
                CIRCUIT_OPEN,
                [f64::from(failures), seconds_left as f64, 0.0],
            ),
            QualityReason::ErrorRate {
                failed,
                outcomes,
                seconds_left,
            } => Reason::with(
                ERROR_RATE,
                [failed as f64, outcomes as f64, seconds_left as f64],
            ),
            QualityReason::ProbeInFlight => Reason::new(PROBE_IN_FLIGHT),
        }
    }
}

impl StageReason for QualityReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [a, b, c] = reason.values();
        Some(match reason.code() {
            CIRCUIT_OPEN => QualityReason::CircuitOpen {
                failures: a as u32,
                seconds_left: b as u64,
            },
            ERROR_RATE => QualityReason::ErrorRate {
                failed: a as u64,
                outcomes: b as u64,
                seconds_left: c as u64,
            },
            PROBE_IN_FLIGHT => QualityReason::ProbeInFlight,
            _ => return None,
        })
    }
}

const fn default_max_error_rate() -> f64 {
    0.5
}
const fn default_min_samples() -> u32 {
    10
}
const fn default_failure_threshold() -> u32 {
    5
}
const fn default_cooldown() -> u64 {
    30
}
const fn default_target_ttft() -> f64 {
    1000.0
}
const fn default_refresh() -> u64 {
    1
}

/// The range accepted for [`QualitySettings::target_ttft_ms`]: a millisecond to an hour.
pub const TARGET_TTFT_RANGE_MS: std::ops::RangeInclusive<f64> = 1.0..=3_600_000.0;

/// The `[routing.quality]` settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualitySettings {
    /// Error rate over the hour, in (0, 1], that opens the circuit. Default 0.5.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Outcomes over the hour needed before the error rate counts. Default 10.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Consecutive failures that open the circuit. Default 5.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Seconds an open circuit stays open before a probe. Default 30.
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Time to first token at or below which a backend gets the full TTFT factor, within
    /// [`TARGET_TTFT_RANGE_MS`]. Default 1000 ms.
    #[serde(default = "default_target_ttft")]
    pub target_ttft_ms: f64,
    /// How long a computed weight is reused. Default 1 s.
    #[serde(default = "default_refresh")]
    pub weight_refresh_secs: u64,
}

impl Default for QualitySettings {
    fn default() -> Self {
        Self {
            max_error_rate: default_max_error_rate(),
            min_samples: default_min_samples(),
            failure_threshold: default_failure_threshold(),
            cooldown_secs: default_cooldown(),
            target_ttft_ms: default_target_ttft(),
            weight_refresh_secs: default_refresh(),
        }
    }
}

impl QualitySettings {
    /// Checks the values; the error names the key (in backticks, so that config errors
    /// point at its line) and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        nexus_core::registry::check_fraction(
            "`max_error_rate`",
            "a fraction",
            self.max_error_rate,
        )?;
        if self.min_samples == 0 {
            return Err("`min_samples` must be at least 1".to_owned());
        }
        if self.failure_threshold == 0 {
            return Err("`failure_threshold` must be at least 1".to_owned());
        }
        if self.cooldown_secs == 0 {
            return Err("`cooldown_secs` must be at least 1".to_owned());
        }
        if !TARGET_TTFT_RANGE_MS.contains(&self.target_ttft_ms) {
            return Err(format!(
                "`target_ttft_ms` must be a time in milliseconds from {} to {} (an hour), got {}; the default is 1000",
                TARGET_TTFT_RANGE_MS.start(),
                TARGET_TTFT_RANGE_MS.end(),
                self.target_ttft_ms
            ));
        }
        if self.weight_refresh_secs == 0 {
            return Err("`weight_refresh_secs` must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// The `quality` stage; see the crate docs.
#[derive(Debug)]
pub struct QualityReconciler {
    tracker: Arc<QualityTracker>,
}

impl QualityReconciler {
    /// The stage for `fleet`, with its own tracker.
    pub fn new(
        fleet: &Fleet,
        settings: QualitySettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        settings.validate()?;
        Ok(Self {
            tracker: Arc::new(QualityTracker::new(fleet.len(), settings, clock)),
        })
    }

    /// Builds the stage from `[routing.quality]`; the factory registered as `"quality"`.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        let settings: QualitySettings = ctx.settings()?;
        let previous = ctx
            .previous
            .and_then(|p| Some((p.stage_of::<QualityReconciler>()?, p.fleet())));
        let stage = match previous {
            // A reload: kept backends keep their windows and circuit.
            Some((old, old_fleet)) => settings.validate().map(|()| Self {
                tracker: Arc::new(QualityTracker::carry_over(
                    ctx.fleet,
                    settings,
                    Arc::clone(ctx.clock),
                    &old.tracker,
                    old_fleet,
                )),
            }),
            None => Self::new(ctx.fleet, settings, Arc::clone(ctx.clock)),
        };
        stage
            .map(|stage| Box::new(stage) as Box<dyn Reconciler>)
            .map_err(|message| ctx.invalid(message))
    }

    /// The tracker the stage reads and the route guards feed.
    pub fn tracker(&self) -> &Arc<QualityTracker> {
        &self.tracker
    }
}

impl Reconciler for QualityReconciler {
    fn name(&self) -> &'static str {
        "quality"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let tracker = &*self.tracker;
        let now = intent.now_secs();
        intent.visit_candidates(|Candidate { backend, .. }| {
            match tracker.circuit_at(backend, now) {
                Circuit::Closed => match tracker.weight_at(backend, now) {
                    1.0 => Verdict::Keep,
                    weight => Verdict::Scale(weight),
                },
                // The probe: admitted here, claimed when the route is committed.
                Circuit::HalfOpen { .. } => Verdict::Keep,
                Circuit::Open {
                    cause: OpenCause::ConsecutiveFailures,
                    seconds_left,
                } => Verdict::Exclude(
                    QualityReason::CircuitOpen {
                        failures: tracker.settings().failure_threshold,
                        seconds_left,
                    }
                    .into(),
                ),
                Circuit::Open {
                    cause: OpenCause::ErrorRate,
                    seconds_left,
                } => {
                    let stats = tracker.stats_at(backend, now);
                    let (failed, outcomes) =
                        stats.map_or((0, 0), |s| (s.failures_1h, s.samples_1h()));
                    Verdict::Exclude(
                        QualityReason::ErrorRate {
                            failed,
                            outcomes,
                            seconds_left,
                        }
                        .into(),
                    )
                }
                Circuit::Probing { .. } => Verdict::Exclude(QualityReason::ProbeInFlight.into()),
            }
        });
        Ok(())
    }

    fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
        // The decision's time, as `reconcile` saw it: the circuit state it admitted the
        // backend in is the one claimed here.
        let now = ticket.decided_at_secs;
        match self.tracker.circuit_at(ticket.backend, now) {
            Circuit::Closed => Ok(()),
            Circuit::HalfOpen { .. } => {
                if self.tracker.try_claim_probe(ticket.backend, now, ticket.id) {
                    Ok(())
                } else {
                    Err(QualityReason::ProbeInFlight.into())
                }
            }
            Circuit::Open { seconds_left, .. } => Err(QualityReason::CircuitOpen {
                failures: self.tracker.settings().failure_threshold,
                seconds_left,
            }
            .into()),
            Circuit::Probing { .. } => Err(QualityReason::ProbeInFlight.into()),
        }
    }

    fn on_settle(&self, ticket: &RouteTicket, settlement: Settlement<'_>) {
        match settlement {
            Settlement::Finished { outcome, at_secs } => self.tracker.record_route_at(
                ticket.backend,
                ticket.id,
                at_secs,
                outcome.success,
                outcome.latency,
                outcome.time_to_first_token,
            ),
            Settlement::Abandoned { at_secs } => self.tracker.record_route_at(
                ticket.backend,
                ticket.id,
                at_secs,
                false,
                std::time::Duration::ZERO,
                None,
            ),
            Settlement::Cancelled => self.tracker.release_probe(ticket.backend, ticket.id),
        }
    }

    fn explain(&self, reason: &Reason, _ctx: &ExplainContext<'_>) -> Explanation {
        let check = "check the backend's logs; it is probed again when the cooldown ends";
        match QualityReason::from_reason(*reason) {
            Some(QualityReason::CircuitOpen {
                failures,
                seconds_left,
            }) => Explanation::new(
                format!("{failures} consecutive failures; circuit open for {seconds_left} s more"),
                check,
            ),
            Some(QualityReason::ErrorRate {
                failed,
                outcomes,
                seconds_left,
            }) => {
                let rate = if outcomes > 0 {
                    100.0 * failed as f64 / outcomes as f64
                } else {
                    0.0
                };
                Explanation::new(
                    format!("error rate {rate:.0}% over the last hour ({failed} of {outcomes} requests); circuit open for {seconds_left} s more"),
                    check,
                )
            }
            Some(QualityReason::ProbeInFlight) => Explanation::new(
                "circuit half-open: its one probe request is in flight",
                "wait for the probe: it closes the circuit on success and re-opens it on failure",
            ),
            None => Explanation::new(
                format!("excluded by quality (code {})", reason.code()),
                "see nexus-quality's documentation",
            ),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn default_error_policy(&self) -> nexus_core::stage::ErrorPolicy {
        // Learned preferences must not take routing down: skip the stage if it fails.
        nexus_core::stage::ErrorPolicy::FailOpen
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        let all = [
            QualityReason::CircuitOpen {
                failures: 5,
                seconds_left: 30,
            },
            QualityReason::ErrorRate {
                failed: 12,
                outcomes: 20,
                seconds_left: 1,
            },
            QualityReason::ProbeInFlight,
        ];
        for typed in all {
            let compact: Reason = typed.into();
            assert_eq!(QualityReason::from_reason(compact), Some(typed));
        }
        assert_eq!(QualityReason::from_reason(Reason::new(42)), None);
    }
}
