//! Time, behind a trait so that budget months, outcome windows and cooldowns can be
//! tested with a `FakeClock` (feature `test-util`) instead of sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(any(test, feature = "test-util"))]
pub use fake::FakeClock;

/// A source of wall-clock time, in nanoseconds since the Unix epoch (UTC).
///
/// Implementations must be cheap: stages may read the clock on every decision.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since 1970-01-01T00:00:00Z.
    fn now_nanos(&self) -> u64;

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_nanos() / 1_000_000_000
    }
}

/// The real clock: [`SystemTime::now`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

/// The clock for tests; compiled with the `test-util` feature.
#[cfg(any(test, feature = "test-util"))]
mod fake {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::Clock;

    /// A clock that stands still until told to move; for tests.
    ///
    /// ```
    /// use nexus_core::clock::{Clock, FakeClock};
    /// use std::time::Duration;
    ///
    /// let clock = FakeClock::at_secs(1_700_000_000);
    /// clock.advance(Duration::from_secs(90));
    /// assert_eq!(clock.now_secs(), 1_700_000_090);
    /// ```
    #[derive(Debug, Default)]
    pub struct FakeClock {
        nanos: AtomicU64,
    }

    impl FakeClock {
        /// A clock showing `secs` seconds after the Unix epoch.
        pub fn at_secs(secs: u64) -> Self {
            Self {
                nanos: AtomicU64::new(secs.saturating_mul(1_000_000_000)),
            }
        }

        /// Moves the clock forward by `by`, stopping at the end of time (`u64::MAX`
        /// nanoseconds, in 2554) rather than wrapping to 1970.
        pub fn advance(&self, by: Duration) {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .nanos
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                    Some(now.saturating_add(by))
                });
        }

        /// Sets the clock to `secs` seconds after the Unix epoch.
        pub fn set_secs(&self, secs: u64) {
            self.nanos
                .store(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now_nanos(&self) -> u64 {
            self.nanos.load(Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_fake_clock_stops_at_the_end_of_time_instead_of_wrapping() {
        let clock = FakeClock::at_secs(1_800_000_000);
        clock.advance(Duration::from_secs(u64::MAX));
        assert_eq!(clock.now_nanos(), u64::MAX);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_nanos(), u64::MAX);
    }
}
