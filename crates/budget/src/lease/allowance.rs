//! [`Allowance`]: what this replica may still spend from its lease, drawn by decisions
//! with one compare-and-swap.
//!
//! The word that decisions swap holds two things, so that one CAS checks both: the
//! amount left (nano-dollars, signed: a settlement above its reservation can leave a
//! debt that the next grant pays) and a generation that changes when the month does.
//! A settlement must know whether its reservation came from the current month's lease
//! or the previous one, and the route ticket only carries the decision's time; so each
//! generation records the first decision second it accepts, and a draw decided earlier
//! is refused. Then "decided before the generation started" means "drawn from an older
//! one", exactly.
//!
//! The background task ([`LeaseClient`](super::LeaseClient)) is the only writer of
//! generations, deadlines and grants; decisions and settlements only move amounts.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::Month;

const AMOUNT_BITS: u32 = 56;
const AMOUNT_MASK: u64 = (1 << AMOUNT_BITS) - 1;
const AMOUNT_MAX: i64 = (1 << (AMOUNT_BITS - 1)) - 1;
const AMOUNT_MIN: i64 = -(1 << (AMOUNT_BITS - 1));

fn pack(generation: u8, amount: i64) -> u64 {
    (u64::from(generation) << AMOUNT_BITS)
        | (amount.clamp(AMOUNT_MIN, AMOUNT_MAX) as u64 & AMOUNT_MASK)
}

fn generation_of(word: u64) -> u8 {
    (word >> AMOUNT_BITS) as u8
}

fn amount_of(word: u64) -> i64 {
    ((word << (64 - AMOUNT_BITS)) as i64) >> (64 - AMOUNT_BITS)
}

fn to_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// Why a draw was refused. Each means "paid backends are over budget for this
/// decision"; they differ in what an operator should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No answer from Redis since this process started: the month's spend is unknown,
    /// so nothing paid is routed yet.
    NotReady,
    /// The month has just changed (by Redis's clock) and this decision was made before
    /// the new month's lease arrived (at most about a second while Redis answers).
    RollingOver,
    /// The lease expired without a renewal (Redis unreachable or too slow) and
    /// `on_unavailable` is `fail_closed`.
    Unavailable,
    /// The lease left does not cover the cost: the shared budget is (nearly) spent, or
    /// this replica's top-up has not arrived yet.
    Insufficient {
        /// What was left, in nano-dollars (negative: a debt).
        left: i64,
    },
}

#[derive(Debug, Default)]
struct Slot {
    /// `Month::key() + 1` of the generation using this slot; 0 before the first.
    month: AtomicU32,
    /// The first decision second the generation accepts.
    start_secs: AtomicU64,
    /// Spend settled against the generation's month and not collected yet.
    settled: AtomicU64,
}

/// The lease this replica holds, as decisions see it; see the module docs.
///
/// ```
/// use nexus_budget::lease::{Allowance, Refusal};
/// let allowance = Allowance::new(false);
/// // Nothing is drawn before the first answer from Redis.
/// assert_eq!(allowance.try_draw(10, 1_000), Err(Refusal::NotReady));
/// ```
#[derive(Debug)]
pub struct Allowance {
    word: AtomicU64,
    /// Draws are allowed while the decision's second is below this.
    deadline_secs: AtomicU64,
    /// The first second of the next month (by Redis's clock, in ours): a decision from
    /// then on waits for that month's lease.
    month_end_secs: AtomicU64,
    slots: [Slot; 2],
    largest_refused: AtomicU64,
    fail_open: bool,
}

impl Allowance {
    /// An empty allowance. With `fail_open`, an expired lease does not stop draws: they
    /// go on as a debt, limited only by the local ledger, until Redis answers again
    /// (the lease client expires the lease at once when a call fails in that mode).
    pub fn new(fail_open: bool) -> Self {
        Self {
            word: AtomicU64::new(pack(0, 0)),
            deadline_secs: AtomicU64::new(0),
            month_end_secs: AtomicU64::new(u64::MAX),
            slots: Default::default(),
            largest_refused: AtomicU64::new(0),
            fail_open,
        }
    }

