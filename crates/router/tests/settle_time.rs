//! A settlement happens when the guard is finished, by the pipeline's clock: the latency
//! a caller reports feeds averages (capped) but never moves spend into another month,
//! pins the budget to another year or stretches a circuit's cooldown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cloud, fleet};
use nexus_core::{
    clock::{Clock, FakeClock},
    Outcome, Request,
};
use nexus_router::budget::{BudgetReconciler, Month};
use nexus_router::quality::QualityReconciler;
use nexus_router::{DecisionReport, Router};

/// One backend, where a request costs $1 (1000 input tokens at $1000 per million), a $10
/// limit under `warn`, and the quality stage's defaults (5 failures open the circuit
/// for 30 s).
fn config() -> String {
    fleet([cloud("cloud").priority(5).serves_priced("m", 1000.0, None)])
        + "\n[routing.budget]\nmonthly_limit_usd = 10.0\nhard_limit_action = \"warn\"\n"
}

fn november() -> Month {
    Month::new(2026, 11).unwrap()
}

/// A router whose clock shows 2026-11-10 12:00 UTC.
fn router() -> (Arc<FakeClock>, Router) {
    let clock = Arc::new(FakeClock::at_secs(
        november().start_unix_secs() + 9 * 86_400 + 12 * 3_600,
    ));
    let router = Router::builder()
        .clock(clock.clone())
        .load_str("settle.toml", &config())
        .unwrap();
    (clock, router)
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

/// Routes one $1 request to the cloud backend and finishes it with `outcome`.
fn serve(router: &Router, outcome: Outcome) {
    let mut decision = router.route(&Request::new("m").input_tokens(1000).max_output_tokens(0));
    let guard = decision.take_guard().unwrap();
    assert_eq!(guard.backend().name(), "cloud");
    guard.finish(outcome.usage(1000, 0));
}

#[test]
fn a_latency_of_a_month_does_not_wipe_the_months_spend() {
    let (_, router) = router();
    for _ in 0..15 {
        serve(&router, Outcome::success(Duration::from_secs(2)));
    }
    serve(&router, Outcome::success(Duration::from_secs(3_000_000)));
    let ledger = budget(&router).ledger();
    assert_eq!(ledger.month(), november());
    assert_eq!(ledger.snapshot().settled_usd, 16.0);
    let decision = router.route(&Request::new("m").input_tokens(1000));
    assert_eq!(
        DecisionReport::new("m", &decision).budget_status,
        "hard_limit"
    );
}

#[test]
fn a_latency_of_decades_does_not_pin_the_budget_to_another_year() {
    let (clock, router) = router();
    serve(
        &router,
        Outcome::success(Duration::from_secs(1_790_000_000)),
    );
    let ledger = budget(&router).ledger();
    assert_eq!(ledger.month(), november());
    // The month still rolls over when the clock says so.
    clock.set_secs(november().next().start_unix_secs());
    assert_eq!(ledger.month().to_string(), "2026-12");
    assert_eq!(ledger.month_spend(november()), Some(1.0));
}

#[test]
fn failures_reported_with_absurd_latencies_open_the_circuit_for_the_cooldown() {
    let (_, router) = router();
    for _ in 0..5 {
        serve(
            &router,
            Outcome::failure(Duration::from_secs(1_790_000_000)),
        );
    }
    let decision = router.route(&Request::new("m"));
    let report = DecisionReport::new("m", &decision);
    assert_eq!(report.decision, "reject");
    let rejection = report
        .rejections
        .iter()
        .find(|r| r.reconciler == "quality")
        .unwrap();
    assert_eq!(
        rejection.reason,
        "5 consecutive failures; circuit open for 30 s more"
    );
}

#[test]
fn the_longest_duration_is_recorded_without_overflow_and_averaged_as_an_hour() {
    let (clock, router) = router();
    let now = clock.now_secs();
    serve(
        &router,
        Outcome::success(Duration::from_secs(u64::MAX)).time_to_first_token(Duration::MAX),
    );
    let cloud = router.fleet().backend_by_name("cloud").unwrap();
    assert_eq!(cloud.live().latency_ewma_ms(now), Some(3_600_000.0));
    let quality = router.pipeline().stage_of::<QualityReconciler>().unwrap();
    let stats = quality.tracker().stats_at(cloud.id(), now).unwrap();
    assert_eq!(stats.avg_ttft_ms, Some(3_600_000.0));
    serve(&router, Outcome::failure(Duration::MAX));
    let mut decision = router.route(&Request::new("m").input_tokens(1000));
    drop(decision.take_guard());
    let ledger = budget(&router).ledger();
    assert_eq!(ledger.month(), november());
    assert_eq!(ledger.snapshot().settled_usd, 2.0);
    assert_eq!(ledger.snapshot().reserved_usd, 0.0);
}
