//! The lease rules in plain Rust: [`LeaseBook::sync`] does what `sync.lua` does, step
//! for step, on an in-memory copy of the keys.
//!
//! It exists for two reasons: the invariant (settled spend plus every lease held never
//! passes the limit) is stated as a property over it, where thousands of orderings are
//! cheap; and `script.rs` runs the same random sequences through it and through the
//! real script on a real Redis and requires identical answers, which is what makes the
//! property a statement about the script.

#[cfg(test)]
use std::collections::BTreeMap;

use crate::Month;

/// The largest amount the script handles exactly: Lua numbers are doubles.
pub(crate) const MAX_EXACT_NANOS: u64 = 1 << 53;

/// One call of the sync script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyncRequest<'a> {
    /// Which replica calls (unique per process).
    pub(crate) replica: &'a str,
    /// The monthly limit in nano-dollars.
    pub(crate) limit: u64,
    /// The month of the caller's current lease, if it has one.
    pub(crate) lease_month: Option<Month>,
    /// What the caller has left to draw locally (negative: spent past its lease).
    pub(crate) unspent: i64,
    /// What the caller gives back from its lease of `lease_month`.
    pub(crate) returned: u64,
    /// Smallest and largest lease the caller asks for.
    pub(crate) min_lease: u64,
    /// See `min_lease`.
    pub(crate) max_lease: u64,
    /// The largest cost the caller refused since its last sync: the lease should fit it.
    pub(crate) need: u64,
    /// Lease expiry after this call, in ms; 0 releases (no grant, no heartbeat).
    pub(crate) ttl_ms: u64,
    /// Overrides the server's clock (tests only).
    pub(crate) now_ms: Option<u64>,
    /// Cumulative settled spend of the caller, per month.
    pub(crate) settlements: Vec<(Month, u64)>,
}

/// What the script answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncReply {
    /// The month by the server's clock (or the override).
    pub(crate) month: Month,
    /// The server's time in ms.
    pub(crate) now_ms: u64,
    /// Added to the caller's lease by this call.
    pub(crate) granted: u64,
    /// The caller's lease after the call.
    pub(crate) lease: u64,
    /// Settled spend of the month, every replica.
    pub(crate) settled: u64,
    /// Sum of every replica's lease of the month.
    pub(crate) leased: u64,
    /// The lease size the caller should hold (0 on release).
    pub(crate) target: u64,
    /// Replicas holding a live lease, the caller included.
    pub(crate) live: u64,
}

#[cfg(test)]
#[derive(Clone, Debug, Default)]
struct MonthBook {
    settled: u64,
    sent: BTreeMap<String, u64>,
    leases: BTreeMap<String, u64>,
    expiry: BTreeMap<String, u64>,
}

/// An in-memory Redis for the lease keys of one scope. Only tests run it: production
/// runs the script.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseBook {
    months: BTreeMap<Month, MonthBook>,
}

