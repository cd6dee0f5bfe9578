//! Three `nexus serve` replicas on one Redis share one monthly limit: 16 concurrent
//! clients each, random prices, token counts above the 4-bytes estimate, random upstream
//! failures. Settled spend (in Redis, and by the mocks' own tally) never passes the
//! limit, and at least 95 % of it is spent before the first refusal.

mod shared;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::*;

const LIMIT_NANOS: u64 = 2_500_000_000; // $2.50

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_spend_the_limit_and_never_pass_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mut rng, seed) = Rng::from_time();
    eprintln!("seed {seed}");
    let background = Arc::new(AtomicBool::new(false));
    let upstreams = upstreams(3, &mut rng, true, &background).await;
    let prefix = format!("test{seed:x}");
    let text = config_text(
        &upstreams,
        usd(LIMIT_NANOS),
        &redis.url(),
        &prefix,
        "min_lease_usd = 0.015\nmax_lease_usd = 0.1\nlease_ttl_secs = 6\nsettle_interval_ms = 100",
    );
    let (mut replicas, dir) = start_replicas("shared-budget", &text, 3);
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let base = month_base(&prefix);
    wait_for_leases(&redis, &base, 3, Duration::from_secs(20));
    let calls_before = redis_script_calls(&redis);

    // Phase 1: load until the first refusal.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&addrs, 16, &stop, true);
    let deadline = started + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "no refusal within 120 s: the limit was never reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_refusal = load.first_refusal.lock().unwrap().expect("a refusal");
    let phase1 = load.join().await;
    let phase1_secs = started.elapsed().as_secs_f64();
    // Every replica sends its settlements within 100 ms: wait a few rounds.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let settled_at_refusal = redis_settled(&redis, &base);
    let calls_phase1 = redis_script_calls(&redis) - calls_before;
    // Answers to requests sent after the first refusal are not "before refusals begin".
    let late = served_nanos(&upstreams, phase1.iter().filter(|r| r.sent > first_refusal));
    let spent_before = settled_at_refusal.saturating_sub(late);

    // Phase 2: keep pushing at the limit for a while; nothing may pass it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&addrs, 16, &stop, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let phase2 = load.join().await;
    let replicas_ref = &mut replicas;
    tokio::task::block_in_place(|| stop_replicas(replicas_ref));
    background.store(true, Ordering::SeqCst);

    assert_eq!(
        redis_leases(&redis, &base),
        0,
        "a replica stopped by SIGTERM gives its lease back"
    );
    let settled = redis_settled(&redis, &base);
    let tally: u64 = upstreams.iter().map(|u| u.tally_nanos()).sum();
    let (served, refused, failed, no_answer) = summary(&phase1);
    let (served2, refused2, failed2, no_answer2) = summary(&phase2);
    let requests = phase1.len() + phase2.len();
    eprintln!(
        "phase 1: {:.2} s, {} requests ({served} served, {refused} refused, {failed} failed, {no_answer} unanswered); \
         spent before the first refusal ${:.4} = {:.2} % of the ${:.2} limit; {calls_phase1} lease-script calls ({:.1} per 1000 requests)\n\
         phase 2: {} requests ({served2} served, {refused2} refused, {failed2} failed, {no_answer2} unanswered)\n\
         end: settled in Redis ${:.6}, the mocks' tally ${:.6}; {} lease-script calls for {requests} requests",
        phase1_secs,
        phase1.len(),
        usd(spent_before),
        100.0 * spent_before as f64 / LIMIT_NANOS as f64,
        usd(LIMIT_NANOS),
        calls_phase1 as f64 * 1000.0 / phase1.len() as f64,
        phase2.len(),
        usd(settled),
        usd(tally),
        redis_script_calls(&redis) - calls_before,
    );
    assert_eq!(no_answer + no_answer2, 0, "every request was answered");
    assert!(
        settled <= LIMIT_NANOS,
        "Redis settled ${} > limit",
        usd(settled)
    );
    assert!(tally <= LIMIT_NANOS, "mocks' tally ${} > limit", usd(tally));
    // Failed attempts settle at their estimate: Redis holds at least what was served.
    assert!(
        settled + 3 >= tally,
        "settled ${} < served ${}: spend was lost",
        usd(settled),
        usd(tally)
    );
    assert!(
        spent_before as f64 >= 0.95 * LIMIT_NANOS as f64,
        "only ${} of ${} spent before the first refusal",
        usd(spent_before),
        usd(LIMIT_NANOS)
    );
    let _ = std::fs::remove_dir_all(dir);
}
