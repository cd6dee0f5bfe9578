//! [`SpendLedger`]: month-to-date spend, with reservations for requests in flight.
//!
//! Amounts are integer nano-dollars in atomics. One word, `total`, holds everything the
//! limit is checked against (settled + external + reserved); a reservation is a
//! compare-and-swap on it that fails when the request's cost would take it past the
//! limit, so that however many requests decide at once the limit is never overrun by a
//! reservation. No lock is taken on the decision path.
//!
//! Settling takes a read lock, shared with every other settlement, that only the
//! month's rollover takes for writing (once a month): so a settled amount is counted in
//! exactly one month, and the ledger can say which ([`SpendLedger::settle_at`]) for the
//! journal to write it under the same month.
//!
//! Arithmetic saturates: an amount past the `i64` word (about $9.2 billion, nine times
//! the largest limit) pins the total at its maximum, over every limit, until the month
//! ends; nothing wraps and nothing panics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use nexus_core::clock::Clock;

use crate::{nanos_to_usd, usd_to_nanos, Month};

/// The total once an amount passed the ledger's range: it stays there until the month
/// rolls over, rather than come back down below what was really spent.
const SATURATED: i64 = i64::MAX;

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
/// use nexus_core::clock::FakeClock;
///
/// let ledger = SpendLedger::new(Arc::new(FakeClock::at_secs(1_795_307_670)));
/// let limit = usd_to_nanos(1.0);
/// ledger.try_reserve(usd_to_nanos(0.6), Some(limit)).unwrap();
/// // A second 60-cent request would pass the dollar: refused.
/// assert!(ledger.try_reserve(usd_to_nanos(0.6), Some(limit)).is_err());
/// // The first one cost 50 cents in the end, counted in November 2026.
/// let month = ledger.settle(usd_to_nanos(0.6), usd_to_nanos(0.5));
/// assert_eq!(month.to_string(), "2026-11");
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
    /// Held for reading while an amount is filed under the current month, for writing
    /// while the month changes; see the module docs.
    month_gate: RwLock<()>,
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
            month_gate: RwLock::new(()),
            closed: Mutex::new(BTreeMap::new()),
        }
    }

    /// The month the ledger is counting, after rolling over if the clock moved on.
    pub fn month(&self) -> Month {
        self.roll_over();
        self.current_month()
    }

    fn current_month(&self) -> Month {
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
        self.roll_over();
        {
            let _gate = self.read_gate();
            if month == self.current_month() {
                let spend = self
                    .settled
                    .load(Ordering::Acquire)
                    .saturating_add(self.external.load(Ordering::Acquire));
                return Some(nanos_to_usd(spend));
            }
        }
        self.lock_closed().get(&month).map(|n| nanos_to_usd(*n))
    }

    /// Reserves `cost` nano-dollars for a request in flight. With a `limit`, refuses
    /// (returning the total it saw) when the reservation would take the total past it;
    /// the check and the reservation are one atomic step. A reservation of 0 is refused
    /// only once the total is past the limit.
    #[inline]
    pub fn try_reserve(&self, cost: u64, limit: Option<u64>) -> Result<(), u64> {
        self.roll_over();
        let cost = to_i64(cost);
        match limit {
            None => self.add_total(cost),
            Some(limit) => {
                let limit = to_i64(limit);
                self.total
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                        let next = total.saturating_add(cost);
                        (next <= limit).then_some(next)
                    })
                    .map_err(|total| total.max(0) as u64)?;
            }
        }
        add(&self.reserved, cost as u64);
        Ok(())
    }

    /// Releases a reservation without spending (the request was never served).
    pub fn release(&self, reserved: u64) {
        sub(&self.reserved, reserved);
        self.add_total(-to_i64(reserved));
    }

    /// Replaces a reservation with the actual cost of the served request; returns the
    /// month the cost was counted in.
    pub fn settle(&self, reserved: u64, actual: u64) -> Month {
        self.settle_at(reserved, actual, self.clock.now_secs())
    }

    /// [`settle`](Self::settle) at `now_secs` (the time the request ended, read from a
    /// clock). The cost is counted in the ledger's current month: the month of
    /// `now_secs`, or a later one if the ledger already rolled over (a clock read just
    /// before midnight by a request that settles just after another one rolled the
    /// month). The month returned is the one the cost was counted in, so that whoever
    /// persists it files it under the same month.
    pub fn settle_at(&self, reserved: u64, actual: u64, now_secs: u64) -> Month {
        self.roll_over_at(now_secs);
        let _gate = self.read_gate();
        add(&self.settled, actual);
        sub(&self.reserved, reserved);
        self.add_total(to_i64(actual) - to_i64(reserved));
        self.current_month()
    }

    /// Raises the settled spend of `month` to `nanos` if it is lower, e.g. to the total
    /// a shared store holds (which includes other replicas' spend). Ignored, returning
    /// false, when `month` is no longer the current month: a total read for a month
    /// that has just closed must not land in the new one.
    pub fn fold_settled(&self, month: Month, nanos: u64) -> bool {
        self.roll_over();
        let _gate = self.read_gate();
        if month != self.current_month() {
            return false;
        }
        let previous = self.settled.fetch_max(nanos, Ordering::AcqRel);
        if nanos > previous {
            self.add_total(to_i64(nanos - previous));
        }
        true
    }

    /// Sets the spend reported by external sources for `month`; ignored, returning
    /// false, when `month` is no longer the current month.
    pub fn set_external(&self, month: Month, nanos: u64) -> bool {
        self.roll_over();
        let _gate = self.read_gate();
        if month != self.current_month() {
            return false;
        }
        let previous = self.external.swap(nanos, Ordering::AcqRel);
        self.add_total(to_i64(nanos) - to_i64(previous));
        true
    }

    /// Sets the month-to-date spend (settled + external) to `usd`, keeping what is
    /// reserved: for a what-if decision (`nexus route --spent`).
    pub fn set_month_to_date(&self, usd: f64) {
        self.roll_over();
        let _gate = self.read_gate();
        let target = usd_to_nanos(usd);
        let external = self.external.swap(0, Ordering::AcqRel);
        let settled = self.settled.swap(target, Ordering::AcqRel);
        let delta = i128::from(target) - i128::from(settled) - i128::from(external);
        self.add_total(delta.clamp(i64::MIN.into(), i64::MAX.into()) as i64);
    }

    /// Adds `delta` to the total, saturating; a saturated total stays saturated.
    fn add_total(&self, delta: i64) {
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                (total != SATURATED).then(|| total.saturating_add(delta))
            });
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
        // No settlement is filing an amount while the gate is held for writing.
        let _gate = self
            .month_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.month.load(Ordering::Acquire);
        if current >= now {
            return; // another thread rolled over while we waited
        }
        let settled = self.settled.swap(0, Ordering::AcqRel);
        let external = self.external.swap(0, Ordering::AcqRel);
        let spend = settled.saturating_add(external);
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                Some(if total == SATURATED {
                    // Start the new month from what is in flight. Reservations made
                    // meanwhile may be off by one request: a saturated month is past
                    // any limit by billions already.
                    to_i64(self.reserved.load(Ordering::Acquire))
                } else {
                    total.saturating_sub(to_i64(spend))
                })
            });
        {
            let mut closed = self.lock_closed();
            let archived = closed.entry(Month::from_key(current)).or_default();
            *archived = archived.saturating_add(spend);
        }
        self.month.store(now, Ordering::Release);
        self.next_month_at.store(
            Month::from_key(now).next().start_unix_secs(),
            Ordering::Release,
        );
        tracing::info!(closed = %Month::from_key(current), spend_usd = nanos_to_usd(spend), "budget month rolled over");
    }

    fn read_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // The gate guards no data: a panic elsewhere cannot leave anything torn.
        self.month_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_closed(&self) -> std::sync::MutexGuard<'_, BTreeMap<Month, u64>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it torn.
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn to_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// Saturating atomic addition.
fn add(counter: &AtomicU64, nanos: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_add(nanos))
    });
}

