//! `budget/commit_settle/{ledger,lease}`: the budget stage's work for one paid route:
//! `on_route` (the reservation) and `on_settle` (the settlement), with the in-memory
//! ledger alone, and with a Redis lease on top (`[routing.budget.redis]`: one more
//! compare-and-swap each way, no I/O). `pipeline/route_paid/{ledger,lease}`: one whole
//! Route decision and its finish through the default pipeline over 10 priced cloud
//! backends, without and with the lease. The lease benches start their own
//! `redis-server` and are skipped, with a message, when none is installed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use nexus_benches::{fleet_config, paid_fleet, MODEL};
use nexus_budget::lease::RedisBudgetSettings;
use nexus_budget::{BudgetReconciler, BudgetSettings};
use nexus_core::{
    clock::{Clock, SystemClock},
    pipeline::{CostEstimate, TokenTier},
    stage::{RouteTicket, Settlement},
    Outcome, Reconciler, Request, Zone,
};
use nexus_router::Router;

#[path = "../../crates/budget/tests/support/redis_server.rs"]
mod redis_server;

fn commit_settle(c: &mut Criterion) {
    let router = Router::from_toml("bench.toml", &fleet_config(10)).expect("bench config loads");
    let fleet = Arc::clone(router.fleet());
    let model = fleet.model_id(MODEL).expect("the bench model");
    let backend = fleet
        .backends()
        .iter()
        .find(|b| b.zone() == Zone::Cloud)
        .expect("a cloud backend")
        .id();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ticket = |now: u64| RouteTicket {
        backend,
        model,
        cost_estimate: CostEstimate {
            input_tokens: 1200,
            max_input_tokens: 1200,
            estimated_output_tokens: 300,
            cost_usd: 0.0,
            token_tier: TokenTier::Medium,
        },
        fallback_used: false,
        decided_at_secs: now,
        tenant: None,
        id: 1,
    };
    // Nothing is spent (usage 0): the limit is never reached however long the bench runs,
    // and the settlement path (reservation replaced, lease credited) is the same.
    let outcome = Outcome::success(Duration::from_millis(100)).usage(0, 0);
    let mut group = c.benchmark_group("budget/commit_settle");
    let run = |stage: &BudgetReconciler, b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            let ticket = ticket(clock.now_secs());
            stage.on_route(black_box(&ticket)).expect("within budget");
            stage.on_settle(
                &ticket,
                Settlement::Finished {
                    outcome: &outcome,
                    at_secs: ticket.decided_at_secs,
                },
            );
        });
    };

    let ledger = BudgetReconciler::new(
        Arc::clone(&fleet),
        BudgetSettings::new(100_000.0),
        Arc::clone(&clock),
    )
    .expect("valid settings");
    group.bench_function("ledger", |b| run(&ledger, b));

    if let Some(server) = redis_server::RedisServer::start() {
        let mut settings = RedisBudgetSettings::new(server.url());
        settings.max_lease_usd = 1_000.0;
        let lease = BudgetReconciler::new(
            Arc::clone(&fleet),
            BudgetSettings::new(100_000.0),
            Arc::clone(&clock),
        )
        .expect("valid settings")
        .with_lease(&settings, Arc::clone(&clock))
        .expect("the lease starts");
        assert!(
            lease
                .lease()
                .expect("a lease")
                .wait_ready(Duration::from_secs(10)),
            "Redis answers"
        );
        group.bench_function("lease", |b| run(&lease, b));
        drop(lease);
    }
    group.finish();
}

fn route_paid(c: &mut Criterion) {
    let request = Request::new(MODEL)
        .input_tokens(1200)
        .max_output_tokens(300);
    // Nothing is spent, as above.
    let outcome = Outcome::success(Duration::from_millis(100)).usage(0, 0);
    let mut group = c.benchmark_group("pipeline/route_paid");
    let run = |router: &Router, b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            let mut decision = router.route(black_box(&request));
            let guard = decision.take_guard().expect("a paid route");
            guard.finish(outcome);
        });
    };
    let ledger = Router::from_toml("bench.toml", &paid_fleet("")).expect("bench config loads");
    group.bench_function("ledger", |b| run(&ledger, b));
    if let Some(server) = redis_server::RedisServer::start() {
        let redis = format!(
            "[routing.budget.redis]\nurl = \"{}\"\nmax_lease_usd = 1000.0\n",
            server.url()
        );
        let lease =
            Router::from_toml("bench.toml", &paid_fleet(&redis)).expect("bench config loads");
        let ready = lease
            .pipeline()
            .stage_of::<BudgetReconciler>()
            .and_then(BudgetReconciler::lease)
            .expect("a lease")
            .wait_ready(Duration::from_secs(10));
        assert!(ready, "Redis answers");
        group.bench_function("lease", |b| run(&lease, b));
        drop(lease);
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, commit_settle, route_paid);
}
criterion_main!(group::benches);
