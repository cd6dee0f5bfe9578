//! Runs paid Route decisions and their finish in a loop, with the budget's in-memory
//! ledger alone or with a Redis lease on top, for a profiler that counts instructions
//! (the machine is too noisy to compare 10 % in wall time):
//!
//! ```text
//! cargo build --release -p nexus-benches --example shared_budget_loop
//! valgrind --tool=callgrind --toggle-collect='*decide_loop*' \
//!     target/release/examples/shared_budget_loop ledger 20000
//! valgrind --tool=callgrind --toggle-collect='*decide_loop*' \
//!     target/release/examples/shared_budget_loop lease 20000
//! ```
//!
//! Only `decide_loop` is counted: the same config as `pipeline/route_paid` in
//! `benches/shared_budget.rs` (10 priced cloud backends), one `route` and one `finish`
//! per iteration. `lease` starts its own `redis-server`. Prints the time per decision
//! it saw.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nexus_benches::{paid_fleet, MODEL};
use nexus_budget::BudgetReconciler;
use nexus_core::{Outcome, Request};
use nexus_router::Router;

#[path = "../../crates/budget/tests/support/redis_server.rs"]
mod redis_server;

/// The profiled part: `decisions` paid routes, each finished at once.
#[inline(never)]
fn decide_loop(router: &Router, request: &Request<'_>, outcome: Outcome, decisions: u32) {
    for _ in 0..decisions {
        let mut decision = router.route(black_box(request));
        let guard = decision.take_guard().expect("a paid route");
        guard.finish(outcome);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "ledger".to_owned());
    let decisions: u32 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    // Kept alive until the end: the lease talks to it in the background.
    let mut server = None;
    let redis = match mode.as_str() {
        "ledger" => String::new(),
        "lease" => {
            let started =
                redis_server::RedisServer::start().ok_or("redis-server is not installed")?;
            let table = format!(
                "[routing.budget.redis]\nurl = \"{}\"\nmax_lease_usd = 1000.0\n",
                started.url()
            );
            server = Some(started);
            table
        }
        other => return Err(format!("mode is `ledger` or `lease`, not `{other}`").into()),
    };
    let router = Router::from_toml("bench.toml", &paid_fleet(&redis))?;
    if server.is_some() {
        let ready = router
            .pipeline()
            .stage_of::<BudgetReconciler>()
            .and_then(BudgetReconciler::lease)
            .ok_or("no lease")?
            .wait_ready(Duration::from_secs(10));
        if !ready {
            return Err("Redis did not answer within 10 s".into());
        }
    }
    let request = Request::new(MODEL)
        .input_tokens(1200)
        .max_output_tokens(300);
    // Nothing is spent (usage 0), as in the bench: the limit is never reached.
    let outcome = Outcome::success(Duration::from_millis(100)).usage(0, 0);
    let start = Instant::now();
    decide_loop(&router, &request, outcome, decisions);
    let elapsed = start.elapsed();
    println!(
        "{mode}: {decisions} decisions in {elapsed:?}: {:?} each",
        elapsed / decisions.max(1)
    );
    drop(router);
    drop(server);
    Ok(())
}
