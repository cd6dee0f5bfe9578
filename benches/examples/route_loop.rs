//! Runs Route decisions in a loop, for profilers (`valgrind --tool=callgrind`, `perf`):
//! `cargo run --release -p nexus-benches --example route_loop -- 100 200000`
//! (backends, decisions; add `reject` to make every backend unhealthy and profile
//! Reject decisions instead). Prints the time per decision it saw.

use std::time::{Duration, Instant};

use nexus_benches::{fleet_config, REQUESTED};
use nexus_core::{Outcome, Request};
use nexus_router::Router;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let backends: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let decisions: u32 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let reject = args.next().is_some_and(|a| a == "reject");
    let router = Router::from_toml("bench.toml", &fleet_config(backends))?;
    if reject {
        for backend in router.fleet().backends() {
            router
                .fleet()
                .set_status(backend.id(), nexus_core::fleet::BackendStatus::Unhealthy);
        }
    }
    let request = Request::new(REQUESTED)
        .input_tokens(1200)
        .max_output_tokens(300);
    let outcome = Outcome::success(Duration::from_millis(120)).usage(1200, 280);
    let start = Instant::now();
    for _ in 0..decisions {
        let mut decision = router.route(&request);
        if let Some(guard) = decision.take_guard() {
            guard.finish(outcome);
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{decisions} decisions at {backends} backends in {elapsed:?}: {:.0} ns each",
        elapsed.as_nanos() as f64 / f64::from(decisions)
    );
    Ok(())
}
