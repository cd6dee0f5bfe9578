//! `throughput/threads/{1,2}`: Route decisions plus guard finishes on one thread and on
//! two threads at once sharing one router, through the default pipeline at 100
//! backends. The time is per decision of one thread's share, so perfect scaling shows
//! the same time for both; the goal is a 2-thread rate of at least 1.8x the 1-thread
//! rate. `throughput/separate/2` runs two threads on two routers that share nothing: on
//! a machine whose two cores do not scale perfectly, it is the ceiling to compare with.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use nexus_benches::{fleet_config, REQUESTED};
use nexus_core::{Outcome, Request};
use nexus_router::Router;

fn decide_and_finish(router: &Router, decisions: u64) {
    let request = Request::new(REQUESTED)
        .input_tokens(1200)
        .max_output_tokens(300);
    let outcome = Outcome::success(Duration::from_millis(120)).usage(1200, 280);
    for _ in 0..decisions {
        let mut decision = router.route(black_box(&request));
        if let Some(guard) = decision.take_guard() {
            guard.finish(outcome);
        }
    }
}

fn throughput(c: &mut Criterion) {
    let load = || {
        Arc::new(Router::from_toml("bench.toml", &fleet_config(100)).expect("bench config loads"))
    };
    let shared = load();
    let separate = [load(), load()];
    let mut group = c.benchmark_group("throughput");
    for (name, routers) in [
        ("threads/1", vec![Arc::clone(&shared)]),
        ("threads/2", vec![Arc::clone(&shared), Arc::clone(&shared)]),
        ("separate/2", separate.to_vec()),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let start = Arc::new(Barrier::new(routers.len() + 1));
                let workers: Vec<_> = routers
                    .iter()
                    .map(|router| {
                        let router = Arc::clone(router);
                        let start = Arc::clone(&start);
                        std::thread::spawn(move || {
                            // Warm this thread's scratch before timing.
                            decide_and_finish(&router, 10);
                            start.wait();
                            decide_and_finish(&router, iterations);
                        })
                    })
                    .collect();
                start.wait();
                let began = Instant::now();
                for worker in workers {
                    worker.join().expect("worker");
                }
                began.elapsed()
            });
        });
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, throughput);
}
criterion_main!(group::benches);
