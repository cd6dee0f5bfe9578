//! [`QualityTracker`]: per-backend outcome windows and circuit breakers, lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nexus_core::{clock::Clock, fleet::BackendId, Fleet};

use crate::window::Window;
use crate::QualitySettings;

/// What a backend's recent outcomes look like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualityStats {
    /// Successes over the last hour.
    pub successes_1h: u64,
    /// Failures over the last hour.
    pub failures_1h: u64,
    /// Successes over the last 24 hours.
    pub successes_24h: u64,
    /// Failures over the last 24 hours.
    pub failures_24h: u64,
    /// Average time to first token over the last hour, in milliseconds.
    pub avg_ttft_ms: Option<f64>,
    /// Average time to first token over the last five minutes, in milliseconds: what
    /// the weight uses, so that a backend that recovers is not held back for an hour.
    pub recent_ttft_ms: Option<f64>,
}

impl QualityStats {
    /// Requests over the last hour.
    pub fn samples_1h(&self) -> u64 {
        self.successes_1h + self.failures_1h
    }

    /// Failures / requests over the last hour (0 without requests).
    pub fn error_rate_1h(&self) -> f64 {
        ratio(self.failures_1h, self.samples_1h())
    }

    /// Successes / requests over the last 24 hours, if there were any.
    pub fn success_rate_24h(&self) -> Option<f64> {
        let total = self.successes_24h + self.failures_24h;
        (total > 0).then(|| ratio(self.successes_24h, total))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Why a circuit opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenCause {
    /// `failure_threshold` failures in a row.
    ConsecutiveFailures,
    /// The error rate over the hour reached `max_error_rate`.
    ErrorRate,
}

/// A backend's circuit as seen at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    /// Traffic flows.
    Closed,
    /// Shut for `seconds_left` more seconds.
    Open {
        /// Why it opened.
        cause: OpenCause,
        /// Seconds until it becomes half-open.
        seconds_left: u64,
    },
    /// The cooldown has passed: the next request is a probe.
    HalfOpen {
        /// Why it opened.
        cause: OpenCause,
    },
    /// A probe request is in flight; no other request is admitted.
    Probing {
        /// Why it opened.
        cause: OpenCause,
    },
}

// Circuit word: state (2 bits) | cause (2 bits) | consecutive failures (20 bits) |
// opened at, seconds since the Unix epoch (upper 32 bits).
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const PROBING: u64 = 2;
const STATE_MASK: u64 = 0b11;
const CAUSE_SHIFT: u32 = 2;
const FAILS_SHIFT: u32 = 4;
const FAILS_MASK: u64 = (1 << 20) - 1;
const OPENED_SHIFT: u32 = 32;

fn pack(state: u64, cause: OpenCause, fails: u64, opened_at: u64) -> u64 {
    let cause = match cause {
        OpenCause::ConsecutiveFailures => 0,
        OpenCause::ErrorRate => 1,
    };
    state
        | cause << CAUSE_SHIFT
        | fails.min(FAILS_MASK) << FAILS_SHIFT
        | (opened_at & 0xFFFF_FFFF) << OPENED_SHIFT
}

fn state(word: u64) -> u64 {
    word & STATE_MASK
}

fn cause(word: u64) -> OpenCause {
    if (word >> CAUSE_SHIFT) & 0b11 == 1 {
        OpenCause::ErrorRate
    } else {
        OpenCause::ConsecutiveFailures
    }
}

fn fails(word: u64) -> u64 {
    (word >> FAILS_SHIFT) & FAILS_MASK
}

fn opened_at(word: u64) -> u64 {
    word >> OPENED_SHIFT
}

/// One backend's windows, circuit and cached weight; cache-line aligned so that
/// threads recording outcomes of neighbouring backends do not share a line.
#[derive(Debug)]
#[repr(align(64))]
struct BackendQuality {
    ok_1h: Window<60, 60>,
    failed_1h: Window<60, 60>,
    ok_24h: Window<24, 3600>,
    failed_24h: Window<24, 3600>,
    ttft_count_1h: Window<60, 60>,
    ttft_ms_1h: Window<60, 60>,
    circuit: AtomicU64,
    /// The route that holds the probe while the circuit is probing (a
    /// [`RouteTicket::id`](nexus_core::stage::RouteTicket::id)); meaningless otherwise. Only
    /// that route's settlement ends or gives back the probe: routes decided before the
    /// circuit opened may settle at any time, and must not free a second probe.
    probe_owner: AtomicU64,
    /// Cached weight: the second it was computed (upper 32 bits) and weight × 2^31
    /// (lower 32). Refreshed by readers every `weight_refresh_secs`, not by recording,
    /// so that busy backends do not recompute on every decision.
    weight: AtomicU64,
}

impl BackendQuality {
    fn new() -> Self {
        Self {
            ok_1h: Window::new(),
            failed_1h: Window::new(),
            ok_24h: Window::new(),
            failed_24h: Window::new(),
            ttft_count_1h: Window::new(),
            ttft_ms_1h: Window::new(),
            circuit: AtomicU64::new(CLOSED),
            probe_owner: AtomicU64::new(NO_ROUTE),
            weight: AtomicU64::new(0),
        }
    }
}

impl BackendQuality {
    /// Whether `route` holds this backend's probe. Only the owner moves the circuit out
    /// of probing, so the answer cannot change while `route` settles.
    fn owns_probe(&self, route: u64) -> bool {
        route != NO_ROUTE && self.probe_owner.load(Ordering::Acquire) == route
    }
}

/// The route id of an outcome that belongs to no route (ids start at 1).
const NO_ROUTE: u64 = 0;

const WEIGHT_SCALE: f64 = (1u64 << 31) as f64;

/// Minutes of TTFT the weight looks at.
pub const RECENT_TTFT_MINUTES: usize = 5;

/// Outcome windows and circuit breakers for every backend of a fleet.
///
/// Recording and reading take no lock and allocate nothing: every counter is an atomic
/// bucket (see the `window` module), the circuit is one atomic word, and the quality
/// weight is cached for `weight_refresh_secs` so that a decision reads two words per
/// backend.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use nexus_core::{clock::FakeClock, fleet::BackendId};
/// use nexus_quality::{Circuit, QualitySettings, QualityTracker};
///
/// let clock = Arc::new(FakeClock::at_secs(1_800_000_000));
/// let tracker = QualityTracker::new(2, QualitySettings::default(), clock.clone());
/// let gpu = BackendId::new(0);
/// for _ in 0..5 {
///     tracker.record(gpu, false, Duration::from_millis(900), None);
/// }
/// assert!(matches!(tracker.circuit(gpu), Circuit::Open { seconds_left: 30, .. }));
/// clock.advance(Duration::from_secs(30));
/// assert!(matches!(tracker.circuit(gpu), Circuit::HalfOpen { .. }));
/// ```
#[derive(Debug)]
pub struct QualityTracker {
    /// Shared so that a reloaded tracker keeps a kept backend's windows and circuit
    /// ([`carry_over`](Self::carry_over)).
    backends: Box<[Arc<BackendQuality>]>,
    settings: QualitySettings,
    clock: Arc<dyn Clock>,
}

impl QualityTracker {
    /// A tracker for `backends` backends.
    pub fn new(backends: usize, settings: QualitySettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            backends: (0..backends)
                .map(|_| Arc::new(BackendQuality::new()))
                .collect(),
            settings,
            clock,
        }
    }

