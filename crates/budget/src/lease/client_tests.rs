//! The lease client against a real Redis, with a fake clock where the test needs to
//! move time (the script's clock is replaced too, which only tests can do).

use std::sync::Arc;
use std::time::Duration;

use nexus_core::clock::{Clock, FakeClock};

use super::*;
use crate::lease::redis_server::RedisServer;
use crate::lease::Refusal;

const WAIT: Duration = Duration::from_secs(10);

fn settings(server: &RedisServer) -> RedisBudgetSettings {
    let mut settings = RedisBudgetSettings::new(server.url());
    settings.key_prefix = "unit".to_owned();
    settings.min_lease_usd = 0.000_1;
    settings.max_lease_usd = 0.001;
    settings.lease_ttl_secs = 6;
    settings.settle_interval_ms = 50;
    settings
}

/// Waits until `check` holds on the status, or fails the test after `WAIT`.
fn wait_until(client: &LeaseClient, what: &str, check: impl Fn(&LeaseStatus) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let status = client.status();
        if check(&status) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "waited too long for {what}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn draws_settle_and_the_lease_goes_back_at_shutdown() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock: Arc<dyn Clock> = Arc::new(nexus_core::clock::SystemClock);
    let ledger = Arc::new(SpendLedger::new(Arc::clone(&clock)));
    let client = LeaseClient::start(
        &settings(&server),
        "global",
        10_000_000,
        Some(Arc::clone(&ledger)),
        Arc::clone(&clock),
    )
    .unwrap();
    assert!(client.wait_ready(WAIT));
    let status = client.status();
    assert_eq!(
        status.lease_nanos, 1_000_000,
        "max_lease while plenty is left"
    );
    let now = clock.now_secs();
    let allowance = client.allowance();
    allowance.try_draw(400_000, now).unwrap();
    allowance.settle(400_000, 300_000, now);
    wait_until(&client, "the settlement to reach Redis", |s| {
        s.settled_nanos == 300_000
    });
    assert_eq!(
        ledger.total_nanos(),
        300_000,
        "the ledger sees the shared spend"
    );
    let month = client.status().month.unwrap();
    drop(client);
    let leases = format!("unit:{{global}}:{month}:leases");
    assert_eq!(
        server.command(&["HLEN", &leases]),
        ":0\r\n",
        "nothing left leased"
    );
    let settled = format!("unit:{{global}}:{month}:settled");
    assert_eq!(server.integer(&["GET", &settled]), 300_000);
}

