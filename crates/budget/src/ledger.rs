//! [`SpendLedger`]: month-to-date spend, with reservations for requests in flight.
//!
//! Amounts are integer nano-dollars in atomics. One word, `total`, holds everything the
//! limit is checked against (settled + external + reserved); a reservation is a
//! compare-and-swap on it that fails when the request's cost would take it past the
//! limit, so that however many requests decide at once the limit is never overrun by a
//! reservation. No lock is taken on the decision path; the one mutex is taken once a
//! month, when the month rolls over, to archive the closed month.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nexus_core::Clock;

use crate::Month;

/// Nano-dollars in one USD.
pub const NANOS_PER_USD: f64 = 1e9;

/// USD to nano-dollars, rounded to the nearest (negative and NaN amounts count as 0).
pub fn usd_to_nanos(usd: f64) -> u64 {
    if usd.is_nan() || usd <= 0.0 {
        0
    } else {
        (usd * NANOS_PER_USD).round().min(u64::MAX as f64) as u64
    }
}

/// Nano-dollars to USD.
pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// A point-in-time view of the ledger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpendSnapshot {
    /// The month it covers.
    pub month: Month,
    /// Spend settled this month (by this process, or loaded from the store).
    pub settled_usd: f64,
    /// Spend reported by external sources this month.
    pub external_usd: f64,
    /// Estimated cost of requests in flight.
    pub reserved_usd: f64,
    /// What the limit is checked against: settled + external + reserved.
    pub total_usd: f64,
}

/// Month-to-date spend and in-flight reservations; see the module docs.
///
/// ```
/// use std::sync::Arc;
/// use nexus_budget::{usd_to_nanos, SpendLedger};
/// use nexus_core::FakeClock;
///
/// let ledger = SpendLedger::new(Arc::new(FakeClock::at_secs(1_795_307_670)));
/// let limit = usd_to_nanos(1.0);
/// ledger.try_reserve(usd_to_nanos(0.6), Some(limit)).unwrap();
/// // A second 60-cent request would pass the dollar: refused.
/// assert!(ledger.try_reserve(usd_to_nanos(0.6), Some(limit)).is_err());
/// // The first one cost 50 cents in the end.
/// ledger.settle(usd_to_nanos(0.6), usd_to_nanos(0.5));
/// assert_eq!(ledger.snapshot().total_usd, 0.5);
/// ```
#[derive(Debug)]
pub struct SpendLedger {
    clock: Arc<dyn Clock>,
    month: AtomicU32,
    /// The first second of the month after `month`: checking for a rollover is one
    /// comparison until then.
    next_month_at: AtomicU64,
    total: AtomicI64,
    settled: AtomicU64,
    external: AtomicU64,
    reserved: AtomicU64,
    closed: Mutex<BTreeMap<Month, u64>>,
}

