//! The state of a backend that changes while requests flow: its [`BackendStatus`],
//! in-flight count and latency average, all atomics in a [`LiveState`], read by
//! decisions without locks and updated by route guards and health checks.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use serde::Deserialize;

/// A backend's health as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum BackendStatus {
    /// Serving requests.
    #[default]
    Healthy = 0,
    /// Up, but loading a model: requests routed to it wait (a Queue decision).
    Loading = 1,
    /// Down: not admitted as a candidate.
    Unhealthy = 2,
}

impl BackendStatus {
    /// The status as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Healthy => "healthy",
            BackendStatus::Loading => "loading",
            BackendStatus::Unhealthy => "unhealthy",
        }
    }

    const fn from_u8(value: u8) -> Self {
        match value {
            0 => BackendStatus::Healthy,
            1 => BackendStatus::Loading,
            _ => BackendStatus::Unhealthy,
        }
    }
}

impl fmt::Display for BackendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a backend that changes while requests flow: atomics, read without locks.
///
/// Aligned to a cache line so that threads updating neighbouring backends do not slow
/// each other down.
#[derive(Debug)]
#[repr(align(64))]
pub struct LiveState {
    in_flight: AtomicU32,
    pub(super) status: AtomicU8,
    /// Latency EWMA in milliseconds as `f64` bits; 0 means no sample yet.
    latency_ewma_ms: AtomicU64,
    /// When the last latency sample arrived, seconds since the Unix epoch.
    latency_at_secs: AtomicU64,
}

/// Weight of a new latency sample in the EWMA.
const LATENCY_EWMA_ALPHA: f64 = 0.2;

/// Seconds after which a backend's latency average is old news: it is no longer
/// reported, so schedulers fall back to their default and try the backend again, and the
/// next sample starts the average afresh.
pub const LATENCY_MEMORY_SECS: u64 = 60;

impl LiveState {
    pub(super) fn new(status: BackendStatus) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            status: AtomicU8::new(status as u8),
            latency_ewma_ms: AtomicU64::new(0),
            latency_at_secs: AtomicU64::new(0),
        }
    }

    /// Requests routed to the backend and not yet finished.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current health.
    #[inline]
    pub fn status(&self) -> BackendStatus {
        BackendStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// The latency EWMA in milliseconds at `now_secs`: `None` before the first sample
    /// and once the last one is more than [`LATENCY_MEMORY_SECS`] old.
    #[inline]
    pub fn latency_ewma_ms(&self, now_secs: u64) -> Option<f64> {
        let at = self.latency_at_secs.load(Ordering::Relaxed);
        if now_secs.saturating_sub(at) > LATENCY_MEMORY_SECS {
            return None;
        }
        let bits = self.latency_ewma_ms.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Folds a latency sample taken at `now_secs` into the EWMA (weight 0.2 for the new
    /// sample); after [`LATENCY_MEMORY_SECS`] without samples it starts afresh. A sample
    /// above [`Outcome::MAX_LATENCY`](crate::Outcome::MAX_LATENCY) counts as that much.
    pub fn record_latency(&self, latency: Duration, now_secs: u64) {
        let previous = self
            .latency_at_secs
            .swap(now_secs.max(1), Ordering::Relaxed);
        let stale = now_secs.saturating_sub(previous) > LATENCY_MEMORY_SECS;
        let latency = latency.min(crate::Outcome::MAX_LATENCY);
        let sample = (latency.as_secs_f64() * 1000.0).max(0.001);
        // A lost update under contention would only drop one sample, but the CAS loop is
        // cheap and keeps the average exact.
        let _ = self
            .latency_ewma_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == 0 || stale {
                    sample
                } else {
                    let old = f64::from_bits(bits);
                    old + LATENCY_EWMA_ALPHA * (sample - old)
                };
                Some(next.to_bits())
            });
    }

    /// Counts a request as started.
    pub fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request as finished. Each `begin_request` must be matched by exactly one
    /// call (route guards see to it); an extra call is ignored rather than wrapping.
    pub fn end_request(&self) {
        let previous = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if previous == 0 {
            // Undo an unmatched call instead of leaving the counter at u32::MAX.
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }
}
