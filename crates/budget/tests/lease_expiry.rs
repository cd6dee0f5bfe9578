//! A replica killed with SIGKILL mid-traffic: the others go on, nothing it settled (and
//! Redis confirmed) is lost, and its lease comes back to the pool after its expiry.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_budget::lease::{LeaseClient, LeaseStatus, RedisBudgetSettings};
use nexus_core::clock::{Clock, SystemClock};
use redis_server::RedisServer;

const CHILD_ENV: &str = "NEXUS_LEASE_EXPIRY_CHILD_URL";
const LIMIT: u64 = 10_000_000;
const SPENT_BY_CHILD: u64 = 1_000_000;

fn settings(url: String) -> RedisBudgetSettings {
    let mut settings = RedisBudgetSettings::new(url);
    settings.key_prefix = "expiry".to_owned();
    settings.min_lease_usd = 0.000_1;
    settings.max_lease_usd = 0.004;
    settings.lease_ttl_secs = 6;
    settings.timeout_ms = 300;
    settings.settle_interval_ms = 20;
    settings
}

fn wait_until(
    client: &LeaseClient,
    what: &str,
    check: impl Fn(&LeaseStatus) -> bool,
) -> LeaseStatus {
    let start = Instant::now();
    loop {
        let status = client.status();
        if check(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited too long for {what}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child: takes a lease, spends from it, waits until Redis confirmed the spend,
/// prints `ready`, and then holds its lease until it is killed.
#[test]
#[ignore = "the child process of a_killed_replicas_lease_comes_back; run by it"]
fn expiry_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client =
        LeaseClient::start(&settings(url), "global", LIMIT, None, Arc::clone(&clock)).unwrap();
    assert!(client.wait_ready(Duration::from_secs(10)));
    let now = clock.now_secs();
    client.allowance().try_draw(SPENT_BY_CHILD, now).unwrap();
    client
        .allowance()
        .settle(SPENT_BY_CHILD, SPENT_BY_CHILD, now);
    let status = wait_until(&client, "the child's spend to be confirmed", |s| {
        s.settled_nanos >= SPENT_BY_CHILD && s.unconfirmed_nanos == 0
    });
    println!("ready {}", status.lease_nanos);
    // Killed long before; the bound only keeps an orphan from living on.
    std::thread::sleep(Duration::from_secs(120));
    std::process::exit(1);
}

/// Kills the child if the test fails before it does.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_replicas_lease_comes_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut child = Reap(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "expiry_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, server.url())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let child_lease: u64 = loop {
        let line = lines
            .next()
            .expect("the child ended before it was ready")
            .unwrap();
        // libtest may have printed "test expiry_child ... " on the same line.
        if let Some((_, lease)) = line.split_once("ready ") {
            break lease.trim().parse().unwrap();
        }
    };
    assert!(child_lease > 0);

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let replica = LeaseClient::start(
        &settings(server.url()),
        "global",
        LIMIT,
        None,
        Arc::clone(&clock),
    )
    .unwrap();
    assert!(replica.wait_ready(Duration::from_secs(10)));
    let before = replica.status();
    assert_eq!(before.live_replicas, 2);
    assert_eq!(before.leased_nanos, child_lease + before.lease_nanos);

    child.0.kill().unwrap(); // SIGKILL: no shutdown, no give-back
    child.0.wait().unwrap();
    drop(lines);

    // This replica goes on spending meanwhile.
    let now = clock.now_secs();
    replica.allowance().try_draw(10_000, now).unwrap();
    replica.allowance().settle(10_000, 10_000, now);

    // After the expiry (6 s) a heartbeat purges the dead lease: only ours is left, and
    // the pool is shared by one live replica.
    let after = wait_until(&replica, "the dead replica's lease to come back", |s| {
        s.leased_nanos == s.lease_nanos && s.live_replicas == 1
    });
    assert!(
        LIMIT - after.settled_nanos - after.leased_nanos >= child_lease,
        "the dead lease is free to grant again: {after:?}"
    );
    // Nothing the dead replica settled was lost.
    wait_until(&replica, "our spend to be confirmed", |s| {
        s.settled_nanos == SPENT_BY_CHILD + 10_000 && s.unconfirmed_nanos == 0
    });
    let month = replica.status().month.unwrap();
    let settled = server.integer(&["GET", &format!("expiry:{{global}}:{month}:settled")]);
    assert_eq!(settled as u64, SPENT_BY_CHILD + 10_000);
    let leases = server.command(&["HKEYS", &format!("expiry:{{global}}:{month}:leases")]);
    assert!(
        leases.starts_with("*1\r\n"),
        "only the live replica holds a lease: {leases}"
    );
}
