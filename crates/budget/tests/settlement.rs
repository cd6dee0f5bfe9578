//! Statuses, exclusions, settlement and rollover of the budget stage, with a fake clock.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nexus_budget::{
    usd_to_nanos, BudgetReconciler, BudgetSettings, HardLimitAction, MemoryStore, Month, SpendStore,
};
use nexus_core::{
    clock::FakeClock,
    policy::{PolicySet, TrafficPolicy},
    stage::BudgetStatus,
    BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, RoutingDecision, Zone,
};
use nexus_scheduler::Scheduler;

fn fleet() -> Arc<Fleet> {
    Arc::new(
        Fleet::new(vec![
            BackendSpec::new("local", "http://127.0.0.1:1")
                .with_zone(Zone::Local)
                .with_model(ModelSpec::new("m")),
            BackendSpec::new("cloud", "https://api.example.com")
                .with_zone(Zone::Cloud)
                .with_priority(3)
                .with_model(ModelSpec::new("m").with_prices(10.0, 30.0)),
        ])
        .unwrap(),
    )
}

fn november() -> Arc<FakeClock> {
    Arc::new(FakeClock::at_secs(
        Month::new(2026, 11).unwrap().start_unix_secs() + 3600,
    ))
}

/// The budget under test in a pipeline over its fleet, with a capped alias.
fn pipeline_with(
    budget: BudgetReconciler,
    fleet: Arc<Fleet>,
    clock: Arc<FakeClock>,
) -> (Arc<BudgetReconciler>, Pipeline) {
    let budget = Arc::new(budget);
    let pipeline = Pipeline::builder(fleet)
        .clock(clock)
        .policies(Arc::new(
            PolicySet::new(vec![TrafficPolicy::new("capped").max_cost_per_request(0.01)]).unwrap(),
        ))
        .alias("capped", "m")
        .stage(Arc::clone(&budget))
        .selector(Scheduler::with_seed(1))
        .build()
        .unwrap();
    (budget, pipeline)
}

fn setup(settings: BudgetSettings, clock: Arc<FakeClock>) -> (Arc<BudgetReconciler>, Pipeline) {
    let fleet = fleet();
    let budget = BudgetReconciler::new(Arc::clone(&fleet), settings, clock.clone()).unwrap();
    pipeline_with(budget, fleet, clock)
}

#[test]
fn statuses_follow_spend_with_reservations() {
    let (budget, pipeline) = setup(BudgetSettings::new(100.0), november());
    let request = Request::new("m").input_tokens(1000);
    let status = |spent: f64| {
        budget.ledger().set_month_to_date(spent);
        pipeline.decide(&request).budget_status()
    };
    assert_eq!(status(10.0), BudgetStatus::Normal);
    assert_eq!(status(75.0), BudgetStatus::SoftLimit);
    assert_eq!(status(100.0), BudgetStatus::HardLimit);

    // A reservation counts: 74.99 settled + a request in flight crosses 75.
    budget.ledger().set_month_to_date(74.99);
    budget
        .ledger()
        .try_reserve(usd_to_nanos(0.02), None)
        .unwrap();
    assert_eq!(
        pipeline.decide(&request).budget_status(),
        BudgetStatus::SoftLimit
    );
}

#[test]
fn a_backend_whose_cost_would_pass_the_limit_is_excluded_before_the_limit() {
    let (budget, pipeline) = setup(BudgetSettings::new(100.0), november());
    // 1000 in + 500 out at $10 / $30 per million = $0.025.
    budget.ledger().set_month_to_date(99.98);
    let decision = pipeline.decide(&Request::new("m").input_tokens(1000));
    assert_eq!(decision.backend().unwrap().name(), "local");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(
        rejections[0].reason,
        "global limit: spend $99.98 (with requests in flight) of the $100.00 monthly limit; this request would cost $0.0250 and pass it"
    );
    assert_eq!(
        rejections[0].suggested_action,
        "raise monthly_limit_usd in [routing.budget], or route 'm' to one of its local backends"
    );
}

#[test]
fn the_per_request_cap_excludes_expensive_backends() {
    let (_, pipeline) = setup(BudgetSettings::new(100.0), november());
    let decision = pipeline.decide(&Request::new("capped").input_tokens(1000));
    assert_eq!(decision.backend().unwrap().name(), "local");
    assert!(decision.rejections()[0].reason.starts_with(
        "estimated cost $0.0250 exceeds the $0.0100 per request of policy 'capped' (#0)"
    ));
}

#[test]
fn warn_routes_past_the_limit_with_a_warning_and_block_all_excludes_everything() {
    let mut settings = BudgetSettings::new(1.0);
    settings.hard_limit_action = HardLimitAction::Warn;
    let (budget, pipeline) = setup(settings, november());
    budget.ledger().set_month_to_date(5.0);
    let decision = pipeline.decide(&Request::new("m"));
    assert_eq!(decision.backend().unwrap().name(), "cloud");
    assert_eq!(
        decision.warnings(),
        ["monthly budget reached: spend $5.00 of $1.00; routing anyway (hard_limit_action = \"warn\")"]
    );

    let mut settings = BudgetSettings::new(1.0);
    settings.hard_limit_action = HardLimitAction::BlockAll;
    let (budget, pipeline) = setup(settings, november());
    budget.ledger().set_month_to_date(1.0);
    assert!(matches!(
        pipeline.decide(&Request::new("m")).kind(),
        RoutingDecision::Reject { .. }
    ));
}