    /// A tracker for `fleet` that shares the windows, circuit and probe of every
    /// backend `previous` tracked under the same id in `previous_fleet`, so that a
    /// config reload forgets nothing about a kept backend and outcomes of requests
    /// still in flight on the old config land in the same windows. Backends new in
    /// `fleet` start afresh; backends gone from it are dropped with `previous`.
    /// Cached weights are recomputed, since `settings` may differ.
    pub fn carry_over(
        fleet: &Fleet,
        settings: QualitySettings,
        clock: Arc<dyn Clock>,
        previous: &QualityTracker,
        previous_fleet: &Fleet,
    ) -> Self {
        let backends = fleet
            .backends()
            .iter()
            .map(|backend| {
                let old = previous_fleet
                    .backend_by_name(backend.name())
                    .and_then(|old| previous.backends.get(old.id().index()));
                match old {
                    Some(old) => {
                        old.weight.store(0, Ordering::Relaxed);
                        Arc::clone(old)
                    }
                    None => Arc::new(BackendQuality::new()),
                }
            })
            .collect();
        Self {
            backends,
            settings,
            clock,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &QualitySettings {
        &self.settings
    }

    /// The clock's current second.
    pub fn now_secs(&self) -> u64 {
        self.clock.now_secs()
    }

    fn backend(&self, backend: BackendId) -> Option<&BackendQuality> {
        self.backends.get(backend.index()).map(|b| &**b)
    }

    /// Records one outcome now.
    pub fn record(
        &self,
        backend: BackendId,
        success: bool,
        latency: Duration,
        ttft: Option<Duration>,
    ) {
        self.record_at(backend, self.now_secs(), success, latency, ttft);
    }

    /// Records one outcome at `now_secs` (for replaying a log). An outcome that belongs
    /// to no route never ends a probe in flight; see [`record_route_at`](Self::record_route_at).
    /// A time to first token above [`Outcome::MAX_LATENCY`](nexus_core::Outcome::MAX_LATENCY)
    /// counts as that much, so that one absurd report cannot hold the average up for an
    /// hour.
    pub fn record_at(
        &self,
        backend: BackendId,
        now_secs: u64,
        success: bool,
        latency: Duration,
        ttft: Option<Duration>,
    ) {
        self.record_route_at(backend, NO_ROUTE, now_secs, success, latency, ttft);
    }

    /// Records the outcome of route `route` (its
    /// [`RouteTicket::id`](nexus_core::stage::RouteTicket::id)) at `now_secs`. While the circuit
    /// is probing, only the route that claimed the probe decides it (a success closes
    /// the circuit, a failure re-opens it); the outcomes of other routes, decided before
    /// the circuit opened, count in the windows but leave the circuit alone.
    pub fn record_route_at(
        &self,
        backend: BackendId,
        route: u64,
        now_secs: u64,
        success: bool,
        _latency: Duration,
        ttft: Option<Duration>,
    ) {
        let Some(q) = self.backend(backend) else {
            return;
        };
        let owns_probe = q.owns_probe(route);
        if success {
            q.ok_1h.add(now_secs, 1);
            q.ok_24h.add(now_secs, 1);
            if let Some(ttft) = ttft {
                let ttft = ttft.min(nexus_core::Outcome::MAX_LATENCY);
                q.ttft_count_1h.add(now_secs, 1);
                q.ttft_ms_1h.add(
                    now_secs,
                    u64::try_from(ttft.as_millis()).unwrap_or(u64::MAX),
                );
            }
            let _ = q
                .circuit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    match state(word) {
                        CLOSED if fails(word) == 0 => None,
                        CLOSED => Some(CLOSED),
                        PROBING if owns_probe => Some(CLOSED),
                        // A request that started before the circuit opened: the cooldown
                        // still applies, the probe decides.
                        _ => None,
                    }
                });
        } else {
            q.failed_1h.add(now_secs, 1);
            q.failed_24h.add(now_secs, 1);
            let stats = self.stats_of(q, now_secs);
            let rate_tripped = stats.samples_1h() >= u64::from(self.settings.min_samples)
                && stats.error_rate_1h() >= self.settings.max_error_rate;
            let threshold = u64::from(self.settings.failure_threshold);
            let _ = q
                .circuit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    let fails = fails(word) + 1;
                    let open = |cause| Some(pack(OPEN, cause, fails, now_secs));
                    match state(word) {
                        CLOSED if fails >= threshold => open(OpenCause::ConsecutiveFailures),
                        CLOSED if rate_tripped => open(OpenCause::ErrorRate),
                        CLOSED => Some(pack(CLOSED, OpenCause::ConsecutiveFailures, fails, 0)),
                        // Another request's probe is in flight: it decides.
                        PROBING if !owns_probe => None,
                        // A failed probe, or a failure while open: (re)start the cooldown.
                        _ => open(cause(word)),
                    }
                });
        }
    }

    /// The backend's circuit now.
    pub fn circuit(&self, backend: BackendId) -> Circuit {
        self.circuit_at(backend, self.now_secs())
    }

    /// The backend's circuit at `now_secs`.
    #[inline]
    pub fn circuit_at(&self, backend: BackendId, now_secs: u64) -> Circuit {
        let Some(q) = self.backend(backend) else {
            return Circuit::Closed;
        };
        let word = q.circuit.load(Ordering::Acquire);
        match state(word) {
            CLOSED => Circuit::Closed,
            PROBING => Circuit::Probing { cause: cause(word) },
            _ => {
                let reopen = opened_at(word).saturating_add(self.settings.cooldown_secs);
                if now_secs >= reopen {
                    Circuit::HalfOpen { cause: cause(word) }
                } else {
                    Circuit::Open {
                        cause: cause(word),
                        seconds_left: reopen - now_secs,
                    }
                }
            }
        }
    }

    /// Claims the half-open backend's one probe for route `route` (its
    /// [`RouteTicket::id`](nexus_core::stage::RouteTicket::id), not 0); false if the circuit is
    /// not half-open or another request claimed the probe first.
    pub fn try_claim_probe(&self, backend: BackendId, now_secs: u64, route: u64) -> bool {
        let Some(q) = self.backend(backend) else {
            return false;
        };
        if route == NO_ROUTE {
            return false;
        }
        let cooldown = self.settings.cooldown_secs;
        let claimed = q
            .circuit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (state(word) == OPEN && now_secs >= opened_at(word).saturating_add(cooldown))
                    .then_some(word & !STATE_MASK | PROBING)
            })
            .is_ok();
        if claimed {
            // Until this store, the owner is a route that settled long ago (ids are
            // never reused), so nobody can mistake the probe for theirs; and `route`
            // itself cannot settle before its claim returns.
            q.probe_owner.store(route, Ordering::Release);
        }
        claimed
    }

    /// Gives back a probe that route `route` claimed and never sent: half-open again.
    /// Does nothing unless `route` holds the probe.
    pub fn release_probe(&self, backend: BackendId, route: u64) {
        let Some(q) = self.backend(backend) else {
            return;
        };
        if !q.owns_probe(route) {
            return;
        }
        let _ = q
            .circuit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (state(word) == PROBING).then_some(word & !STATE_MASK | OPEN)
            });
    }

    /// The backend's windows at `now_secs`.
    pub fn stats_at(&self, backend: BackendId, now_secs: u64) -> Option<QualityStats> {
        self.backend(backend).map(|q| self.stats_of(q, now_secs))
    }

    fn stats_of(&self, q: &BackendQuality, now: u64) -> QualityStats {
        let ttft_count = q.ttft_count_1h.sum(now);
        let recent_count = q.ttft_count_1h.sum_recent(now, RECENT_TTFT_MINUTES);
        QualityStats {
            recent_ttft_ms: (recent_count > 0).then(|| {
                q.ttft_ms_1h.sum_recent(now, RECENT_TTFT_MINUTES) as f64 / recent_count as f64
            }),
            successes_1h: q.ok_1h.sum(now),
            failures_1h: q.failed_1h.sum(now),
            successes_24h: q.ok_24h.sum(now),
            failures_24h: q.failed_24h.sum(now),
            avg_ttft_ms: (ttft_count > 0).then(|| q.ttft_ms_1h.sum(now) as f64 / ttft_count as f64),
        }
    }

    /// The quality weight (see the crate docs for the formula), cached for
    /// `weight_refresh_secs`.
    #[inline]
    pub fn weight_at(&self, backend: BackendId, now_secs: u64) -> f64 {
        let Some(q) = self.backend(backend) else {
            return 1.0;
        };
        let cached = q.weight.load(Ordering::Acquire);
        let stamp = cached >> 32;
        if cached != 0 && now_secs.saturating_sub(stamp) < self.settings.weight_refresh_secs {
            return (cached & 0xFFFF_FFFF) as f64 / WEIGHT_SCALE;
        }
        let weight = self.compute_weight(&self.stats_of(q, now_secs));
        let fixed = (weight * WEIGHT_SCALE).round() as u64;
        q.weight.store(
            (now_secs & 0xFFFF_FFFF) << 32 | fixed.max(1),
            Ordering::Release,
        );
        weight
    }

    /// `(1 − e)² × t × s`, clamped to [0.01, 1]; see the crate docs.
    pub fn compute_weight(&self, stats: &QualityStats) -> f64 {
        let errors = if stats.samples_1h() >= u64::from(self.settings.min_samples) {
            stats.error_rate_1h()
        } else {
            0.0
        };
        let ttft = stats.recent_ttft_ms.map_or(1.0, |ms| {
            (self.settings.target_ttft_ms / ms.max(1.0)).min(1.0)
        });
        let success = stats.success_rate_24h().map_or(1.0, |r| 0.5 + 0.5 * r);
        ((1.0 - errors).powi(2) * ttft * success).clamp(0.01, 1.0)
    }
}
