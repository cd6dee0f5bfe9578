//! Replicas simulated end to end over the model of the script: allowances, draws,
//! settlements, syncs, partitions, crashes and month changes in random order.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::lease::model::tests::START_MS;
use crate::lease::model::LeaseBook;

const TTL_MS: u64 = 2_000;
const LIMIT: u64 = 20_000;

#[derive(Clone, Debug)]
enum Op {
    Draw {
        replica: usize,
        cost: u64,
    },
    Finish {
        replica: usize,
        pick: usize,
        percent: u64,
    },
    Sync {
        replica: usize,
    },
    Wait {
        ms: u64,
    },
    Partition {
        replica: usize,
        ms: u64,
    },
    Crash {
        replica: usize,
    },
    NextMonth,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (0..3usize, 1..300u64).prop_map(|(replica, cost)| Op::Draw { replica, cost }),
        6 => (0..3usize, any::<usize>(), 0..=100u64)
            .prop_map(|(replica, pick, percent)| Op::Finish { replica, pick, percent }),
        3 => (0..3usize).prop_map(|replica| Op::Sync { replica }),
        2 => (0..1_500u64).prop_map(|ms| Op::Wait { ms }),
        1 => (0..3usize, 0..=TTL_MS / 2).prop_map(|(replica, ms)| Op::Partition { replica, ms }),
        1 => prop::bool::weighted(0.1).prop_map(|crash| if crash { Op::Crash { replica: 2 } } else { Op::Wait { ms: 10 } }),
        1 => prop::bool::weighted(0.1).prop_map(|next| if next { Op::NextMonth } else { Op::Wait { ms: 10 } }),
    ];
    prop::collection::vec(op, 1..250)
}

struct Replica {
    allowance: Allowance,
    state: LeaseState,
    /// (reserved, decided at second, month of the lease it came from)
    in_flight: Vec<(u64, u64, Month)>,
    alive: bool,
    blocked_until_ms: u64,
    last_sync_ms: u64,
}

struct World {
    book: LeaseBook,
    now_ms: u64,
    replicas: Vec<Replica>,
    /// Actual spend per month, and the part of it that died with a crashed replica.
    spent: BTreeMap<Month, u64>,
    lost: BTreeMap<Month, u64>,
}

impl World {
    fn new() -> Self {
        let replicas = (0..3)
            .map(|i| Replica {
                allowance: Allowance::new(false),
                state: LeaseState::new(LeaseParams {
                    replica: format!("r{i}"),
                    limit: LIMIT,
                    min_lease: 100,
                    max_lease: 2_000,
                    ttl_ms: TTL_MS,
                    renew_below: 0.5,
                }),
                in_flight: Vec::new(),
                alive: true,
                blocked_until_ms: 0,
                last_sync_ms: START_MS,
            })
            .collect();
        Self {
            book: LeaseBook::default(),
            now_ms: START_MS,
            replicas,
            spent: BTreeMap::new(),
            lost: BTreeMap::new(),
        }
    }

    fn month(&self) -> Month {
        Month::from_unix_secs(self.now_ms / 1000)
    }

    fn sync(&mut self, i: usize) {
        let now = self.now_ms;
        let r = &mut self.replicas[i];
        if !r.alive || now < r.blocked_until_ms {
            return;
        }
        let request = r.state.prepare(
            &r.allowance,
            r.allowance.take_largest_refused(),
            false,
            Some(now),
        );
        let reply = self.book.sync(&request, 0);
        r.state.apply(&r.allowance, reply, now, now, false);
        r.last_sync_ms = now;
    }

    fn finish(&mut self, i: usize, pick: usize, percent: u64) {
        let r = &mut self.replicas[i];
        if !r.alive || r.in_flight.is_empty() {
            return;
        }
        let (reserved, decided, month) = r.in_flight.swap_remove(pick % r.in_flight.len());
        let actual = reserved * percent / 100;
        r.allowance.settle(reserved, actual, decided);
        *self.spent.entry(month).or_default() += actual;
    }

