//! Reloading a replica whose budget is shared through Redis: the reloaded config's
//! budget stage draws from the running lease (global, and each tenant's), so Redis never
//! shows a second lease of the replica, no spend is reset, and the tenants' months are
//! kept. A reload that changes what the lease was started with (the limit, a
//! `[routing.budget.redis]` key) says it needs a restart.
#![allow(clippy::unwrap_used)]

mod shared;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::{pipeline::TenantId, Outcome, Request};
use nexus_router::budget::BudgetReconciler;
use nexus_router::{LiveRouter, Router};
use shared::RedisServer;

/// 1,000 input tokens at $10/M and 100 output tokens at $30/M: $0.013.
const COST_NANOS: u64 = 13_000_000;
const CLIENTS: u64 = 4;
const RELOADS: usize = 8;

fn config(redis: &str, prefix: &str, priority: u32, limit: f64, extra: &str) -> String {
    format!(
        r#"
[[backends]]
id = "cloud"
url = "http://127.0.0.1:1"
zone = "cloud"
priority = {priority}
models = [{{ name = "m", input_usd_per_mtok = 10.0, output_usd_per_mtok = 30.0 }}]

[routing.budget]
monthly_limit_usd = {limit}

[routing.budget.redis]
url = "{redis}"
key_prefix = "{prefix}"
settle_interval_ms = 50
{extra}

[[tenants]]
id = "team-a"
key_sha256 = "{}"
monthly_limit_usd = 50.0
"#,
        "a".repeat(64)
    )
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

/// Leases of the month in `scope` (`global`, `tenant:team-a`).
fn leases(redis: &RedisServer, prefix: &str, scope: &str) -> i64 {
    let base = shared::month_base(prefix).replace("{global}", &format!("{{{scope}}}"));
    shared::redis_leases(redis, &base)
}

fn settled(redis: &RedisServer, prefix: &str, scope: &str) -> u64 {
    let base = shared::month_base(prefix).replace("{global}", &format!("{{{scope}}}"));
    shared::redis_settled(redis, &base)
}

#[test]
fn reloads_under_traffic_keep_one_lease_and_every_month() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reload{}", std::process::id());
    let url = redis.url();
    let live = Arc::new(LiveRouter::new(
        Router::builder(),
        Router::from_toml("reload.toml", &config(&url, &prefix, 1, 100.0, "")).unwrap(),
        None,
    ));
    shared::wait_for_leases(
        &redis,
        &shared::month_base(&prefix),
        1,
        Duration::from_secs(10),
    );

    // Clients: half their requests as team-a, half without a tenant.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (live, stop, served) = (Arc::clone(&live), Arc::clone(&stop), Arc::clone(&served));
            std::thread::spawn(move || {
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let tenant = n % 2 == 0;
                    let mut request = Request::new("m").input_tokens(1000).max_output_tokens(100);
                    if tenant {
                        request = request.for_tenant(TenantId::new(0));
                    }
                    let mut decision = live.route_owned(&request);
                    let Some(guard) = decision.take_guard() else {
                        // A refusal (a top-up on its way): try again shortly.
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    drop(decision);
                    guard.finish(Outcome::success(Duration::from_millis(1)).usage(1000, 100));
                    served[usize::from(tenant)].fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();

    // The most leases each scope ever showed (sampled between and after reloads).
    let most = [AtomicU64::new(0), AtomicU64::new(0)];
    let sample = |reload: usize| {
        for (i, scope) in ["global", "tenant:team-a"].into_iter().enumerate() {
            let count = leases(&redis, &prefix, scope);
            most[i].fetch_max(count.max(0) as u64, Ordering::Relaxed);
            assert_eq!(count, 1, "reload {reload}: {scope} shows {count} leases");
        }
    };

    let mut last_settled = [0u64; 2];
    let mut restart_notes = Vec::new();
    for reload in 0..RELOADS {
        let pause = Instant::now() + Duration::from_millis(150);
        while Instant::now() < pause {
            sample(reload);
            std::thread::sleep(Duration::from_millis(10));
        }
        // Alternate the backend's priority (a change a reload puts in force); the
        // fourth reload also changes the limit and a lease key, which need a restart.
        let text = if reload == 3 {
            config(&url, &prefix, 2, 200.0, "min_lease_usd = 0.02")
        } else {
            config(&url, &prefix, 1 + (reload as u32 % 2), 100.0, "")
        };
        let summary = live.reload_str("reload.toml", &text).unwrap();
        if reload == 3 {
            restart_notes = summary.restart_required.clone();
        } else {
            assert!(
                summary.restart_required.is_empty(),
                "reload {reload}: {:?}",
                summary.restart_required
            );
        }
        sample(reload);
        for (i, scope) in ["global", "tenant:team-a"].into_iter().enumerate() {
            let now = settled(&redis, &prefix, scope);
            assert!(
                now >= last_settled[i],
                "reload {reload}: {scope}'s settled spend went down from {} to {now}",
                last_settled[i]
            );
            last_settled[i] = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let (plain, team_a) = (
        served[0].load(Ordering::Relaxed),
        served[1].load(Ordering::Relaxed),
    );
    assert!(
        plain > 0 && team_a > 0,
        "traffic flowed: {plain} / {team_a}"
    );

    // The restart notes name the keys, never the URL.
    let notes = restart_notes.join("\n");
    assert!(
        notes.contains("[routing.budget] monthly_limit_usd"),
        "{notes}"
    );
    assert!(
        notes.contains("[routing.budget.redis] min_lease_usd"),
        "{notes}"
    );
    assert!(!notes.contains(&url), "{notes}");

    // Local accounting after 8 reloads holds every request, globally and for team-a.
    let current = live.current();
    let stage = budget(&current);
    let global = stage.ledger().snapshot().settled_usd;
    let tenant = stage.tenant_spend()[0].snapshot.settled_usd;
    let want_global = (plain + team_a) * COST_NANOS;
    let want_tenant = team_a * COST_NANOS;
    assert!(
        (global - shared::usd(want_global)).abs() < 1e-6,
        "global {global} vs {}",
        shared::usd(want_global)
    );
    assert!(
        (tenant - shared::usd(want_tenant)).abs() < 1e-6,
        "team-a {tenant} vs {}",
        shared::usd(want_tenant)
    );
    // Redis gets all of it: wait (bounded) for the last settlements to be sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while settled(&redis, &prefix, "global") < want_global
        || settled(&redis, &prefix, "tenant:team-a") < want_tenant
    {
        assert!(
            Instant::now() < deadline,
            "Redis did not receive every settlement within 10 s: global {} of {want_global}, team-a {} of {want_tenant}",
            settled(&redis, &prefix, "global"),
            settled(&redis, &prefix, "tenant:team-a")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(settled(&redis, &prefix, "global"), want_global);
    assert_eq!(settled(&redis, &prefix, "tenant:team-a"), want_tenant);
    for most in &most {
        assert_eq!(most.load(Ordering::Relaxed), 1, "never a second lease");
    }

    // Dropping the last router gives the leases back.
    drop(current);
    assert_eq!(Arc::strong_count(&live), 1, "no client holds the router");
    drop(live);
    for scope in ["global", "tenant:team-a"] {
        assert_eq!(
            leases(&redis, &prefix, scope),
            0,
            "{scope}'s lease given back"
        );
    }
}