    /// Draws `cost` nano-dollars for a decision made at `decided_at_secs` (the route
    /// ticket's time). One compare-and-swap; never blocks, never allocates.
    #[inline]
    pub fn try_draw(&self, cost: u64, decided_at_secs: u64) -> Result<(), Refusal> {
        if cost == 0 {
            return Ok(());
        }
        let cost_i = to_i64(cost);
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let generation = generation_of(word);
            if generation == 0 {
                return Err(Refusal::NotReady);
            }
            let slot = &self.slots[usize::from(generation & 1)];
            if decided_at_secs < slot.start_secs.load(Ordering::Acquire)
                || decided_at_secs >= self.month_end_secs.load(Ordering::Acquire)
            {
                return Err(Refusal::RollingOver);
            }
            let left = amount_of(word);
            let live = decided_at_secs < self.deadline_secs.load(Ordering::Acquire);
            if !live && !self.fail_open {
                return Err(Refusal::Unavailable);
            }
            let next = left.saturating_sub(cost_i);
            if (live && left < cost_i) || next < AMOUNT_MIN {
                self.largest_refused.fetch_max(cost, Ordering::Relaxed);
                return Err(Refusal::Insufficient { left });
            }
            match self.word.compare_exchange_weak(
                word,
                pack(generation, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => word = current,
            }
        }
    }

    /// Whether a decision at `now_secs` could draw `cost` now (a read, no draw): for a
    /// stage that wants to exclude paid backends before picking one.
    #[inline]
    pub fn could_draw(&self, cost: u64, now_secs: u64) -> bool {
        let word = self.word.load(Ordering::Acquire);
        let generation = generation_of(word);
        if cost == 0 {
            return true;
        }
        if generation == 0
            || now_secs
                < self.slots[usize::from(generation & 1)]
                    .start_secs
                    .load(Ordering::Acquire)
            || now_secs >= self.month_end_secs.load(Ordering::Acquire)
        {
            return false;
        }
        if now_secs < self.deadline_secs.load(Ordering::Acquire) {
            amount_of(word) >= to_i64(cost)
        } else {
            self.fail_open
        }
    }