/// Saturating atomic subtraction.
fn sub(counter: &AtomicU64, nanos: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_sub(nanos))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::clock::FakeClock;
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
        ledger.set_external(ledger.month(), 1000);
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
        assert_eq!(ledger.settle(200, 180), Month::new(2026, 12).unwrap());
        assert_eq!(ledger.total_nanos(), 180);
        assert_eq!(
            ledger.month_spend(Month::new(2026, 12).unwrap()),
            Some(180e-9)
        );
    }

    #[test]
    fn folding_a_store_total_only_raises() {
        let (_, ledger) = ledger();
        let month = ledger.month();
        ledger.settle(0, 100);
        assert!(ledger.fold_settled(month, 50));
        assert_eq!(ledger.total_nanos(), 100);
        assert!(ledger.fold_settled(month, 400));
        assert_eq!(ledger.total_nanos(), 400);
    }

    #[test]
    fn a_settlement_is_counted_and_reported_in_the_ledgers_month() {
        let (clock, ledger) = ledger();
        let november = ledger.month();
        let december = november.next();
        let last_second = december.start_unix_secs() - 1;
        clock.set_secs(december.start_unix_secs() + 1);
        ledger.try_reserve(10, None).unwrap();
        assert_eq!(ledger.month(), december);
        // A clock read at 23:59:59 on the 30th, settled after the month rolled over:
        // counted in December, and reported so.
        assert_eq!(ledger.settle_at(10, 7, last_second), december);
        assert_eq!(ledger.month_spend(december), Some(7e-9));
        assert_eq!(ledger.month_spend(november), Some(0.0));
    }

    #[test]
    fn totals_read_for_a_month_that_closed_do_not_land_in_the_next() {
        let (clock, ledger) = ledger();
        let november = ledger.month();
        clock.set_secs(november.next().start_unix_secs());
        assert!(!ledger.fold_settled(november, 5_000));
        assert!(!ledger.set_external(november, 7_000));
        assert_eq!(ledger.total_nanos(), 0);
        assert!(ledger.set_external(november.next(), 7_000));
        assert_eq!(ledger.total_nanos(), 7_000);
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
        ledger.set_external(ledger.month(), 50);
        ledger.try_reserve(7, None).unwrap();
        ledger.set_month_to_date(1.5);
        assert_eq!(ledger.total_nanos(), 1_500_000_007);
    }

    #[test]
    fn amounts_past_the_range_saturate_and_stay_over_every_limit_until_the_month_ends() {
        let (clock, ledger) = ledger();
        // Warn mode reserves without a limit: $5 billion twice would wrap an i64.
        let five_billion = usd_to_nanos(5e9);
        ledger.try_reserve(five_billion, None).unwrap();
        ledger.try_reserve(five_billion, None).unwrap();
        assert_eq!(ledger.total_nanos(), i64::MAX as u64);
        // Releasing one does not bring the total back below what is really in flight.
        ledger.release(five_billion);
        assert_eq!(ledger.total_nanos(), i64::MAX as u64);
        assert!(ledger.try_reserve(1, Some(usd_to_nanos(1e9))).is_err());
        ledger.settle(five_billion, u64::MAX);
        ledger.settle(0, u64::MAX);
        assert_eq!(ledger.snapshot().settled_usd, nanos_to_usd(u64::MAX));
        ledger.set_month_to_date(1e300);
        ledger.set_month_to_date(0.0);
        assert_eq!(ledger.total_nanos(), i64::MAX as u64);
        // The next month starts from what is in flight: nothing.
        clock.advance(Duration::from_secs(31 * 86_400));
        assert_eq!(ledger.total_nanos(), 0);
        assert!(ledger.try_reserve(1, Some(usd_to_nanos(1e9))).is_ok());
    }

    #[test]
    fn a_what_if_spend_past_the_range_reads_as_over_the_largest_limit() {
        let (_, ledger) = ledger();
        ledger.set_month_to_date(3e10);
        assert!(ledger.total_nanos() >= usd_to_nanos(crate::MAX_LIMIT_USD));
        ledger.release(u64::MAX);
        ledger.set_month_to_date(2.0);
        ledger.release(u64::MAX);
        assert_eq!(ledger.snapshot().reserved_usd, 0.0);
    }
}
