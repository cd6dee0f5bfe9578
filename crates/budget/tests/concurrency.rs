//! Many threads deciding and settling at once against a limit: committed + reserved
//! spend never passes it, and what is committed is exactly what was settled.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use nexus_budget::{usd_to_nanos, BudgetReconciler, BudgetSettings};
use nexus_core::{
    clock::SystemClock, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, RoutingDecision,
    Zone,
};
use nexus_scheduler::Scheduler;

const THREADS: usize = 16;
const DECISIONS_PER_THREAD: usize = 2_000;

/// A small xorshift generator, seeded per thread, for costs and failures.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrent_decisions_never_pass_the_limit_and_settle_exactly() {
    decide_and_settle_concurrently(InputCount::Exact);
}

/// Requests whose input estimate is too low (as a gateway's estimate from text can be)
/// but which give an upper bound: the backend reports up to the bound, the true cost is
/// settled, and the limit still holds, because the bound is what was reserved.
#[test]
fn concurrent_requests_that_use_more_than_estimated_but_within_their_bound_never_pass_the_limit() {
    decide_and_settle_concurrently(InputCount::UnderestimatedWithBound);
}

#[derive(Clone, Copy, PartialEq)]
enum InputCount {
    /// The request states its input exactly.
    Exact,
    /// The request states half its input as the estimate and all of it as the bound;
    /// the backend reports anything from the estimate to the bound.
    UnderestimatedWithBound,
}

fn decide_and_settle_concurrently(count: InputCount) {
    // Three priced cloud backends with different prices; $1 a month.
    let fleet = Arc::new(
        Fleet::new(
            [("a", 1.0), ("b", 2.5), ("c", 4.0)]
                .into_iter()
                .map(|(id, price)| {
                    BackendSpec::new(id, "https://api.example.com")
                        .with_zone(Zone::Cloud)
                        .with_max_concurrency(1_000)
                        .with_model(ModelSpec::new("m").with_prices(price, price * 2.0))
                })
                .collect(),
        )
        .unwrap(),
    );
    let limit = 20.0;
    let budget = Arc::new(
        BudgetReconciler::new(
            Arc::clone(&fleet),
            BudgetSettings::new(limit),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let pipeline = Arc::new(
        Pipeline::builder(Arc::clone(&fleet))
            .stage(Arc::clone(&budget))
            .selector(Scheduler::new())
            .build()
            .unwrap(),
    );

    let settled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));

    // A watcher samples the ledger while the deciders run.
    let watcher = {
        let budget = Arc::clone(&budget);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut samples = 0u64;
            let mut highest = 0u64;
            while !done.load(Ordering::Acquire) {
                highest = highest.max(budget.ledger().total_nanos());
                samples += 1;
            }
            (samples, highest)
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let pipeline = Arc::clone(&pipeline);
            let budget = Arc::clone(&budget);
            let settled = Arc::clone(&settled);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut routed = 0u32;
                start.wait();
                for _ in 0..DECISIONS_PER_THREAD {
                    let input = 200 + (rng.next() % 4_000) as u32;
                    let max_output = 50 + (rng.next() % 1_000) as u32;
                    let (request, input) = match count {
                        InputCount::Exact => (
                            Request::new("m")
                                .input_tokens(input)
                                .max_output_tokens(max_output),
                            input,
                        ),
                        InputCount::UnderestimatedWithBound => (
                            Request::new("m")
                                .input_tokens(input / 2)
                                .max_input_tokens(input)
                                .max_output_tokens(max_output),
                            input / 2 + (rng.next() % u64::from(input / 2 + 1)) as u32,
                        ),
                    };
                    let mut decision = pipeline.decide(&request);
                    let total = budget.ledger().total_nanos();
                    assert!(
                        total <= usd_to_nanos(limit),
                        "total {total} passed the limit"
                    );
                    let Some(guard) = decision.take_guard() else {
                        assert!(matches!(decision.kind(), RoutingDecision::Reject { .. }));
                        continue;
                    };
                    routed += 1;
                    let ticket = *guard.ticket();
                    let offer = *fleet_offer(&pipeline, &ticket);
                    match rng.next() % 10 {
                        // Dropped unfinished: a failure, the reservation is released.
                        0 => drop(guard),
                        // Finished as a failure that still used some input.
                        1 => {
                            let used_in = input / 2;
                            settled.fetch_add(
                                usd_to_nanos(offer.cost_usd(used_in, 0)),
                                Ordering::Relaxed,
                            );
                            guard.finish(
                                Outcome::failure(Duration::from_millis(5)).usage(used_in, 0),
                            );
                        }
                        // Served, with fewer output tokens than the cap.
                        _ => {
                            let used_out = (rng.next() % u64::from(max_output + 1)) as u32;
                            settled.fetch_add(
                                usd_to_nanos(offer.cost_usd(input, used_out)),
                                Ordering::Relaxed,
                            );
                            guard.finish(
                                Outcome::success(Duration::from_millis(20)).usage(input, used_out),
                            );
                        }
                    }
                }
                routed
            })
        })
        .collect();
    start.wait();
    let routed: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    done.store(true, Ordering::Release);
    let (samples, highest) = watcher.join().unwrap();

    let snapshot = budget.ledger().snapshot();
    assert!(
        routed > 100,
        "only {routed} routes: the test did not exercise reservations"
    );
    assert!(samples > 0);
    assert!(
        highest <= usd_to_nanos(limit),
        "the watcher saw {highest} nano-USD"
    );
    assert_eq!(
        snapshot.reserved_usd, 0.0,
        "every guard finished or dropped"
    );
    let committed = usd_to_nanos(snapshot.settled_usd);
    let expected = settled.load(Ordering::Relaxed);
    // Conversions to and from f64 in the snapshot may round by a nano-dollar per 2^53.
    assert!(
        committed.abs_diff(expected) <= 1,
        "committed {committed} != settled {expected}"
    );
    assert_eq!(budget.ledger().total_nanos(), expected);
    // The limit is reached: the last requests were refused, not served past it.
    assert!(snapshot.total_usd > limit * 0.9, "{snapshot:?}");
}

fn fleet_offer<'p>(
    pipeline: &'p Pipeline,
    ticket: &nexus_core::stage::RouteTicket,
) -> &'p nexus_core::fleet::Offering {
    pipeline
        .fleet()
        .model(ticket.model)
        .offer(ticket.backend)
        .unwrap()
}