impl SpendLedger {
    /// An empty ledger for the current month of `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let month = Month::from_unix_secs(clock.now_secs());
        Self {
            clock,
            month: AtomicU32::new(month.key()),
            next_month_at: AtomicU64::new(month.next().start_unix_secs()),
            total: AtomicI64::new(0),
            settled: AtomicU64::new(0),
            external: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            closed: Mutex::new(BTreeMap::new()),
        }
    }

    /// The month the ledger is counting, after rolling over if the clock moved on.
    pub fn month(&self) -> Month {
        self.roll_over();
        Month::from_key(self.month.load(Ordering::Acquire))
    }

    /// What the limit is checked against, in nano-dollars: settled + external +
    /// reserved spend of the current month.
    #[inline]
    pub fn total_nanos(&self) -> u64 {
        self.total_nanos_at(self.clock.now_secs())
    }

    /// [`total_nanos`](Self::total_nanos) at `now_secs` (a decision's time, read once).
    #[inline]
    pub fn total_nanos_at(&self, now_secs: u64) -> u64 {
        self.roll_over_at(now_secs);
        self.total.load(Ordering::Acquire).max(0) as u64
    }

    /// A view of the current month.
    pub fn snapshot(&self) -> SpendSnapshot {
        let month = self.month();
        SpendSnapshot {
            month,
            settled_usd: nanos_to_usd(self.settled.load(Ordering::Acquire)),
            external_usd: nanos_to_usd(self.external.load(Ordering::Acquire)),
            reserved_usd: nanos_to_usd(self.reserved.load(Ordering::Acquire)),
            total_usd: nanos_to_usd(self.total.load(Ordering::Acquire).max(0) as u64),
        }
    }

    /// Settled plus external spend of a closed month, or of the current one.
    pub fn month_spend(&self, month: Month) -> Option<f64> {
        if month == self.month() {
            let spend =
                self.settled.load(Ordering::Acquire) + self.external.load(Ordering::Acquire);
            return Some(nanos_to_usd(spend));
        }
        self.lock_closed().get(&month).map(|n| nanos_to_usd(*n))
    }

    /// Reserves `cost` nano-dollars for a request in flight. With a `limit`, refuses
    /// (returning the total it saw) when the reservation would take the total past it;
    /// the check and the reservation are one atomic step.
    #[inline]
    pub fn try_reserve(&self, cost: u64, limit: Option<u64>) -> Result<(), u64> {
        self.roll_over();
        let cost = to_i64(cost);
        match limit {
            None => {
                self.total.fetch_add(cost, Ordering::AcqRel);
            }
            Some(limit) => {
                let limit = to_i64(limit);
                self.total
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                        (total.saturating_add(cost) <= limit).then(|| total + cost)
                    })
                    .map_err(|total| total.max(0) as u64)?;
            }
        }
        self.reserved.fetch_add(cost as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Releases a reservation without spending (the request was never served).
    pub fn release(&self, reserved: u64) {
        self.reserved.fetch_sub(reserved, Ordering::AcqRel);
        self.total.fetch_sub(to_i64(reserved), Ordering::AcqRel);
    }

    /// Replaces a reservation with the actual cost of the served request.
    pub fn settle(&self, reserved: u64, actual: u64) {
        self.settle_at(reserved, actual, self.clock.now_secs());
    }

    /// [`settle`](Self::settle) at `now_secs` (when the caller knows the time).
    pub fn settle_at(&self, reserved: u64, actual: u64, now_secs: u64) {
        self.roll_over_at(now_secs);
        // Settled first, then the total: a roll-over in between attributes the cost to
        // the closing month and leaves the total consistent (see roll_over).
        self.settled.fetch_add(actual, Ordering::AcqRel);
        self.reserved.fetch_sub(reserved, Ordering::AcqRel);
        self.total
            .fetch_add(to_i64(actual) - to_i64(reserved), Ordering::AcqRel);
    }

    /// Raises the settled spend of the current month to `nanos` if it is lower, e.g.
    /// to the total a shared store holds (which includes other replicas' spend).
    pub fn fold_settled(&self, nanos: u64) {
        self.roll_over();
        let previous = self.settled.fetch_max(nanos, Ordering::AcqRel);
        if nanos > previous {
            self.total
                .fetch_add(to_i64(nanos - previous), Ordering::AcqRel);
        }
    }

    /// Sets the spend reported by external sources for the current month.
    pub fn set_external(&self, nanos: u64) {
        self.roll_over();
        let previous = self.external.swap(nanos, Ordering::AcqRel);
        self.total
            .fetch_add(to_i64(nanos) - to_i64(previous), Ordering::AcqRel);
    }

    /// Sets the month-to-date spend (settled + external) to `usd`, keeping what is
    /// reserved: for a what-if decision (`nexus route --spent`).
    pub fn set_month_to_date(&self, usd: f64) {
        self.roll_over();
        let target = usd_to_nanos(usd);
        let external = self.external.swap(0, Ordering::AcqRel);
        let settled = self.settled.swap(target, Ordering::AcqRel);
        self.total.fetch_add(
            to_i64(target) - to_i64(settled) - to_i64(external),
            Ordering::AcqRel,
        );
    }

    /// Archives the month that ended and starts the new one from zero; reservations of
    /// requests still in flight carry over, since they will settle in the new month.
    fn roll_over(&self) {
        self.roll_over_at(self.clock.now_secs());
    }

    #[inline]
    fn roll_over_at(&self, now_secs: u64) {
        if now_secs < self.next_month_at.load(Ordering::Acquire) {
            return;
        }
        self.roll_over_slow(now_secs);
    }

    #[cold]
    fn roll_over_slow(&self, now_secs: u64) {
        let now = Month::from_unix_secs(now_secs).key();
        if self.month.load(Ordering::Acquire) >= now {
            return;
        }
        let mut closed = self.lock_closed();
        let current = self.month.load(Ordering::Acquire);
        if current >= now {
            return; // another thread rolled over while we waited
        }
        let settled = self.settled.swap(0, Ordering::AcqRel);
        let external = self.external.swap(0, Ordering::AcqRel);
        self.total
            .fetch_sub(to_i64(settled) + to_i64(external), Ordering::AcqRel);
        *closed.entry(Month::from_key(current)).or_default() += settled + external;
        self.month.store(now, Ordering::Release);
        self.next_month_at.store(
            Month::from_key(now).next().start_unix_secs(),
            Ordering::Release,
        );
        tracing::info!(closed = %Month::from_key(current), spend_usd = nanos_to_usd(settled + external), "budget month rolled over");
    }

    fn lock_closed(&self) -> std::sync::MutexGuard<'_, BTreeMap<Month, u64>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it torn.
        self.closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn to_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::FakeClock;
    use std::time::Duration;

    fn ledger() -> (Arc<FakeClock>, SpendLedger) {
        let start = Month::new(2026, 11).unwrap().start_unix_secs();
        let clock = Arc::new(FakeClock::at_secs(start + 86_400));
        (clock.clone(), SpendLedger::new(clock))
    }

    #[test]
    fn reservations_count_toward_the_limit_and_settle_to_the_actual_cost() {
        let (_, ledger) = ledger();
        ledger.try_reserve(400, Some(1000)).unwrap();
        ledger.try_reserve(600, Some(1000)).unwrap();
        assert_eq!(ledger.try_reserve(1, Some(1000)), Err(1000));
        ledger.settle(400, 300);
        ledger.release(600);
        assert_eq!(ledger.total_nanos(), 300);
        let snapshot = ledger.snapshot();
        assert_eq!(snapshot.reserved_usd, 0.0);
        assert_eq!(snapshot.settled_usd, 300e-9);
    }

    #[test]
    fn rollover_starts_from_zero_keeps_reservations_and_the_old_month() {
        let (clock, ledger) = ledger();
        ledger.try_reserve(500, None).unwrap();
        ledger.settle(500, 450);
        ledger.set_external(1000);
        ledger.try_reserve(200, None).unwrap();
        assert_eq!(ledger.total_nanos(), 1650);

        clock.advance(Duration::from_secs(31 * 86_400));
        assert_eq!(ledger.month().to_string(), "2026-12");
        assert_eq!(ledger.total_nanos(), 200, "only the request in flight");
        assert_eq!(
            ledger.month_spend(Month::new(2026, 11).unwrap()),
            Some(1450e-9)
        );
        // The request in flight settles in the new month.
        ledger.settle(200, 180);
        assert_eq!(ledger.total_nanos(), 180);
        assert_eq!(
            ledger.month_spend(Month::new(2026, 12).unwrap()),
            Some(180e-9)
        );
    }

    #[test]
    fn folding_a_store_total_only_raises() {
        let (_, ledger) = ledger();
        ledger.settle(0, 100);
        ledger.fold_settled(50);
        assert_eq!(ledger.total_nanos(), 100);
        ledger.fold_settled(400);
        assert_eq!(ledger.total_nanos(), 400);
    }

    proptest::proptest! {
        /// Whatever the sequence of reservations, settlements (at or below what was
        /// reserved) and releases, spend never passes the limit, and what is settled is
        /// exactly the sum of the settled costs.
        #[test]
        fn spend_never_passes_the_limit(
            ops in proptest::collection::vec((0u8..3, 1u64..400, 0u64..=100), 1..200),
            limit in 1u64..5_000,
        ) {
            let (_, ledger) = ledger();
            let mut open: Vec<u64> = Vec::new();
            let mut settled = 0u64;
            for (op, cost, percent_used) in ops {
                match op {
                    0 => {
                        if ledger.try_reserve(cost, Some(limit)).is_ok() {
                            open.push(cost);
                        }
                    }
                    1 => {
                        if let Some(reserved) = open.pop() {
                            let actual = reserved * percent_used / 100;
                            ledger.settle(reserved, actual);
                            settled += actual;
                        }
                    }
                    _ => {
                        if let Some(reserved) = open.pop() {
                            ledger.release(reserved);
                        }
                    }
                }
                proptest::prop_assert!(ledger.total_nanos() <= limit);
                proptest::prop_assert_eq!(ledger.total_nanos(), settled + open.iter().sum::<u64>());
            }
        }
    }

    #[test]
    fn month_to_date_overrides_settled_and_external() {
        let (_, ledger) = ledger();
        ledger.settle(0, 100);
        ledger.set_external(50);
        ledger.try_reserve(7, None).unwrap();
        ledger.set_month_to_date(1.5);
        assert_eq!(ledger.total_nanos(), 1_500_000_007);
    }
}