/// The month comes from Redis's clock: at its midnight the replica switches to the new
/// month's lease (even though its own clock still says the old month), a request of the
/// old month settles into the old month, and decisions of the new month draw from the
/// new lease.
#[test]
fn the_replica_follows_the_server_month() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let november = Month::new(2026, 11).unwrap();
    let midnight = november.next().start_unix_secs();
    let server_clock = Arc::new(FakeClock::at_secs(midnight - 60));
    // Our clock runs 10 s behind Redis's.
    let local = Arc::new(FakeClock::at_secs(midnight - 70));
    let client = LeaseClient::start_with(
        &settings(&server),
        "global",
        10_000_000,
        None,
        local.clone(),
        Some(server_clock.clone()),
    )
    .unwrap();
    assert!(client.wait_ready(WAIT));
    assert_eq!(client.status().month, Some(november));
    let decided = local.now_secs();
    client.allowance().try_draw(500_000, decided).unwrap();

    // Redis's midnight; ours is 10 s away.
    server_clock.set_secs(midnight + 1);
    local.set_secs(midnight - 9);
    wait_until(&client, "December", |s| s.month == Some(november.next()));
    assert_eq!(
        Month::from_unix_secs(local.now_secs()),
        november,
        "our clock is still in November"
    );
    // The November request finishes after the switch: November's spend.
    client.allowance().settle(500_000, 450_000, decided);
    // A decision of the switch's second waits for the next one, then draws December's.
    let now = local.now_secs();
    assert_eq!(
        client.allowance().try_draw(1, now),
        Err(Refusal::RollingOver)
    );
    local.set_secs(now + 1);
    client.allowance().try_draw(100_000, now + 1).unwrap();
    client.allowance().settle(100_000, 100_000, now + 1);
    let key = |month: Month| format!("unit:{{global}}:{month}:settled");
    let start = std::time::Instant::now();
    while server.integer(&["GET", &key(november.next())]) != 100_000 {
        assert!(start.elapsed() < WAIT, "December's spend never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.integer(&["GET", &key(november)]), 450_000);
}

/// Under `fail_open`, Redis is down across midnight: what is spent after midnight on
/// local accounting is December's spend, and reaches December's keys once Redis is back,
/// not November's.
#[test]
fn a_fail_open_outage_across_midnight_counts_the_new_month_in_the_new_month() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let november = Month::new(2026, 11).unwrap();
    let midnight = november.next().start_unix_secs();
    let server_clock = Arc::new(FakeClock::at_secs(midnight - 60));
    let local = Arc::new(FakeClock::at_secs(midnight - 60));
    let mut settings = settings(&server);
    settings.on_unavailable = OnUnavailable::FailOpen;
    settings.timeout_ms = 200;
    settings.connect_timeout_ms = 200;
    let client = LeaseClient::start_with(
        &settings,
        "global",
        10_000_000,
        None,
        local.clone(),
        Some(server_clock.clone()),
    )
    .unwrap();
    assert!(client.wait_ready(WAIT));
    assert_eq!(client.status().month, Some(november));
    let decided = local.now_secs();
    client.allowance().try_draw(200_000, decided).unwrap();
    client.allowance().settle(200_000, 200_000, decided);
    wait_until(&client, "November's spend in Redis", |s| {
        s.settled_nanos == 200_000
    });

    server.stop();
    wait_until(&client, "a failed call", |s| s.failures > 0);
    server_clock.set_secs(midnight + 5);
    local.set_secs(midnight + 5);
    let failures = client.status().failures;
    wait_until(&client, "a failed call after midnight", |s| {
        s.failures > failures + 1
    });
    // December, Redis still down: routed on local accounting (a decision of the second
    // the replica noticed may have to wait for the next one).
    let now = local.now_secs() + 1;
    local.set_secs(now);
    server_clock.set_secs(now);
    client.allowance().try_draw(300_000, now).unwrap();
    client.allowance().settle(300_000, 300_000, now);

    server.restart();
    let key = |month: Month| format!("unit:{{global}}:{month}:settled");
    let start = std::time::Instant::now();
    while server.integer(&["GET", &key(november.next())]) != 300_000 {
        assert!(
            start.elapsed() < WAIT,
            "December's spend never reached December: November {}, December {}",
            server.integer(&["GET", &key(november)]),
            server.integer(&["GET", &key(november.next())])
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until(&client, "December's lease", |s| {
        s.connected && s.month == Some(november.next()) && s.unconfirmed_nanos == 0
    });
    // Redis restarted empty: November's total came back too, and nothing else.
    assert_eq!(server.integer(&["GET", &key(november)]), 200_000);
    let status = client.status();
    assert_eq!(status.allowance_nanos, status.lease_nanos as i64);
}

#[test]
fn nothing_paid_is_drawn_before_the_first_answer() {
    let mut settings = RedisBudgetSettings::new("redis://127.0.0.1:1");
    settings.timeout_ms = 100;
    settings.connect_timeout_ms = 100;
    let clock: Arc<dyn Clock> = Arc::new(nexus_core::clock::SystemClock);
    let client =
        LeaseClient::start(&settings, "global", 1_000_000, None, Arc::clone(&clock)).unwrap();
    assert!(!client.wait_ready(Duration::from_millis(300)));
    assert_eq!(
        client.allowance().try_draw(1, clock.now_secs()),
        Err(Refusal::NotReady)
    );
    assert!(client.status().failures > 0);
    assert!(client.status().last_error.is_some());
}

#[test]
fn limits_beyond_exact_lua_numbers_are_refused() {
    let settings = RedisBudgetSettings::new("redis://127.0.0.1:1");
    let clock: Arc<dyn Clock> = Arc::new(nexus_core::clock::SystemClock);
    let error = LeaseClient::start(&settings, "global", 1 << 53, None, clock).unwrap_err();
    assert!(
        error.to_string().contains("lower monthly_limit_usd"),
        "{error}"
    );
}
