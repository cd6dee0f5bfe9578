//! Redis stops mid-traffic and comes back empty (no persistence), in both
//! `on_unavailable` modes: no panic, no hang, decisions behave as documented while it is
//! gone, and once it is back everything settled meanwhile (and before) is in Redis,
//! without a restart of the replica.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use nexus_budget::lease::{LeaseClient, LeaseStatus, OnUnavailable, RedisBudgetSettings, Refusal};
use nexus_core::clock::{Clock, SystemClock};
use redis_server::{wait_until, RedisServer};

const LIMIT: u64 = 100_000_000;

fn settled_in_redis(server: &RedisServer, status: &LeaseStatus) -> u64 {
    let month = status.month.unwrap();
    server.integer(&["GET", &format!("outage:{{global}}:{month}:settled")]) as u64
}

fn outage(mode: OnUnavailable) {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut settings = RedisBudgetSettings::new(server.url());
    settings.key_prefix = "outage".to_owned();
    settings.min_lease_usd = 0.000_1;
    settings.max_lease_usd = 0.002;
    settings.lease_ttl_secs = 6;
    settings.timeout_ms = 200;
    settings.connect_timeout_ms = 200;
    settings.settle_interval_ms = 20;
    settings.on_unavailable = mode;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = LeaseClient::start(&settings, "global", LIMIT, None, Arc::clone(&clock)).unwrap();
    assert!(client.wait_ready(Duration::from_secs(10)));
    let allowance = client.allowance();
    let mut spent = 0;

    let now = clock.now_secs();
    allowance.try_draw(500_000, now).unwrap();
    allowance.settle(500_000, 500_000, now);
    spent += 500_000;
    wait_until("the first spend to be confirmed", || {
        client.status().settled_nanos == spent
    });
    // A request stays in flight through the outage.
    let in_flight_at = clock.now_secs();
    allowance.try_draw(300_000, in_flight_at).unwrap();

    server.stop();
    // While the lease lives, it is spent as usual.
    let now = clock.now_secs();
    allowance.try_draw(100_000, now).unwrap();
    allowance.settle(100_000, 100_000, now);
    spent += 100_000;
    if mode == OnUnavailable::FailOpen {
        // No top-up can come: once a call has failed, a request the lease cannot cover
        // is routed on local accounting, even before the lease's deadline.
        wait_until("a failed call", || client.status().failures > 0);
        let (now, left) = (clock.now_secs(), allowance.left());
        let cost = u64::try_from(left).unwrap() + 1;
        allowance.try_draw(cost, now).unwrap();
        allowance.settle(cost, cost, now);
        spent += cost;
    }
    wait_until("the lease to expire locally", || {
        clock.now_secs() >= allowance.deadline_secs()
    });
    assert!(!client.status().connected);
    let now = clock.now_secs();
    match mode {
        OnUnavailable::FailClosed => {
            assert_eq!(allowance.try_draw(1, now), Err(Refusal::Unavailable));
        }
        OnUnavailable::FailOpen => {
            // Past the lease: local accounting only (the ledger's limit, in the stage).
            allowance.try_draw(3_000_000, now).unwrap();
            allowance.settle(3_000_000, 2_500_000, now);
            spent += 2_500_000;
            assert!(allowance.left() < 0, "spent past the lease: a debt");
        }
    }
    // The request in flight finishes during the outage.
    allowance.settle(300_000, 250_000, in_flight_at);
    spent += 250_000;
    let failures = client.status().failures;
    wait_until("more failed calls", || {
        client.status().failures > failures + 2
    });

    // Redis comes back, empty: the replica reconnects by itself and sends its month's
    // whole spend, before the outage and during it.
    server.restart();
    wait_until("everything settled to reach Redis", || {
        let status = client.status();
        status.connected && status.unconfirmed_nanos == 0 && status.settled_nanos == spent
    });
    let status = client.status();
    assert_eq!(settled_in_redis(&server, &status), spent);
    // Nothing in flight: what decisions can draw is exactly the lease Redis holds.
    assert_eq!(status.allowance_nanos, status.lease_nanos as i64);
    assert!(status.lease_nanos > 0);
    allowance.try_draw(1_000, clock.now_secs()).unwrap();
    allowance.release(1_000, clock.now_secs());
}

#[test]
fn fail_closed_spends_the_lease_then_refuses_and_recovers() {
    outage(OnUnavailable::FailClosed);
}

#[test]
fn fail_open_routes_on_local_accounting_and_recovers() {
    outage(OnUnavailable::FailOpen);
}
