//! Redis calls per 1,000 requests at a steady rate: one replica with the default lease
//! settings decides and settles paid requests at 200 a second for a few seconds, and
//! Redis's own count of script calls (`INFO commandstats`) says how many round trips
//! the shared budget cost. The lease is sized to what the replica spends, so the calls
//! are a few a second whatever the rate, far fewer than requests. Run with
//! `--nocapture` to see the numbers (docs/performance.md quotes them).
#![allow(clippy::unwrap_used)]

mod shared;

use std::time::{Duration, Instant};

use nexus_core::{Outcome, Request};
use nexus_router::budget::BudgetReconciler;
use nexus_router::Router;
use shared::RedisServer;

const RATE_PER_SEC: u64 = 200;
const SECONDS: u64 = 4;

fn config(redis: &str, prefix: &str) -> String {
    format!(
        r#"
[[backends]]
id = "cloud"
url = "http://127.0.0.1:1"
zone = "cloud"
models = [{{ name = "m", input_usd_per_mtok = 10.0, output_usd_per_mtok = 30.0 }}]

[routing.budget]
monthly_limit_usd = 1000.0

[routing.budget.redis]
url = "{redis}"
key_prefix = "{prefix}"
"#
    )
}

#[test]
fn script_calls_per_thousand_requests_at_a_steady_rate() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("steady{}", std::process::id());
    let router = Router::from_toml("steady.toml", &config(&redis.url(), &prefix)).unwrap();
    let lease = router
        .pipeline()
        .stage_of::<BudgetReconciler>()
        .and_then(BudgetReconciler::lease)
        .unwrap();
    assert!(lease.wait_ready(Duration::from_secs(10)), "Redis answers");

    // Idle: the heartbeats alone.
    let idle_from = shared::redis_script_calls(&redis);
    std::thread::sleep(Duration::from_secs(2));
    let idle = shared::redis_script_calls(&redis) - idle_from;

    // A steady rate: one request every 5 ms, each $0.013 (1,000 input tokens at $10/M,
    // 100 output at $30/M), settled at once: $2.60 a second.
    let from = shared::redis_script_calls(&redis);
    let request = Request::new("m").input_tokens(1000).max_output_tokens(100);
    let outcome = Outcome::success(Duration::from_millis(1)).usage(1000, 100);
    let total = RATE_PER_SEC * SECONDS;
    let start = Instant::now();
    let (mut served, mut refused) = (0u64, 0u64);
    for n in 0..total {
        let due = start + Duration::from_micros(n * 1_000_000 / RATE_PER_SEC);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut decision = router.route_owned(&request);
        match decision.take_guard() {
            Some(guard) => {
                drop(decision);
                guard.finish(outcome);
                served += 1;
            }
            None => refused += 1,
        }
    }
    let elapsed = start.elapsed();
    let calls = shared::redis_script_calls(&redis) - from;
    let per_thousand = calls as f64 * 1000.0 / total as f64;
    let status = lease.status();
    eprintln!(
        "steady rate: {total} requests in {elapsed:.2?} ({:.0}/s), {served} served, {refused} refused; \
         {calls} script calls = {per_thousand:.1} per 1,000 requests; idle: {idle} calls in 2 s; \
         lease at the end ${:.2} (target ${:.2})",
        total as f64 / elapsed.as_secs_f64(),
        shared::usd(status.lease_nanos),
        shared::usd(status.target_nanos),
    );
    assert_eq!(
        refused, 0,
        "a steady rate far below the limit is never refused"
    );
    assert!(
        calls * 10 < total,
        "the lease must amortise Redis: {calls} script calls for {total} requests"
    );
    drop(router);
}
