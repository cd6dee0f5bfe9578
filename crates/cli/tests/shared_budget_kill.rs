//! kill -9 of one replica mid-traffic: the others go on serving, nothing they settled is
//! lost, and the dead replica's lease comes back to the pool after its expiry.

mod shared;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::*;

const LIMIT_NANOS: u64 = 1_000_000_000_000; // $1000: no refusal in this test
const TTL_SECS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_strands_its_lease_only_until_expiry() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (mut rng, seed) = Rng::from_time();
    eprintln!("seed {seed}");
    let background = Arc::new(AtomicBool::new(false));
    // No upstream failures here: every settled nano-dollar is a served answer.
    let upstreams = upstreams(2, &mut rng, false, &background).await;
    let prefix = format!("kill{seed:x}");
    let text = config_text(
        &upstreams,
        usd(LIMIT_NANOS),
        &redis.url(),
        &prefix,
        &format!("min_lease_usd = 0.01\nmax_lease_usd = 0.05\nlease_ttl_secs = {TTL_SECS}\ntimeout_ms = 500\nsettle_interval_ms = 100"),
    );
    let (mut replicas, dir) = start_replicas("shared-budget-kill", &text, 3);
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let base = month_base(&prefix);
    wait_for_leases(&redis, &base, 3, Duration::from_secs(20));

    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::start(&addrs, 8, &stop, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replicas[0].child.kill().expect("kill -9");
    let _ = replicas[0].child.wait();
    let killed_at = Instant::now();
    assert_eq!(
        redis_leases(&redis, &base),
        3,
        "the dead replica's lease is still held right after the kill"
    );
    // Its lease goes back to the pool once it expires (the survivors' syncs drop it).
    let deadline = killed_at + Duration::from_secs(TTL_SECS + 10);
    while redis_leases(&redis, &base) > 2 {
        assert!(
            Instant::now() < deadline,
            "the dead replica's lease did not come back within lease_ttl_secs + 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let returned_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let records = load.join().await;
    tokio::task::block_in_place(|| stop_replicas(&mut replicas[1..]));
    background.store(true, Ordering::SeqCst);

    assert_eq!(
        redis_leases(&redis, &base),
        0,
        "a replica stopped by SIGTERM gives its lease back"
    );
    // The survivors kept serving after the kill.
    for replica in [1, 2] {
        let after = records
            .iter()
            .filter(|r| r.replica == replica && r.sent > killed_at)
            .filter(|r| matches!(r.answer, Answer::Served { .. }))
            .count();
        assert!(after > 0, "replica {replica} served nothing after the kill");
    }
    let survivors: Vec<Record> = records.iter().filter(|r| r.replica != 0).copied().collect();
    let (served, refused, failed, no_answer) = summary(&survivors);
    assert_eq!(
        (refused, failed, no_answer),
        (0, 0, 0),
        "the survivors served every request ({served} served)"
    );

    // Nothing settled is lost: Redis holds every served answer but what the dead replica
    // had not sent yet (at most its last settle_interval_ms, plus its requests in flight).
    let settled = redis_settled(&redis, &base);
    let tally: u64 = upstreams.iter().map(|u| u.tally_nanos()).sum();
    let recent = served_nanos(
        &upstreams,
        records
            .iter()
            .filter(|r| r.replica == 0 && r.answered + Duration::from_millis(400) > killed_at),
    );
    let in_flight_bound = 8 * upstreams
        .iter()
        .map(|u| u.cost_nanos(PROMPT.len() as u64, MAX_TOKENS))
        .max()
        .unwrap_or(0);
    eprintln!(
        "lease back {:.2} s after the kill (lease_ttl_secs = {TTL_SECS}); settled ${:.6}, the mocks' tally ${:.6}; \
         the dead replica's unsent at most ${:.6} (last 400 ms) + ${:.6} (in flight); {} requests",
        returned_after.as_secs_f64(),
        usd(settled),
        usd(tally),
        usd(recent),
        usd(in_flight_bound),
        records.len()
    );
    assert!(settled <= tally, "more settled than served");
    assert!(
        tally - settled <= recent + in_flight_bound,
        "settled ${} is short of served ${} by more than the dead replica's last batch",
        usd(settled),
        usd(tally)
    );
    let _ = std::fs::remove_dir_all(dir);
}