    /// Time passes in small ticks; healthy replicas heartbeat every third of the lease
    /// lifetime, as the background task does.
    fn wait(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms = (self.now_ms + 100).min(end);
            for i in 0..self.replicas.len() {
                if self.now_ms >= self.replicas[i].last_sync_ms + TTL_MS / 3 {
                    self.sync(i);
                }
            }
        }
    }

    fn quiesce(&mut self) {
        for i in 0..self.replicas.len() {
            self.replicas[i].blocked_until_ms = 0;
            while !self.replicas[i].in_flight.is_empty() && self.replicas[i].alive {
                self.finish(i, 0, 100);
            }
            self.sync(i);
        }
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let month = self.month();
        let (settled, leased) = (self.book.settled(month), self.book.leased(month));
        prop_assert!(
            settled + leased <= LIMIT,
            "settled {settled} + leased {leased}"
        );
        for r in self.replicas.iter_mut().filter(|r| r.alive) {
            let Some(current) = r.state.current.filter(|c| c.month == month) else {
                continue;
            };
            r.state.has_unsent(&r.allowance);
            let in_flight: u64 = r
                .in_flight
                .iter()
                .filter(|f| f.2 == current.month)
                .map(|f| f.0)
                .sum();
            let held = i128::from(r.allowance.left())
                + i128::from(in_flight)
                + i128::from(r.state.unconfirmed());
            let lease = self.book.lease_of(month, &r.state.params.replica);
            // What this replica can still add to the month's spend is exactly what
            // Redis holds for it: no live replica can overrun.
            prop_assert_eq!(
                held,
                i128::from(lease),
                "replica {}",
                r.state.params.replica
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Healthy replicas (heartbeats on time, partitions shorter than half a lease
    /// lifetime) never spend past the limit, every settled nano-dollar reaches Redis,
    /// and only a crashed replica's unsent spend can be missing from it.
    #[test]
    fn replicas_never_overrun_and_lose_nothing(ops in ops()) {
        let mut world = World::new();
        for op in ops {
            match op {
                Op::Draw { replica, cost } => {
                    let now_secs = world.now_ms / 1000;
                    let r = &mut world.replicas[replica];
                    if r.alive && r.allowance.try_draw(cost, now_secs).is_ok() {
                        let month = r.allowance.month().unwrap_or(Month::from_key(0));
                        r.in_flight.push((cost, now_secs, month));
                    }
                }
                Op::Finish { replica, pick, percent } => world.finish(replica, pick, percent),
                Op::Sync { replica } => world.sync(replica),
                Op::Wait { ms } => world.wait(ms),
                Op::Partition { replica, ms } => {
                    // One cut at a time: back-to-back cuts are one longer cut.
                    let r = &mut world.replicas[replica];
                    if r.blocked_until_ms <= world.now_ms {
                        r.blocked_until_ms = world.now_ms + ms;
                    }
                }
                Op::Crash { replica } => {
                    let r = &mut world.replicas[replica];
                    if r.alive {
                        r.alive = false;
                        r.state.has_unsent(&r.allowance);
                        // Requests in flight are billed in full; nothing unsent is sent.
                        for (reserved, _, month) in r.in_flight.drain(..) {
                            *world.spent.entry(month).or_default() += reserved;
                            *world.lost.entry(month).or_default() += reserved;
                        }
                        for (month, c) in &r.state.cumulative {
                            *world.lost.entry(*month).or_default() += c.total - c.confirmed;
                        }
                        let month = r.state.current.map(|c| c.month);
                        if let Some(month) = month {
                            *world.lost.entry(month).or_default() += r.state.unattributed;
                        }
                    }
                }
                Op::NextMonth => {
                    world.quiesce();
                    world.now_ms = Month::from_unix_secs(world.now_ms / 1000).next().start_unix_secs() * 1000 + 5_000;
                }
            }
            world.check()?;
        }
        world.quiesce();
        world.check()?;
        for (month, spent) in &world.spent {
            let lost = world.lost.get(month).copied().unwrap_or(0);
            prop_assert_eq!(world.book.settled(*month) + lost, *spent, "month {}", month);
            prop_assert!(world.book.settled(*month) <= LIMIT);
        }
    }
}

#[test]
fn a_lease_lost_while_cut_off_is_taken_back_from_the_allowance() {
    let mut world = World::new();
    world.sync(0);
    let lease = world.replicas[0].allowance.left();
    assert!(lease > 0);
    // Cut off for longer than the lease lifetime: another replica's call purges it.
    world.replicas[0].blocked_until_ms = world.now_ms + 3 * TTL_MS;
    world.now_ms += TTL_MS + 1;
    world.sync(1);
    assert_eq!(world.book.lease_of(world.month(), "r0"), 0);
    // Draws stopped at the deadline, long before.
    assert_eq!(
        world.replicas[0].allowance.try_draw(1, world.now_ms / 1000),
        Err(crate::lease::Refusal::Unavailable)
    );
    world.now_ms += 2 * TTL_MS;
    let r = &mut world.replicas[0];
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(world.now_ms),
    );
    let reply = world.book.sync(&request, 0);
    let applied = r
        .state
        .apply(&r.allowance, reply, world.now_ms, world.now_ms, false);
    assert_eq!(applied.lost as i64, lease);
    assert_eq!(
        r.allowance.left() as u64,
        reply.lease,
        "the allowance is what Redis holds"
    );
}

#[test]
fn a_lost_answer_is_made_good_by_the_next_one() {
    let mut world = World::new();
    world.sync(0);
    let now = world.now_ms;
    let r = &mut world.replicas[0];
    r.allowance.try_draw(300, now / 1000).unwrap();
    r.allowance.settle(300, 250, now / 1000);
    // The call reaches Redis, the answer does not.
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(now),
    );
    let _ = world.book.sync(&request, 0);
    // The retry sends the same cumulative: counted once; the grant of the lost answer
    // shows up in the lease and reaches the allowance.
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(now),
    );
    let reply = world.book.sync(&request, 0);
    r.state.apply(&r.allowance, reply, now, now, false);
    let month = Month::from_unix_secs(now / 1000);
    assert_eq!(world.book.settled(month), 250);
    assert_eq!(r.allowance.left() as u64, reply.lease);
}

