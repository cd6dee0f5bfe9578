//! `stage/<kind>/{10,100,1000}`: one stage's `reconcile` and `refine` over a fresh
//! intent whose candidates are every server of the model, with the constraints of the
//! benched request (a restricted policy with a tier floor). The intent's setup, a
//! bitset copy, is part of the measurement and is the same for every stage.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nexus_benches::{fleet_config, MODEL, REQUESTED, SIZES};
use nexus_budget::{BudgetReconciler, BudgetSettings};
use nexus_core::{
    Fleet, Reconciler, Request, RequestAnalyzer, RoutingIntent, Scratch, SystemClock,
};
use nexus_privacy::PrivacyReconciler;
use nexus_router::Router;
use nexus_scheduler::SchedulerReconciler;
use nexus_tier::TierReconciler;

fn bench_stage(c: &mut Criterion, kind: &str, build: impl Fn(&Arc<Fleet>) -> Box<dyn Reconciler>) {
    let mut group = c.benchmark_group(format!("stage/{kind}"));
    for backends in SIZES {
        let router =
            Router::from_toml("bench.toml", &fleet_config(backends)).expect("bench config loads");
        let fleet = Arc::clone(router.fleet());
        let policies = Arc::clone(router.pipeline().policies());
        let model = fleet.model_id(MODEL).expect("the bench model");
        let requirements = Request::new(REQUESTED).input_tokens(1200).requirements();
        let constraints = router
            .pipeline()
            .routes()
            .plan(REQUESTED)
            .expect("the bench alias")
            .attempts()[0]
            .constraints;
        let stage = build(&fleet);
        let mut scratch = Scratch::default();
        group.bench_function(BenchmarkId::from_parameter(backends), |b| {
            b.iter(|| {
                let mut intent = RoutingIntent::new(
                    &fleet,
                    &policies,
                    &mut scratch,
                    model,
                    requirements,
                    constraints,
                );
                let _ = black_box(stage.reconcile(&mut intent));
                let _ = black_box(stage.refine(&mut intent));
            });
        });
    }
    group.finish();
}

fn stages(c: &mut Criterion) {
    bench_stage(c, "analyzer", |_| Box::new(RequestAnalyzer));
    bench_stage(c, "privacy", |fleet| {
        Box::new(PrivacyReconciler::new(fleet))
    });
    bench_stage(c, "budget", |fleet| {
        let settings = BudgetSettings::new(100_000.0);
        Box::new(
            BudgetReconciler::new(Arc::clone(fleet), settings, Arc::new(SystemClock))
                .expect("valid settings"),
        )
    });
    bench_stage(c, "tier", |_| Box::new(TierReconciler));
    bench_stage(c, "scheduler", |_| Box::new(SchedulerReconciler::new()));
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, stages);
}
criterion_main!(group::benches);
