//! Redis stopped mid-traffic and started again (empty): `fail_closed` spends the lease it
//! holds, then refuses paid requests; `fail_open` goes on serving on local accounting.
//! Neither panics or hangs, both recover without a restart, and once Redis is back it
//! holds every nano-dollar settled before, during and after the outage.

mod shared;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::*;

const LIMIT_NANOS: u64 = 1_000_000_000_000; // $1000: only the outage refuses
const TTL_SECS: u64 = 6;

async fn outage(mode: &str) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (mut rng, seed) = Rng::from_time();
    eprintln!("{mode}: seed {seed}");
    let background = Arc::new(AtomicBool::new(false));
    let upstreams = upstreams(2, &mut rng, false, &background).await;
    let prefix = format!("outage{seed:x}");
    let text = config_text(
        &upstreams,
        usd(LIMIT_NANOS),
        &redis.url(),
        &prefix,
        &format!("min_lease_usd = 0.01\nmax_lease_usd = 0.5\nlease_ttl_secs = {TTL_SECS}\ntimeout_ms = 200\nconnect_timeout_ms = 200\nsettle_interval_ms = 100\non_unavailable = \"{mode}\""),
    );
    let (mut replicas, dir) = start_replicas(&format!("shared-budget-{mode}"), &text, 2);
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let base = month_base(&prefix);
    wait_for_leases(&redis, &base, 2, Duration::from_secs(20));

    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&addrs, 4, &stop, false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tokio::task::block_in_place(|| redis.stop());
    let stopped = Instant::now();
    // Past the lease's half lifetime (3 s, counted in whole seconds) and more.
    tokio::time::sleep(Duration::from_secs(TTL_SECS / 2 + 3)).await;
    let answered_before: Vec<u64> = replicas
        .iter()
        .map(|r| r.answers_again.load(Ordering::SeqCst))
        .collect();
    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    // Each replica serves again (under fail_closed, not before) from its first call Redis
    // answers, and logs it. When that comes depends on its retry back-off and on when
    // its thread runs, not on a fixed time: wait for each replica to say so.
    let within = Duration::from_secs(20);
    while replicas
        .iter()
        .zip(&answered_before)
        .any(|(r, before)| r.answers_again.load(Ordering::SeqCst) == *before)
    {
        assert!(
            restarted.elapsed() < within,
            "a replica did not reach Redis within {within:?} of its return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let records = load.join().await;
    let records_ref = &mut replicas;
    tokio::task::block_in_place(|| stop_replicas(records_ref));
    background.store(true, Ordering::SeqCst);

    assert_eq!(
        redis_leases(&redis, &base),
        0,
        "a replica stopped by SIGTERM gives its lease back"
    );
    let window = |from: Instant, to: Instant| -> Vec<Record> {
        records
            .iter()
            .filter(|r| r.sent >= from && r.answered <= to)
            .copied()
            .collect()
    };
    let slowest = records
        .iter()
        .map(|r| r.answered - r.sent)
        .max()
        .unwrap_or_default();
    let (served, refused, failed, no_answer) = summary(&records);
    let during_lease = summary(&window(stopped, stopped + Duration::from_secs(1)));
    let past_lease = summary(&window(
        stopped + Duration::from_secs(TTL_SECS / 2 + 1),
        restarted,
    ));
    let recovered = summary(&window(answered, Instant::now()));
    let settled = redis_settled(&redis, &base);
    let tally: u64 = upstreams.iter().map(|u| u.tally_nanos()).sum();
    eprintln!(
        "{mode}: {} requests ({served} served, {refused} refused, {failed} failed, {no_answer} unanswered), slowest answer {:.3} s; \
         first second of the outage (served, refused): {:?}; past half the lease lifetime: {:?}; \
         both replicas answered {:.2} s after Redis is back, and since then: {:?}; \
         settled in Redis ${:.6}, the mocks' tally ${:.6}",
        records.len(),
        slowest.as_secs_f64(),
        (during_lease.0, during_lease.1),
        (past_lease.0, past_lease.1),
        (answered - restarted).as_secs_f64(),
        (recovered.0, recovered.1),
        usd(settled),
        usd(tally),
    );
    // No hang, no failure: every request got an answer (a 10 s limit each).
    assert_eq!((failed, no_answer), (0, 0));
    for replica in &replicas {
        // One warning for the whole outage, not one per request or per retry.
        assert_eq!(
            replica.unreachable_warnings.load(Ordering::SeqCst),
            1,
            "warnings about the unreachable Redis"
        );
        assert_eq!(replica.panics.load(Ordering::SeqCst), 0, "no panic");
    }
    assert!(
        during_lease.0 > 0,
        "the lease held is spent during the outage"
    );
    match mode {
        "fail_closed" => {
            assert!(past_lease.1 > 0 && past_lease.0 == 0, "past the lease's half lifetime without Redis, paid requests are refused: {past_lease:?}");
        }
        _ => {
            assert!(
                past_lease.0 > 0 && past_lease.1 == 0,
                "fail_open serves on: {past_lease:?}"
            );
            assert_eq!(refused, 0, "fail_open never refuses under the limit");
        }
    }
    assert!(
        recovered.0 > 0 && recovered.1 == 0,
        "Redis back and answering: served again without a restart: {recovered:?}"
    );
    // Redis came back empty; the replicas sent their whole month again. Each answer's
    // cost is rounded to a nano-dollar on its own: allow one per answer.
    assert!(
        settled.abs_diff(tally) <= served as u64,
        "settled ${} != served ${}",
        usd(settled),
        usd(tally)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_spends_the_lease_then_refuses_and_recovers() {
    outage("fail_closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_on_local_accounting_and_recovers() {
    outage("fail_open").await;
}
