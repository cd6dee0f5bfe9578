//! The budget stage on a Redis lease: nothing paid is routed before Redis first answers
//! (and the refusal says why), a paid route draws from the lease and settles its real
//! cost into Redis, and dropping the stage gives the lease back.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_budget::lease::RedisBudgetSettings;
use nexus_budget::{BudgetReconciler, BudgetSettings, Month};
use nexus_core::{
    clock::{Clock, SystemClock},
    BackendSpec, Fleet, ModelSpec, Outcome, Pipeline, Request, Zone,
};
use nexus_scheduler::Scheduler;
use redis_server::RedisServer;

fn fleet() -> Arc<Fleet> {
    Arc::new(
        Fleet::new(vec![BackendSpec::new("cloud", "https://api.example.com")
            .with_zone(Zone::Cloud)
            .with_model(ModelSpec::new("m").with_prices(10.0, 30.0))])
        .unwrap(),
    )
}

fn pipeline(url: String, prefix: &str) -> (Arc<BudgetReconciler>, Pipeline) {
    pipeline_with(RedisBudgetSettings::new(url), prefix)
}

fn pipeline_with(
    mut settings: RedisBudgetSettings,
    prefix: &str,
) -> (Arc<BudgetReconciler>, Pipeline) {
    let fleet = fleet();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    settings.key_prefix = prefix.to_owned();
    settings.connect_timeout_ms = 200;
    settings.timeout_ms = 200;
    settings.settle_interval_ms = 20;
    let budget = BudgetReconciler::new(
        Arc::clone(&fleet),
        BudgetSettings::new(100.0),
        Arc::clone(&clock),
    )
    .unwrap()
    .with_lease(&settings, clock)
    .unwrap();
    let budget = Arc::new(budget);
    let pipeline = Pipeline::builder(fleet)
        .stage(Arc::clone(&budget))
        .selector(Scheduler::with_seed(1))
        .build()
        .unwrap();
    (budget, pipeline)
}

#[test]
fn nothing_paid_is_routed_before_redis_first_answers() {
    // Nothing listens on port 1: the lease never arrives.
    let (budget, pipeline) = pipeline("redis://127.0.0.1:1".to_owned(), "unreachable");
    let decision = pipeline.decide(&Request::new("m").input_tokens(1000));
    assert!(decision.backend().is_none(), "{decision:?}");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1);
    assert!(
        rejections[0]
            .reason
            .starts_with("the shared budget in Redis has not answered since this replica started"),
        "{}",
        rejections[0].reason
    );
    assert!(
        rejections[0]
            .suggested_action
            .contains("[routing.budget.redis] url"),
        "{}",
        rejections[0].suggested_action
    );
    // The ledger's reservation was released with the refusal.
    assert_eq!(budget.ledger().snapshot().total_usd, 0.0);
}

#[test]
fn a_paid_route_draws_from_the_lease_and_settles_into_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (budget, pipeline) = pipeline(server.url(), "stage");
    let lease = budget.lease().unwrap();
    assert!(lease.wait_ready(Duration::from_secs(10)));
    let before = lease.allowance().left();
    let mut decision =
        pipeline.decide(&Request::new("m").input_tokens(1000).max_output_tokens(500));
    assert_eq!(decision.backend().unwrap().name(), "cloud");
    // 1000 in + 500 out at $10 / $30 per million: $0.025 drawn.
    assert_eq!(before - lease.allowance().left(), 25_000_000);
    // It cost less: 800 in + 100 out = $0.011.
    decision
        .take_guard()
        .unwrap()
        .finish(Outcome::success(Duration::from_millis(50)).usage(800, 100));
    let month = Month::from_unix_secs(SystemClock.now_secs());
    let key = format!("stage:{{global}}:{month}:settled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.integer(&["GET", &key]) != 11_000_000 {
        assert!(
            Instant::now() < deadline,
            "the settlement never reached Redis"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Redis's settled spend is folded into the ledger (by the answer that confirmed it).
    while lease.status().settled_nanos != 11_000_000 {
        assert!(Instant::now() < deadline, "{:?}", lease.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!((budget.ledger().snapshot().settled_usd - 0.011).abs() < 1e-9);
    // Dropping the stage gives the lease back.
    drop(decision);
    drop(pipeline);
    drop(budget);
    assert_eq!(
        server.integer(&["HLEN", &format!("stage:{{global}}:{month}:leases")]),
        0
    );
}

#[test]
fn a_lease_too_small_for_a_request_says_so_and_grows_to_fit_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut settings = RedisBudgetSettings::new(server.url());
    settings.min_lease_usd = 0.001;
    settings.max_lease_usd = 0.01;
    let (budget, pipeline) = pipeline_with(settings, "short");
    let lease = budget.lease().unwrap();
    assert!(lease.wait_ready(Duration::from_secs(10)));
    // $0.025 against a lease of at most $0.01, with $100 of the limit left: the lease
    // is short, and the refusal says that, not that the limit would be passed.
    let request = Request::new("m").input_tokens(1000).max_output_tokens(500);
    let decision = pipeline.decide(&request);
    assert!(decision.backend().is_none(), "{decision:?}");
    let rejection = &decision.rejections()[0];
    assert!(
        rejection.reason.starts_with(
            "this replica's lease of the shared budget has $0.0100 left, less than this request's $0.0250"
        ),
        "{}",
        rejection.reason
    );
    assert!(
        rejection.suggested_action.starts_with("retry in a second"),
        "{}",
        rejection.suggested_action
    );
    assert_eq!(budget.ledger().snapshot().total_usd, 0.0);
    drop(decision);
    // The refusal asks Redis for a lease that fits it: the same request is served soon.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let decision = pipeline.decide(&request);
        if decision.backend().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", lease.status());
        std::thread::sleep(Duration::from_millis(20));
    }
}
