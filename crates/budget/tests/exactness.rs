//! What the monthly limit guarantees (see `BudgetReconciler`'s docs and docs/budget.md):
//! exact when every reservation bounds its request's cost; otherwise passed at most by
//! the excess of the requests in flight the last time spend was within the limit, with
//! no request on a priced backend admitted from then on. The true cost is always
//! recorded.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nexus_budget::{usd_to_nanos, BudgetReconciler, BudgetSettings, Month, SpendLedger};
use nexus_core::{
    clock::FakeClock, pipeline::RouteGuard, BackendSpec, Fleet, ModelSpec, Outcome, Pipeline,
    Request, RoutingDecision, Zone,
};
use nexus_scheduler::Scheduler;
use proptest::prelude::*;

fn clock() -> Arc<FakeClock> {
    Arc::new(FakeClock::at_secs(
        Month::new(2026, 11).unwrap().start_unix_secs() + 3_600,
    ))
}

/// A priced backend in `zone` at $10 / $30 per million input / output tokens, under a
/// $2 limit with `block_cloud`.
fn setup(zone: Zone) -> (Arc<BudgetReconciler>, Pipeline) {
    let fleet = Arc::new(
        Fleet::new(vec![BackendSpec::new("priced", "https://api.example.com")
            .with_zone(zone)
            .with_max_concurrency(1_000)
            .with_model(ModelSpec::new("m").with_prices(10.0, 30.0))])
        .unwrap(),
    );
    let clock = clock();
    let budget = Arc::new(
        BudgetReconciler::new(Arc::clone(&fleet), BudgetSettings::new(2.0), clock.clone()).unwrap(),
    );
    let pipeline = Pipeline::builder(fleet)
        .clock(clock)
        .stage(Arc::clone(&budget))
        .selector(Scheduler::new())
        .build()
        .unwrap();
    (budget, pipeline)
}

/// Takes guards for `request` until the budget refuses one.
fn admit_until_refused<'p>(
    pipeline: &'p Pipeline,
    request: &Request<'_>,
) -> Vec<RouteGuard<&'p Pipeline>> {
    let mut guards = Vec::new();
    loop {
        let mut decision = pipeline.decide(request);
        match decision.take_guard() {
            Some(guard) => guards.push(guard),
            None => return guards,
        }
    }
}

const NANOS_PER_USD: u64 = 1_000_000_000;

#[test]
fn usage_above_the_estimate_is_recorded_and_passes_the_limit_only_by_the_excess_in_flight() {
    let (budget, pipeline) = setup(Zone::Cloud);
    // Estimated: 1000 in x $10 + 1000 out x $30 per million = $0.04; 50 fit in $2.
    let request = Request::new("m").input_tokens(1000).max_output_tokens(1000);
    let guards = admit_until_refused(&pipeline, &request);
    assert_eq!(guards.len(), 50);
    // The backend reports three times the declared input: $0.06 each.
    for guard in guards {
        guard.finish(Outcome::success(Duration::from_millis(10)).usage(3000, 1000));
    }
    let ledger = budget.ledger();
    // Recorded as it is, $1 over: 50 requests in flight when spend was last within the
    // limit, each $0.02 over its reservation.
    assert_eq!(ledger.total_nanos(), 3 * NANOS_PER_USD);
    // From there on nothing priced is admitted.
    let decision = pipeline.decide(&request);
    assert!(matches!(decision.kind(), RoutingDecision::Reject { .. }));
    assert_eq!(ledger.total_nanos(), 3 * NANOS_PER_USD);
}

#[test]
fn with_an_input_bound_the_limit_is_exact_whatever_the_estimate() {
    let (budget, pipeline) = setup(Zone::Cloud);
    // The estimate says 1000 input tokens, the bound 3000: $0.06 is reserved.
    let request = Request::new("m")
        .input_tokens(1000)
        .max_input_tokens(3000)
        .max_output_tokens(1000);
    let guards = admit_until_refused(&pipeline, &request);
    assert_eq!(guards.len(), 33, "33 x $0.06 = $1.98; a 34th would pass $2");
    assert_eq!(
        guards[0].ticket().cost_estimate.cost_usd,
        0.04,
        "the estimate stays the estimate"
    );
    for guard in guards {
        guard.finish(Outcome::success(Duration::from_millis(10)).usage(3000, 1000));
    }
    assert_eq!(budget.ledger().total_nanos(), usd_to_nanos(1.98));
}