#[test]
fn finishing_settles_the_actual_cost_and_dropping_releases() {
    let (budget, pipeline) = setup(BudgetSettings::new(100.0), november());
    budget.ledger().set_month_to_date(90.0); // soft limit: cloud weight halved, still wins 3 vs 1
    let request = Request::new("m").input_tokens(1000).max_output_tokens(1000);
    let mut decision = pipeline.decide(&request);
    let guard = decision.take_guard().unwrap();
    assert_eq!(guard.backend().name(), "cloud");
    // Reserved: 1000 x $10 + 1000 x $30 per million = $0.04.
    assert_eq!(budget.ledger().snapshot().reserved_usd, 0.04);
    guard.finish(Outcome::success(Duration::from_millis(300)).usage(1000, 200));
    let snapshot = budget.ledger().snapshot();
    assert_eq!(snapshot.reserved_usd, 0.0);
    // Actual: 1000 x $10 + 200 x $30 per million = $0.016.
    assert!((snapshot.total_usd - 90.016).abs() < 1e-9, "{snapshot:?}");

    let mut decision = pipeline.decide(&request);
    drop(decision.take_guard());
    assert!((budget.ledger().snapshot().total_usd - 90.016).abs() < 1e-9);
}

#[test]
fn at_rollover_spend_starts_from_zero_and_the_old_month_stays_readable() {
    let clock = november();
    let (budget, pipeline) = setup(BudgetSettings::new(1.0), clock.clone());
    budget.ledger().set_month_to_date(1.0);
    let request = Request::new("m").input_tokens(1000);
    assert_eq!(pipeline.decide(&request).backend().unwrap().name(), "local");

    clock.advance(Duration::from_secs(30 * 86_400)); // 2026-12-01 01:00 UTC
    let decision = pipeline.decide(&request);
    assert_eq!(decision.budget_status(), BudgetStatus::Normal);
    assert_eq!(decision.backend().unwrap().name(), "cloud");
    drop(decision);
    assert_eq!(budget.ledger().month().to_string(), "2026-12");
    assert_eq!(
        budget.ledger().month_spend(Month::new(2026, 11).unwrap()),
        Some(1.0)
    );
}

#[test]
fn the_store_is_loaded_at_start_and_written_on_settle() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let month = Month::new(2026, 11).unwrap();
    runtime
        .block_on(store.add(month, usd_to_nanos(0.5)))
        .unwrap();

    let fleet = fleet();
    let clock = november();
    let budget = BudgetReconciler::new(Arc::clone(&fleet), BudgetSettings::new(1.0), clock.clone())
        .unwrap()
        .with_store(store.clone(), Vec::new())
        .unwrap();
    assert_eq!(
        budget.ledger().snapshot().settled_usd,
        0.5,
        "loaded at start"
    );
    let (budget, pipeline) = pipeline_with(budget, fleet, clock);
    let mut decision = pipeline.decide(&Request::new("m").input_tokens(1000).max_output_tokens(0));
    decision
        .take_guard()
        .unwrap()
        .finish(Outcome::success(Duration::from_millis(10)).usage(1000, 0));
    let journal = budget.journal().unwrap();
    assert!(journal.wait_durable(journal.last_queued(), Duration::from_secs(10)));
    assert_eq!(
        runtime.block_on(store.month_total(month)).unwrap(),
        usd_to_nanos(0.51)
    );
}

#[test]
fn soft_limit_percent_must_be_a_fraction() {
    let mut settings = BudgetSettings::new(100.0);
    settings.soft_limit_percent = 75.0;
    let err = settings.validate().unwrap_err();
    assert_eq!(
        err,
        "soft_limit_percent is a fraction of the limit in (0, 1], got 75; did you mean 0.75?"
    );
}

#[test]
fn a_warning_is_given_once_even_when_fallbacks_are_tried() {
    // Under warn, a request whose model has no viable backend tries its fallback; the
    // budget stage runs for both models but warns once.
    let fleet = Arc::new(
        Fleet::new(vec![
            BackendSpec::new("down", "http://127.0.0.1:1")
                .with_zone(Zone::Local)
                .with_status(nexus_core::fleet::BackendStatus::Unhealthy)
                .with_model(ModelSpec::new("big")),
            BackendSpec::new("up", "https://api.example.com")
                .with_zone(Zone::Cloud)
                .with_model(ModelSpec::new("small").with_prices(1.0, 1.0)),
        ])
        .unwrap(),
    );
    let clock = november();
    let mut settings = BudgetSettings::new(1.0);
    settings.hard_limit_action = HardLimitAction::Warn;
    let budget =
        Arc::new(BudgetReconciler::new(Arc::clone(&fleet), settings, clock.clone()).unwrap());
    budget.ledger().set_month_to_date(2.0);
    let pipeline = Pipeline::builder(fleet)
        .clock(clock)
        .fallback("big", ["small"])
        .stage(nexus_core::analyzer::RequestAnalyzer)
        .stage(Arc::clone(&budget))
        .selector(Scheduler::new())
        .build()
        .unwrap();
    let decision = pipeline.decide(&Request::new("big"));
    assert_eq!(decision.backend().unwrap().name(), "up");
    assert!(decision.fallback_used());
    assert_eq!(decision.warnings().len(), 1, "{:?}", decision.warnings());
}