#[cfg(test)]
impl LeaseBook {
    /// The script's steps, in its order. `server_now_ms` stands for `TIME`.
    pub(crate) fn sync(&mut self, req: &SyncRequest<'_>, server_now_ms: u64) -> SyncReply {
        let now = req.now_ms.unwrap_or(server_now_ms);
        let month = Month::from_unix_secs(now / 1000);
        let replica = req.replica.to_owned();

        // 1. Expired leases go back to the pool.
        {
            let book = self.months.entry(month).or_default();
            let gone: Vec<String> = book
                .expiry
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(r, _)| r.clone())
                .collect();
            for r in gone {
                book.expiry.remove(&r);
                book.leases.remove(&r);
            }
        }
        // 2. Cumulative settlements, each taken out of the lease of its month.
        for &(m, cumulative) in &req.settlements {
            let book = self.months.entry(m).or_default();
            let sent = book.sent.get(&replica).copied().unwrap_or(0);
            if cumulative > sent {
                let delta = cumulative - sent;
                book.sent.insert(replica.clone(), cumulative);
                book.settled += delta;
                let lease = book.leases.get(&replica).copied().unwrap_or(0);
                set_lease(&mut book.leases, &replica, lease.saturating_sub(delta));
            }
        }
        // 3. What the caller gives back.
        if let (true, Some(m)) = (req.returned > 0, req.lease_month) {
            let book = self.months.entry(m).or_default();
            let lease = book.leases.get(&replica).copied().unwrap_or(0);
            set_lease(
                &mut book.leases,
                &replica,
                lease.saturating_sub(req.returned),
            );
        }
        // 4. The grant.
        let book = self.months.entry(month).or_default();
        let mut lease = book.leases.get(&replica).copied().unwrap_or(0);
        let settled = book.settled;
        let mut leased: u64 = book.leases.values().sum();
        let mut live = book.expiry.len() as u64;
        let (mut granted, mut target) = (0, 0);
        if req.ttl_ms > 0 {
            if !book.expiry.contains_key(&replica) {
                live += 1;
            }
            target = (req.limit.saturating_sub(settled) / (2 * live))
                .max(req.min_lease)
                .min(req.max_lease)
                .max(req.need);
            let have = if req.lease_month == Some(month) {
                i128::from(req.unspent)
            } else {
                0
            };
            let want = (i128::from(target) - have).max(0);
            let free = req.limit.saturating_sub(settled).saturating_sub(leased);
            granted = u64::try_from(want.min(i128::from(free))).unwrap_or(0);
            if granted > 0 {
                lease += granted;
                leased += granted;
                book.leases.insert(replica.clone(), lease);
            }
            book.expiry.insert(replica, now + req.ttl_ms);
        } else if lease == 0 {
            book.expiry.remove(&replica);
        }
        SyncReply {
            month,
            now_ms: now,
            granted,
            lease,
            settled,
            leased,
            target,
            live,
        }
    }

    /// Settled spend of `month`.
    pub(crate) fn settled(&self, month: Month) -> u64 {
        self.months.get(&month).map_or(0, |b| b.settled)
    }

    /// Sum of the leases `month` holds (expired ones count until a call purges them,
    /// as in Redis).
    pub(crate) fn leased(&self, month: Month) -> u64 {
        self.months
            .get(&month)
            .map_or(0, |b| b.leases.values().sum())
    }

    /// The lease `replica` holds in `month`.
    pub(crate) fn lease_of(&self, month: Month, replica: &str) -> u64 {
        self.months
            .get(&month)
            .and_then(|b| b.leases.get(replica).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
fn set_lease(leases: &mut BTreeMap<String, u64>, replica: &str, amount: u64) {
    if amount > 0 {
        leases.insert(replica.to_owned(), amount);
    } else {
        leases.remove(replica);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const REPLICAS: [&str; 4] = ["r0", "r1", "r2", "r3"];
    /// 2026-11-10T00:00:00Z in ms.
    pub(crate) const START_MS: u64 = 1_794_268_800_000;

    /// One step of a random history: a call of the script by a replica, or time
    /// passing. Amounts are small against the limit so that the limit is reached often.
    #[derive(Clone, Debug)]
    pub(crate) enum Step {
        Sync {
            replica: usize,
            spend: u64,
            returned: u64,
            unspent: i64,
            need: u64,
            release: bool,
        },
        Wait(u64),
    }

    pub(crate) fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0..4usize, 0..400u64, 0..300u64, -100..600i64, prop_oneof![3 => Just(0u64), 1 => 0..900u64], prop::bool::weighted(0.1))
                .prop_map(|(replica, spend, returned, unspent, need, release)| Step::Sync { replica, spend, returned, unspent, need, release }),
            1 => (0..3_000u64).prop_map(Step::Wait),
            // Now and then a jump into the next month.
            1 => prop::bool::weighted(0.05).prop_map(|jump| Step::Wait(if jump { 25 * 86_400_000 } else { 0 })),
        ];
        prop::collection::vec(step, 1..120)
    }

    /// Turns a step into a request the way a careless replica could: it settles up to
    /// `spend` more than before, but never more than the lease the book gives it (a
    /// replica that spends from its lease), unless `overspend` is set.
    pub(crate) struct Driver {
        pub(crate) now_ms: u64,
        pub(crate) cumulative: BTreeMap<(usize, Month), u64>,
        pub(crate) months: [Option<Month>; 4],
    }

    impl Driver {
        pub(crate) fn new() -> Self {
            Self {
                now_ms: START_MS,
                cumulative: BTreeMap::new(),
                months: [None; 4],
            }
        }

        pub(crate) fn request(
            &mut self,
            book: &LeaseBook,
            limit: u64,
            step: &Step,
        ) -> Option<SyncRequest<'static>> {
            let Step::Sync {
                replica,
                spend,
                returned,
                unspent,
                need,
                release,
            } = *step
            else {
                return None;
            };
            let month = Month::from_unix_secs(self.now_ms / 1000);
            let spend = spend.min(book.lease_of(month, REPLICAS[replica]));
            let cumulative = self.cumulative.entry((replica, month)).or_default();
            *cumulative += spend;
            Some(SyncRequest {
                replica: REPLICAS[replica],
                limit,
                lease_month: self.months[replica],
                unspent,
                returned,
                min_lease: 50,
                max_lease: 400,
                need,
                ttl_ms: if release { 0 } else { 2_000 },
                now_ms: Some(self.now_ms),
                settlements: vec![(month, *cumulative)],
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the order of grants, renewals, returns, settlements from a lease and
        /// expiries, settled spend plus every lease held never passes the limit.
        #[test]
        fn settled_plus_leases_never_pass_the_limit(steps in steps(), limit in 1u64..3_000) {
            let mut book = LeaseBook::default();
            let mut driver = Driver::new();
            for step in &steps {
                match driver.request(&book, limit, step) {
                    Some(req) => {
                        let reply = book.sync(&req, 0);
                        driver.months[REPLICAS.iter().position(|r| *r == req.replica).unwrap_or(0)] = Some(reply.month);
                        prop_assert!(reply.granted <= limit);
                        prop_assert_eq!(reply.leased, book.leased(reply.month));
                    }
                    None => if let Step::Wait(ms) = step { driver.now_ms += ms },
                }
                let month = Month::from_unix_secs(driver.now_ms / 1000);
                prop_assert!(
                    book.settled(month) + book.leased(month) <= limit,
                    "settled {} + leased {} > limit {limit}", book.settled(month), book.leased(month)
                );
            }
        }

        /// Spend past a replica's lease is recorded as it is (the truth is never
        /// dropped), and then only the grants stop: nothing else goes negative or wraps.
        #[test]
        fn overspend_is_recorded_and_stops_grants(extra in 1u64..1_000, limit in 100u64..3_000) {
            let mut book = LeaseBook::default();
            let month = Month::from_unix_secs(START_MS / 1000);
            let mut req = SyncRequest {
                replica: "r0", limit, lease_month: None, unspent: 0, returned: 0,
                min_lease: 50, max_lease: 400, need: 0, ttl_ms: 2_000,
                now_ms: Some(START_MS), settlements: vec![],
            };
            let first = book.sync(&req, 0);
            req.lease_month = Some(first.month);
            req.settlements = vec![(month, limit + extra)];
            let reply = book.sync(&req, 0);
            prop_assert_eq!(reply.settled, limit + extra);
            prop_assert_eq!(reply.granted, 0);
            prop_assert_eq!(reply.lease, 0);
        }
    }

    #[test]
    fn a_retried_settlement_is_counted_once() {
        let mut book = LeaseBook::default();
        let month = Month::from_unix_secs(START_MS / 1000);
        let mut req = SyncRequest {
            replica: "r0",
            limit: 1_000,
            lease_month: None,
            unspent: 0,
            returned: 0,
            min_lease: 100,
            max_lease: 100,
            need: 0,
            ttl_ms: 2_000,
            now_ms: Some(START_MS),
            settlements: vec![],
        };
        assert_eq!(book.sync(&req, 0).lease, 100);
        req.lease_month = Some(month);
        req.unspent = 100;
        req.settlements = vec![(month, 60)];
        assert_eq!(book.sync(&req, 0).settled, 60);
        // The answer was lost; the replica sends the same cumulative again, plus 10.
        req.settlements = vec![(month, 70)];
        let reply = book.sync(&req, 0);
        assert_eq!((reply.settled, reply.lease), (70, 30));
    }

    #[test]
    fn the_target_shrinks_as_the_month_is_spent() {
        let mut book = LeaseBook::default();
        let month = Month::from_unix_secs(START_MS / 1000);
        let mut req = SyncRequest {
            replica: "r0",
            limit: 10_000,
            lease_month: None,
            unspent: 0,
            returned: 0,
            min_lease: 10,
            max_lease: 1_000,
            need: 0,
            ttl_ms: 2_000,
            now_ms: Some(START_MS),
            settlements: vec![],
        };
        // Plenty left: the largest lease.
        assert_eq!(book.sync(&req, 0).target, 1_000);
        // 9,000 spent, one replica: half of what is left.
        req.lease_month = Some(month);
        req.settlements = vec![(month, 9_000)];
        let reply = book.sync(&req, 0);
        assert_eq!(reply.target, 500);
        // A second replica halves it again.
        let other = SyncRequest {
            replica: "r1",
            lease_month: None,
            settlements: Vec::new(),
            ..req.clone()
        };
        assert_eq!(book.sync(&other, 0).target, 250);
        // Nearly all spent: the smallest lease, but one that fits a refused request.
        req.settlements = vec![(month, 9_990)];
        req.need = 40;
        assert_eq!(book.sync(&req, 0).target, 40);
    }
}
