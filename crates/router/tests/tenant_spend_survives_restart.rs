//! A tenant's settled spend is durable the way the global spend is: a router built again
//! on the same `store` file (a restart of a single gateway, no Redis) finds each tenant's
//! month, so a tenant's limit is not reset by a restart.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use nexus_core::{pipeline::TenantId, Outcome, Request};
use nexus_router::budget::BudgetReconciler;
use nexus_router::Router;

fn config(store: &Path) -> String {
    format!(
        r#"
[[backends]]
id = "cloud"
url = "http://127.0.0.1:1"
zone = "cloud"
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 10.0
  output_usd_per_mtok = 30.0

[routing.budget]
monthly_limit_usd = 100.0
store = "{}"

[[tenants]]
id = "team-a"
key_sha256 = "{}"
monthly_limit_usd = 1.0

[[tenants]]
id = "team-b"
key_sha256 = "{}"
"#,
        store.display(),
        "a".repeat(64),
        "b".repeat(64)
    )
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

/// Routes one request for `tenant` and settles `input`/`output` tokens of usage.
fn spend(router: &Router, tenant: u32, input: u32, output: u32) {
    let request = Request::new("m")
        .input_tokens(input)
        .max_output_tokens(output)
        .for_tenant(TenantId::new(tenant));
    let mut decision = router.route_owned(&request);
    let guard = decision.take_guard().expect("routed to the cloud backend");
    drop(decision);
    guard.finish(Outcome::success(Duration::from_millis(5)).usage(input, output));
}

/// Each tenant's settled USD, in `[[tenants]]` order.
fn settled(router: &Router) -> Vec<(String, f64)> {
    budget(router)
        .tenant_spend()
        .into_iter()
        .map(|t| (t.id, t.snapshot.settled_usd))
        .collect()
}

/// Waits (bounded) until the journal has made everything durable.
fn flush(router: &Router) {
    let journal = budget(router)
        .journal()
        .expect("a store file is configured");
    assert!(
        journal.wait_durable(journal.last_queued(), Duration::from_secs(10)),
        "the journal did not write within 10 s: {:?}",
        journal.lag()
    );
}

#[test]
fn a_restart_on_the_same_store_keeps_each_tenants_month() {
    let dir = std::env::temp_dir().join(format!("nexus-tenant-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("spend.redb");
    let toml = config(&store);

    let first = Router::from_toml("a.toml", &toml).unwrap();
    // team-a: 2 requests of 10,000 in + 1,000 out = $0.13 each; team-b: one of
    // 20,000 + 2,000 = $0.26; and one request without a tenant, $0.13.
    spend(&first, 0, 10_000, 1_000);
    spend(&first, 0, 10_000, 1_000);
    spend(&first, 1, 20_000, 2_000);
    let request = Request::new("m")
        .input_tokens(10_000)
        .max_output_tokens(1_000);
    let mut decision = first.route_owned(&request);
    decision
        .take_guard()
        .unwrap()
        .finish(Outcome::success(Duration::from_millis(5)).usage(10_000, 1_000));
    drop(decision);
    flush(&first);
    let before = settled(&first);
    let global = budget(&first).ledger().snapshot().settled_usd;
    assert_eq!(before.len(), 2);
    assert!((before[0].1 - 0.26).abs() < 1e-9, "{before:?}");
    assert!((before[1].1 - 0.26).abs() < 1e-9, "{before:?}");
    assert!((global - 0.65).abs() < 1e-9, "{global}");
    // Dropping the router closes the store file so another one can open it.
    drop(first);

    let second = Router::from_toml("a.toml", &toml).unwrap();
    assert_eq!(
        settled(&second),
        before,
        "a restart must find each tenant's month in the store"
    );
    assert!((budget(&second).ledger().snapshot().settled_usd - global).abs() < 1e-12);

    // Spend after the restart adds to what was there, and survives a second restart.
    spend(&second, 0, 10_000, 1_000);
    flush(&second);
    drop(second);
    let third = Router::from_toml("a.toml", &toml).unwrap();
    let after = settled(&third);
    assert!((after[0].1 - 0.39).abs() < 1e-9, "{after:?}");
    assert!((after[1].1 - 0.26).abs() < 1e-9, "{after:?}");
    // team-a's own limit ($1.00) now sees $0.39 spent: the remaining is what is left.
    let spend_a = &budget(&third).tenant_spend()[0];
    assert!((spend_a.remaining_usd().unwrap() - 0.61).abs() < 1e-9);
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}