    /// Replaces the reservation `reserved` of a decision made at `decided_at_secs` with
    /// the `actual` cost: the difference goes back to (or, above the reservation, comes
    /// out of) the allowance, and `actual` is queued for Redis. A reservation from an
    /// older month's lease only queues `actual` for that month.
    pub fn settle(&self, reserved: u64, actual: u64, decided_at_secs: u64) {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let generation = generation_of(word);
            let slot = &self.slots[usize::from(generation & 1)];
            if decided_at_secs < slot.start_secs.load(Ordering::Acquire) {
                let previous = &self.slots[usize::from((generation ^ 1) & 1)];
                previous.settled.fetch_add(actual, Ordering::AcqRel);
                return;
            }
            let next = amount_of(word)
                .saturating_add(to_i64(reserved))
                .saturating_sub(to_i64(actual));
            match self.word.compare_exchange_weak(
                word,
                pack(generation, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if actual > 0 {
                        slot.settled.fetch_add(actual, Ordering::AcqRel);
                    }
                    return;
                }
                Err(current) => word = current,
            }
        }
    }

    /// Gives back a reservation that was never spent.
    pub fn release(&self, reserved: u64, decided_at_secs: u64) {
        self.settle(reserved, 0, decided_at_secs);
    }

    /// What is left to draw, in nano-dollars (negative: a debt).
    pub fn left(&self) -> i64 {
        amount_of(self.word.load(Ordering::Acquire))
    }

    /// The month of the current lease, once Redis has answered.
    pub fn month(&self) -> Option<Month> {
        let generation = generation_of(self.word.load(Ordering::Acquire));
        let key = self.slots[usize::from(generation & 1)]
            .month
            .load(Ordering::Acquire);
        key.checked_sub(1).map(Month::from_key)
    }

    /// The second from which draws are refused until the lease is renewed.
    pub fn deadline_secs(&self) -> u64 {
        self.deadline_secs.load(Ordering::Acquire)
    }

    /// Starts the lease of `month`: decisions from `start_secs` on draw from `amount`;
    /// what is left of the previous month's lease is dropped (that month is over), and
    /// its settlements keep going to that month. Returns the spend still queued in the
    /// slot this generation reuses (two months back; its month, if any, and amount).
    /// The background task is the only caller.
    pub(crate) fn start_month(
        &self,
        month: Month,
        start_secs: u64,
        amount: i64,
    ) -> (Option<Month>, u64) {
        let old = generation_of(self.word.load(Ordering::Acquire));
        // Generation 0 means "never answered"; after 255 comes 2 (parity alternates).
        let generation = if old == u8::MAX { 2 } else { old + 1 };
        let slot = &self.slots[usize::from(generation & 1)];
        let stale_month = slot.month.load(Ordering::Acquire).checked_sub(1);
        let stale = slot.settled.swap(0, Ordering::AcqRel);
        slot.month.store(month.key() + 1, Ordering::Release);
        slot.start_secs.store(start_secs, Ordering::Release);
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            // Spent before the first answer (a route reserved nothing yet cost
            // something): a debt the first lease pays.
            let carry = if generation_of(word) == 0 {
                amount_of(word)
            } else {
                0
            };
            let next = pack(generation, amount.saturating_add(carry));
            match self
                .word
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        (stale_month.map(Month::from_key), stale)
    }

    /// Adds `delta` (a grant, or a negative correction) to what is left.
    pub(crate) fn adjust(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some(pack(
                    generation_of(word),
                    amount_of(word).saturating_add(delta),
                ))
            });
    }

    /// Takes what is left above `keep` out of the allowance (to give back to Redis).
    pub(crate) fn take_above(&self, keep: i64) -> u64 {
        let mut taken = 0;
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let left = amount_of(word);
                taken = u64::try_from(left.saturating_sub(keep)).unwrap_or(0);
                (taken > 0).then(|| pack(generation_of(word), keep))
            });
        taken
    }

    pub(crate) fn set_deadline(&self, secs: u64) {
        self.deadline_secs.store(secs, Ordering::Release);
    }

    /// Sets the first second of the next month (our clock): decisions from then on are
    /// refused as [`Refusal::RollingOver`] until a lease of that month starts.
    pub(crate) fn set_month_end(&self, secs: u64) {
        self.month_end_secs.store(secs, Ordering::Release);
    }

    /// Spend settled since the last call, per slot: `(month, nanos)`; the month is
    /// `None` for spend settled before the first answer (it belongs to the first month).
    pub(crate) fn collect(&self) -> [(Option<Month>, u64); 2] {
        [0, 1].map(|i| {
            let slot = &self.slots[i];
            let nanos = slot.settled.swap(0, Ordering::AcqRel);
            let month = slot.month.load(Ordering::Acquire).checked_sub(1);
            (month.map(Month::from_key), nanos)
        })
    }

    /// The largest cost refused for want of lease since the last call.
    pub(crate) fn take_largest_refused(&self) -> u64 {
        self.largest_refused.swap(0, Ordering::AcqRel)
    }

    /// Whether an expired lease lets draws go on.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn month() -> Month {
        Month::new(2026, 11).unwrap()
    }

    fn ready(amount: i64, fail_open: bool) -> Allowance {
        let allowance = Allowance::new(fail_open);
        allowance.start_month(month(), 0, amount);
        allowance.set_deadline(1_000);
        allowance
    }

    #[test]
    fn packing_round_trips_signed_amounts() {
        for amount in [0, 1, -1, AMOUNT_MAX, AMOUNT_MIN, 123_456_789, -987_654_321] {
            for generation in [0, 1, 2, 255] {
                let word = pack(generation, amount);
                assert_eq!((generation_of(word), amount_of(word)), (generation, amount));
            }
        }
        assert_eq!(amount_of(pack(3, i64::MAX)), AMOUNT_MAX);
    }

    #[test]
    fn draws_stop_at_zero_and_settlements_give_back_the_difference() {
        let allowance = ready(100, false);
        allowance.try_draw(60, 10).unwrap();
        assert_eq!(
            allowance.try_draw(60, 10),
            Err(Refusal::Insufficient { left: 40 })
        );
        assert_eq!(allowance.take_largest_refused(), 60);
        allowance.settle(60, 25, 10);
        assert_eq!(allowance.left(), 75);
        allowance.release(0, 10);
        allowance.try_draw(75, 10).unwrap();
        allowance.release(75, 10);
        assert_eq!(allowance.left(), 75);
        assert_eq!(allowance.collect()[1], (Some(month()), 25));
    }

    #[test]
    fn an_expired_lease_refuses_when_closed_and_runs_a_debt_when_open() {
        let closed = ready(100, false);
        assert_eq!(closed.try_draw(1, 1_000), Err(Refusal::Unavailable));
        assert!(!closed.could_draw(1, 1_000));
        let open = ready(100, true);
        open.try_draw(150, 1_000).unwrap();
        assert_eq!(open.left(), -50);
        assert!(open.could_draw(1, 1_000));
        // While the lease is live, the debt refuses.
        assert_eq!(
            open.try_draw(1, 999),
            Err(Refusal::Insufficient { left: -50 })
        );
    }

    #[test]
    fn a_settlement_from_the_previous_month_goes_to_that_month() {
        let allowance = ready(100, false);
        allowance.try_draw(40, 10).unwrap();
        let december = month().next();
        // Decisions of second 20 and later draw from December's lease.
        assert_eq!(allowance.start_month(december, 20, 500), (None, 0));
        assert_eq!(allowance.try_draw(1, 19), Err(Refusal::RollingOver));
        allowance.try_draw(100, 20).unwrap();
        // The November request settles: November's spend; December's lease unchanged.
        allowance.settle(40, 30, 10);
        assert_eq!(allowance.left(), 400);
        allowance.settle(100, 90, 20);
        assert_eq!(allowance.left(), 410);
        let mut collected = allowance.collect();
        collected.sort();
        assert_eq!(
            collected,
            [(Some(month()), 30), (Some(december), 90)],
            "each month keeps its own spend"
        );
        assert_eq!(allowance.month(), Some(december));
    }

    #[test]
    fn spend_before_the_first_lease_is_a_debt_of_the_first_month() {
        let allowance = Allowance::new(false);
        allowance.settle(0, 30, 5);
        allowance.start_month(month(), 0, 100);
        assert_eq!(allowance.left(), 70);
        assert_eq!(allowance.collect()[0], (None, 30));
    }

    #[test]
    fn concurrent_draws_never_take_more_than_there_is() {
        let allowance = Arc::new(ready(10_000, false));
        let drawn: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let allowance = Arc::clone(&allowance);
                    scope.spawn(move || {
                        let mut drawn = 0u64;
                        for n in 0..5_000u64 {
                            let cost = 1 + (n * 7 + i) % 13;
                            if allowance.try_draw(cost, 10).is_ok() {
                                drawn += cost;
                            }
                        }
                        drawn
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert!(drawn <= 10_000);
        assert_eq!(allowance.left(), 10_000 - drawn as i64);
        assert!(
            drawn > 10_000 - 13,
            "draws stop only when less than a cost is left"
        );
    }
}
