//! `pipeline/route/{10,100,1000}`: one Route decision through the default pipeline,
//! including the guard's finish, with every backend serving the model.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nexus_benches::{fleet_config, REQUESTED, SIZES};
use nexus_core::{Outcome, Request};
use nexus_router::Router;

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline/route");
    for backends in SIZES {
        let router =
            Router::from_toml("bench.toml", &fleet_config(backends)).expect("bench config loads");
        let request = Request::new(REQUESTED)
            .input_tokens(1200)
            .max_output_tokens(300);
        let outcome = Outcome::success(Duration::from_millis(120)).usage(1200, 280);
        group.bench_function(BenchmarkId::from_parameter(backends), |b| {
            b.iter(|| {
                let mut decision = router.route(black_box(&request));
                if let Some(guard) = decision.take_guard() {
                    guard.finish(outcome);
                }
            });
        });
    }
    group.finish();
}

fn reject(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline/reject");
    for backends in SIZES {
        let router =
            Router::from_toml("bench.toml", &fleet_config(backends)).expect("bench config loads");
        for backend in router.fleet().backends() {
            router
                .fleet()
                .set_status(backend.id(), nexus_core::fleet::BackendStatus::Unhealthy);
        }
        let request = Request::new(REQUESTED).input_tokens(1200);
        group.bench_function(BenchmarkId::from_parameter(backends), |b| {
            b.iter(|| black_box(router.route(black_box(&request))));
        });
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, route, reject);
}
criterion_main!(group::benches);