#[test]
fn a_priced_request_estimated_at_nothing_is_refused_at_the_limit() {
    // A private backend is not excluded by block_cloud; its estimate of 0 tokens would
    // cost nothing, but what it serves is paid for.
    let (budget, pipeline) = setup(Zone::Private);
    budget.ledger().set_month_to_date(2.0);
    let decision = pipeline.decide(&Request::new("m").input_tokens(0).max_output_tokens(0));
    assert!(matches!(decision.kind(), RoutingDecision::Reject { .. }));
    let rejections = decision.rejections();
    assert_eq!(rejections[0].reconciler, "budget");
    assert!(
        rejections[0].reason.starts_with(
            "global limit: spend $2.00 (with requests in flight) of the $2.00 monthly limit"
        ),
        "{}",
        rejections[0].reason
    );
    // Below the limit it is admitted, and reserves one nano-dollar.
    budget.ledger().set_month_to_date(1.0);
    let mut decision = pipeline.decide(&Request::new("m").input_tokens(0).max_output_tokens(0));
    let guard = decision.take_guard().unwrap();
    assert_eq!(budget.ledger().total_nanos(), NANOS_PER_USD + 1);
    guard.finish(Outcome::success(Duration::from_millis(10)).usage(100, 0));
    // What it served is recorded: 100 input tokens at $10 per million, $0.001.
    assert_eq!(budget.ledger().total_nanos(), NANOS_PER_USD + 1_000_000);
}

/// One step of a ledger's life.
#[derive(Clone, Debug)]
enum Op {
    /// Reserve this many nano-dollars against the limit.
    Reserve(u64),
    /// Settle the oldest request in flight at this percentage of its reservation.
    Settle(u64),
    /// Release the newest request in flight.
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..400).prop_map(Op::Reserve),
        // Up to three times what was reserved.
        2 => (0u64..=300).prop_map(Op::Settle),
        1 => Just(Op::Release),
    ]
}

proptest! {
    /// The statement of `BudgetReconciler`'s docs, over the ledger: whatever requests
    /// use, the recorded spend is exactly what was settled plus what is reserved; it
    /// passes the limit by at most what the requests in flight the last time it was
    /// within the limit used beyond their reservations; while it is at or over the
    /// limit no reservation is admitted; and it never passes the limit while every
    /// settlement stays within its reservation.
    #[test]
    fn the_limit_is_passed_only_by_the_excess_of_requests_in_flight_when_it_was_last_met(
        ops in proptest::collection::vec(op(), 1..300),
        limit in 1u64..5_000,
    ) {
        let ledger = SpendLedger::new(clock());
        // (id, reserved) of the requests in flight.
        let mut open: Vec<(usize, u64)> = Vec::new();
        let mut next_id = 0;
        let mut settled = 0u64;
        let mut every_settlement_within_its_reservation = true;
        // Requests in flight the last time spend was within the limit, and what those
        // of them settled since then used beyond their reservations.
        let mut in_flight_when_last_met: Vec<usize> = Vec::new();
        let mut excess_since = 0u64;
        for op in ops {
            match op {
                Op::Reserve(cost) => {
                    let before = ledger.total_nanos();
                    match ledger.try_reserve(cost, Some(limit)) {
                        Ok(()) => {
                            prop_assert!(before + cost <= limit);
                            open.push((next_id, cost));
                            next_id += 1;
                        }
                        Err(seen) => {
                            prop_assert_eq!(seen, before);
                            prop_assert!(before + cost > limit);
                        }
                    }
                }
                Op::Settle(percent) => {
                    if !open.is_empty() {
                        let (id, reserved) = open.remove(0);
                        let actual = reserved * percent / 100;
                        ledger.settle(reserved, actual);
                        settled += actual;
                        every_settlement_within_its_reservation &= actual <= reserved;
                        if in_flight_when_last_met.contains(&id) {
                            excess_since += actual.saturating_sub(reserved);
                        }
                    }
                }
                Op::Release => {
                    if let Some((_, reserved)) = open.pop() {
                        ledger.release(reserved);
                    }
                }
            }
            let total = ledger.total_nanos();
            prop_assert_eq!(total, settled + open.iter().map(|(_, r)| r).sum::<u64>());
            if total <= limit {
                in_flight_when_last_met = open.iter().map(|(id, _)| *id).collect();
                excess_since = 0;
            }
            prop_assert!(total <= limit + excess_since, "{} > {} + {}", total, limit, excess_since);
            if every_settlement_within_its_reservation {
                prop_assert!(total <= limit);
            }
            if total >= limit {
                prop_assert!(ledger.try_reserve(1, Some(limit)).is_err());
            }
        }
    }
}
