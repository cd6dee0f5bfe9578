//! Reloading while threads route and finish: 100 swaps between two configs, no panic,
//! no settlement lost, every in-flight count back to 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nexus_core::{Outcome, Request, Zone};
use nexus_router::budget::BudgetReconciler;
use nexus_router::{LiveRouter, Router};

/// Two configs over the same cloud backend: the local one changes id between them, the
/// budget's limit and the scheduler's view change too.
fn config(variant: usize) -> String {
    let (local, limit) = if variant.is_multiple_of(2) {
        ("local-a", 1000.0)
    } else {
        ("local-b", 2000.0)
    };
    format!(
        r#"
[[backends]]
id = "cloud"
url = "http://127.0.0.1:1"
zone = "cloud"
max_concurrency = 4
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 1.0
  output_usd_per_mtok = 2.0

[[backends]]
id = "{local}"
url = "http://127.0.0.1:2"
zone = "local"
max_concurrency = 2
models = [{{ name = "m" }}]

[routing.budget]
monthly_limit_usd = {limit}
"#
    )
}

/// $1/Mtok × 1000 input + $2/Mtok × 500 output.
const CLOUD_COST_NANOS: u64 = 2_000_000;

#[test]
fn threads_route_and_settle_while_the_config_swaps_100_times() {
    let first = Router::from_toml("load.toml", &config(0)).expect("config 0 loads");
    let live = Arc::new(LiveRouter::new(Router::builder(), first, None));
    let first = live.current();
    let stop = Arc::new(AtomicBool::new(false));
    let cloud_settled = Arc::new(AtomicU64::new(0));
    let routed = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (live, stop, cloud_settled, routed) = (
                Arc::clone(&live),
                Arc::clone(&stop),
                Arc::clone(&cloud_settled),
                Arc::clone(&routed),
            );
            std::thread::spawn(move || {
                let request = Request::new("m").input_tokens(1000).max_output_tokens(500);
                let mut held = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut decision = live.route_owned(&request);
                    if let Some(guard) = decision.take_guard() {
                        routed.fetch_add(1, Ordering::Relaxed);
                        // Some guards live across reloads before they settle.
                        held.push(guard);
                    }
                    if held.len() > 3 || n.is_multiple_of(7) {
                        for guard in held.drain(..) {
                            let cloud = guard.backend().zone() == Zone::Cloud;
                            if (n + worker).is_multiple_of(5) {
                                // Dropped unfinished: a failure, the reservation released.
                                drop(guard);
                            } else {
                                guard.finish(
                                    Outcome::success(Duration::from_millis(20)).usage(1000, 500),
                                );
                                if cloud {
                                    cloud_settled.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                for guard in held {
                    let cloud = guard.backend().zone() == Zone::Cloud;
                    guard.finish(Outcome::success(Duration::from_millis(20)).usage(1000, 500));
                    if cloud {
                        cloud_settled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    for i in 1..=100 {
        let summary = live
            .reload_str("load.toml", &config(i))
            .unwrap_or_else(|e| panic!("reload {i}: {e}"));
        assert_eq!(summary.generation, i as u64);
        assert_eq!(summary.backends_kept, ["cloud"]);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("no worker panicked");
    }

    let last = live.current();
    assert!(routed.load(Ordering::Relaxed) > 0, "requests were routed");
    for router in [&first, &last] {
        for backend in router.fleet().backends() {
            assert_eq!(
                backend.live().in_flight(),
                0,
                "{} still has requests in flight",
                backend.name()
            );
        }
    }
    let ledger = |router: &Router| {
        Arc::clone(
            router
                .pipeline()
                .stage_of::<BudgetReconciler>()
                .expect("a budget stage")
                .ledger(),
        )
    };
    assert!(
        Arc::ptr_eq(&ledger(&first), &ledger(&last)),
        "one ledger across every reload"
    );
    let spend = ledger(&last).snapshot();
    let expected = cloud_settled.load(Ordering::Relaxed) * CLOUD_COST_NANOS;
    assert!(
        (spend.settled_usd - expected as f64 / 1e9).abs() < 1e-9,
        "settled {} USD, expected {} USD",
        spend.settled_usd,
        expected as f64 / 1e9
    );
    assert_eq!(
        spend.reserved_usd, 0.0,
        "every reservation settled or released"
    );
}
