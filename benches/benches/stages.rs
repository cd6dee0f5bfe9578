//! `stage/<kind>/{10,100,1000}`: one stage's `reconcile` and `refine` over a fresh
//! intent whose candidates are every server of the model, with the constraints of the
//! benched request (a restricted policy with a tier floor), or the selector's pick
//! (`stage/scheduler`) over the same candidates. The intent's setup, a bitset copy, is
//! part of the measurement and is the same for every stage.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nexus_benches::{fleet_config, MODEL, REQUESTED, SIZES};
use nexus_budget::{BudgetReconciler, BudgetSettings};
use nexus_core::{
    analyzer::RequestAnalyzer,
    clock::SystemClock,
    fleet::BackendId,
    selector::{Selector, Shortlist},
    stage::Scratch,
    Fleet, Reconciler, Request, RoutingIntent,
};
use nexus_privacy::PrivacyReconciler;
use nexus_quality::{QualityReconciler, QualitySettings, QualityTracker};
use nexus_router::Router;
use nexus_scheduler::Scheduler;
use nexus_tier::TierReconciler;

/// How a bench runs one component over a fresh intent.
enum Component {
    Stage(Box<dyn Reconciler>),
    Selector(Box<dyn Selector>),
}

fn bench_stage(c: &mut Criterion, kind: &str, build: impl Fn(&Arc<Fleet>) -> Box<dyn Reconciler>) {
    bench_component(c, kind, |fleet| Component::Stage(build(fleet)));
}

fn bench_component(c: &mut Criterion, kind: &str, build: impl Fn(&Arc<Fleet>) -> Component) {
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
        let component = build(&fleet);
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
                match &component {
                    Component::Stage(stage) => {
                        let _ = black_box(stage.reconcile(&mut intent));
                        let _ = black_box(stage.refine(&mut intent));
                    }
                    Component::Selector(selector) => {
                        let _ = black_box(selector.select(&mut Shortlist::new(&mut intent)));
                    }
                }
            });
        });
    }
    group.finish();
}

/// `quality/record`: recording one outcome (windows and circuit).
fn record(c: &mut Criterion) {
    let tracker = QualityTracker::new(100, QualitySettings::default(), Arc::new(SystemClock));
    let mut i = 0u32;
    c.bench_function("quality/record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            tracker.record(
                BackendId::new(i % 100),
                !i.is_multiple_of(10),
                black_box(Duration::from_millis(250)),
                Some(Duration::from_millis(90)),
            );
        });
    });
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
    bench_stage(c, "quality", |fleet| {
        let quality =
            QualityReconciler::new(fleet, QualitySettings::default(), Arc::new(SystemClock))
                .expect("valid settings");
        // Some history, so that weights are computed from real windows.
        for backend in fleet.backends() {
            for i in 0..20 {
                quality.tracker().record(
                    backend.id(),
                    i % 7 != 0,
                    Duration::from_millis(300),
                    Some(Duration::from_millis(120)),
                );
            }
        }
        Box::new(quality)
    });
    bench_component(c, "scheduler", |_| {
        Component::Selector(Box::new(Scheduler::new()))
    });
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, stages, record);
}
criterion_main!(group::benches);