#[test]
fn a_month_change_in_the_same_second_as_a_draw_keeps_the_draw_in_its_month() {
    let mut world = World::new();
    let november = Month::from_unix_secs(START_MS / 1000);
    let boundary_ms = november.next().start_unix_secs() * 1000;
    // The first answer makes our clock look in step with Redis's...
    world.now_ms = boundary_ms - 800;
    let r = &mut world.replicas[0];
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(world.now_ms),
    );
    let reply = world.book.sync(&request, 0);
    r.state
        .apply(&r.allowance, reply, world.now_ms, world.now_ms, false);
    // ...but Redis's clock steps 400 ms ahead: at our 23:59:59.700 it says December.
    let local_ms = boundary_ms - 300;
    let second = local_ms / 1000;
    r.allowance.try_draw(70, second).unwrap();
    world.now_ms = boundary_ms + 100;
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(world.now_ms),
    );
    let reply = world.book.sync(&request, 0);
    assert_eq!(reply.month, november.next());
    let applied = r
        .state
        .apply(&r.allowance, reply, local_ms, local_ms, false);
    assert!(applied.new_month);
    let december_lease = r.allowance.left();
    assert_eq!(
        r.allowance.try_draw(1, second),
        Err(crate::lease::Refusal::RollingOver),
        "a decision of that second may not draw from December's lease"
    );
    // The November request settles into November, and leaves December's lease alone.
    r.allowance.settle(70, 60, second);
    assert_eq!(r.allowance.left(), december_lease);
    let request = r.state.prepare(
        &r.allowance,
        r.allowance.take_largest_refused(),
        false,
        Some(world.now_ms),
    );
    let reply = world.book.sync(&request, 0);
    r.state
        .apply(&r.allowance, reply, local_ms, local_ms, false);
    assert_eq!(world.book.settled(november), 60);
    assert_eq!(world.book.settled(november.next()), 0);
    assert_eq!(r.allowance.left() as u64, reply.lease);
}

#[test]
fn a_decision_after_the_month_ended_waits_for_the_new_lease_instead_of_blaming_redis() {
    let mut world = World::new();
    let november = Month::from_unix_secs(START_MS / 1000);
    let boundary_ms = november.next().start_unix_secs() * 1000;
    world.now_ms = boundary_ms - 800;
    world.sync(0);
    let r = &world.replicas[0];
    // Midnight has passed; the call that fetches December's lease has not answered yet
    // (it was due at midnight, and Redis answers fine). That is no outage: the refusal
    // must not say that Redis has not answered for half a lease lifetime.
    let second = boundary_ms / 1000;
    assert_eq!(
        r.allowance.try_draw(1, second),
        Err(crate::lease::Refusal::RollingOver)
    );
    assert!(!r.allowance.could_draw(1, second));
    // Before midnight, the lease serves as usual.
    r.allowance.try_draw(1, second - 1).unwrap();
}
