//! Redis loses its data (a restart without persistence, a FLUSHALL, a failover to an
//! empty replica) while a replica has nothing new to settle: the replica's spend of the
//! month, already confirmed before the loss, must reach Redis again at its next call,
//! not only when it happens to settle something new; until then other replicas would be
//! leased the budget this one already spent.
#![allow(clippy::unwrap_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use nexus_budget::lease::{LeaseClient, RedisBudgetSettings};
use nexus_core::clock::{Clock, SystemClock};
use redis_server::{wait_until, RedisServer};

const LIMIT: u64 = 100_000_000;

#[test]
fn an_idle_replica_sends_its_confirmed_spend_again_after_redis_lost_its_data() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut settings = RedisBudgetSettings::new(server.url());
    settings.key_prefix = "lost".to_owned();
    settings.min_lease_usd = 0.000_1;
    settings.max_lease_usd = 0.002;
    settings.lease_ttl_secs = 6;
    settings.settle_interval_ms = 20;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = LeaseClient::start(&settings, "global", LIMIT, None, Arc::clone(&clock)).unwrap();
    assert!(client.wait_ready(Duration::from_secs(10)));
    let allowance = client.allowance();

    let spent = 700_000;
    let now = clock.now_secs();
    allowance.try_draw(spent, now).unwrap();
    allowance.settle(spent, spent, now);
    wait_until("the spend to be confirmed", || {
        let status = client.status();
        status.settled_nanos == spent && status.unconfirmed_nanos == 0
    });
    let month = client.status().month.unwrap();
    let settled_key = format!("lost:{{global}}:{month}:settled");
    assert_eq!(server.integer(&["GET", &settled_key]), spent as i64);

    // Redis loses everything; this replica settles nothing new from here on.
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    let syncs = client.status().syncs;
    // Heartbeats come every sixth of the lease lifetime (1 s): a few answers later,
    // Redis must hold the month's spend again.
    assert!(client.wait_for_syncs(syncs + 3, Duration::from_secs(20)));
    assert_eq!(
        server.integer(&["GET", &settled_key]),
        spent as i64,
        "the spend confirmed before Redis lost its data was not sent again"
    );
    let status = client.status();
    assert_eq!(status.settled_nanos, spent);
    // Nothing in flight: what decisions can draw is exactly the lease Redis holds.
    assert_eq!(status.allowance_nanos, status.lease_nanos as i64);
}
