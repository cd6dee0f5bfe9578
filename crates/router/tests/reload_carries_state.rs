//! What a reload keeps and what it drops: kept backends keep their live state (in
//! flight, latency, health, quality windows and circuit), removed ones lose it, new ones
//! start afresh; spend and reservations carry over; a bad file keeps the running config.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use nexus_core::{fleet::BackendStatus, Outcome, Request};
use nexus_router::budget::BudgetReconciler;
use nexus_router::quality::{Circuit, QualityReconciler};
use nexus_router::{LiveRouter, Router};

fn backend(id: &str, zone: &str, model: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nid = \"{id}\"\nurl = \"http://127.0.0.1:1\"\nzone = \"{zone}\"\n{extra}\n  [[backends.models]]\n  name = \"{model}\"\n  input_usd_per_mtok = 1.0\n  output_usd_per_mtok = 1.0\n"
    )
}

const BUDGET: &str = "[routing.budget]\nmonthly_limit_usd = 100.0\n";

fn quality(router: &Router) -> &QualityReconciler {
    router.pipeline().stage_of::<QualityReconciler>().unwrap()
}

fn budget(router: &Router) -> &BudgetReconciler {
    router.pipeline().stage_of::<BudgetReconciler>().unwrap()
}

#[test]
fn kept_backends_keep_their_state_removed_ones_drop_it_new_ones_start_afresh() {
    let old = format!(
        "{}{}{BUDGET}",
        backend("kept", "cloud", "m", ""),
        backend("removed", "local", "other", "")
    );
    let live = LiveRouter::new(
        Router::builder(),
        Router::from_toml("a.toml", &old).unwrap(),
        None,
    );
    let before = live.current();
    let kept = before.fleet().backend_by_name("kept").unwrap();
    let removed = before.fleet().backend_by_name("removed").unwrap();

    // State of `kept`: a request in flight, a latency average, unhealthy, circuit open.
    let mut decision =
        live.route_owned(&Request::new("m").input_tokens(1000).max_output_tokens(1000));
    let guard = decision.take_guard().expect("routed to kept");
    drop(decision);
    assert_eq!(guard.backend().name(), "kept");
    kept.live().record_latency(
        Duration::from_millis(250),
        quality(&before).tracker().now_secs(),
    );
    for _ in 0..5 {
        quality(&before)
            .tracker()
            .record(kept.id(), false, Duration::from_millis(10), None);
    }
    assert!(matches!(
        quality(&before).tracker().circuit(kept.id()),
        Circuit::Open { .. }
    ));
    before
        .fleet()
        .set_status(kept.id(), BackendStatus::Unhealthy);
    before
        .fleet()
        .set_status(removed.id(), BackendStatus::Unhealthy);
    let reserved = budget(&before).ledger().snapshot().reserved_usd;
    assert!(reserved > 0.0);

    // The new config puts `kept` second (a new index), drops `removed`, adds `added`.
    let new = format!(
        "{}{}{BUDGET}",
        backend("added", "local", "m", "status = \"loading\""),
        backend("kept", "cloud", "m", "priority = 3")
    );
    let summary = live
        .reload_str("b.toml", &new)
        .expect("the new config loads");
    assert_eq!(summary.backends_kept, ["kept"]);
    assert_eq!(summary.backends_added, ["added"]);
    assert_eq!(summary.backends_removed, ["removed"]);
    assert!(summary.restart_required.is_empty());

    let after = live.current();
    let kept_now = after.fleet().backend_by_name("kept").unwrap();
    assert_eq!(kept_now.id().index(), 1);
    assert_eq!(kept_now.priority(), 3, "its settings are the new config's");
    assert_eq!(kept_now.live().in_flight(), 1);
    assert_eq!(kept_now.live().status(), BackendStatus::Unhealthy);
    let now = quality(&after).tracker().now_secs();
    assert_eq!(kept_now.live().latency_ewma_ms(now), Some(250.0));
    assert!(matches!(
        quality(&after).tracker().circuit(kept_now.id()),
        Circuit::Open { .. }
    ));
    assert_eq!(
        quality(&after)
            .tracker()
            .stats_at(kept_now.id(), now)
            .unwrap()
            .samples_1h(),
        5
    );
    // The unhealthy status reached the new fleet's decisions too.
    let decision = live.route_owned(&Request::new("m"));
    assert!(decision.backend().is_none_or(|b| b.name() != "kept"));
    drop(decision);

    let added = after.fleet().backend_by_name("added").unwrap();
    assert_eq!(
        added.live().status(),
        BackendStatus::Loading,
        "configured status"
    );
    assert_eq!(added.live().in_flight(), 0);
    assert!(matches!(
        quality(&after).tracker().circuit(added.id()),
        Circuit::Closed
    ));
    assert!(after.fleet().backend_by_name("removed").is_none());

    // The request in flight finishes on its own config and lands in the shared state.
    assert!(Arc::ptr_eq(
        budget(&before).ledger(),
        budget(&after).ledger()
    ));
    assert_eq!(budget(&after).ledger().snapshot().reserved_usd, reserved);
    guard.finish(Outcome::success(Duration::from_millis(50)).usage(1000, 1000));
    assert_eq!(kept_now.live().in_flight(), 0);
    let spend = budget(&after).ledger().snapshot();
    assert_eq!(spend.reserved_usd, 0.0);
    assert!((spend.settled_usd - 0.002).abs() < 1e-12, "{spend:?}");
    assert_eq!(
        quality(&after)
            .tracker()
            .stats_at(kept_now.id(), now)
            .unwrap()
            .samples_1h(),
        6
    );

    // `removed` comes back: as a new backend, with nothing of its old state.
    let again = format!("{new}{}", backend("removed", "local", "other", ""));
    let summary = live.reload_str("c.toml", &again).unwrap();
    assert_eq!(summary.backends_added, ["removed"]);
    let router = live.current();
    let back = router.fleet().backend_by_name("removed").unwrap();
    assert_eq!(back.live().status(), BackendStatus::Healthy);
    // Spend still there after a second reload.
    assert!((budget(&router).ledger().snapshot().settled_usd - 0.002).abs() < 1e-12);
}

#[test]
fn a_bad_file_keeps_the_running_config_and_says_where_and_how_to_fix_it() {
    let dir = std::env::temp_dir().join(format!("nexus-reload-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nexus.toml");
    std::fs::write(&path, backend("a", "local", "m1", "")).unwrap();
    let live = LiveRouter::from_file(Router::builder(), &path).unwrap();

    // A typo at line 5.
    std::fs::write(&path, backend("a", "local", "m2", "priorty = 2")).unwrap();
    let error = live.reload().expect_err("the typo is refused");
    assert_eq!(error.position, Some((5, 1)), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{}:5:1:", path.display())),
        "{text}"
    );
    assert!(text.contains("priority"), "the fix is suggested: {text}");
    // Still the old config.
    assert!(live.route_owned(&Request::new("m1")).backend().is_some());
    assert!(live.route_owned(&Request::new("m2")).backend().is_none());

    // A config that parses but cannot be built (a duplicate id) is refused too.
    std::fs::write(
        &path,
        format!(
            "{}{}",
            backend("a", "local", "m2", ""),
            backend("a", "local", "m2", "")
        ),
    )
    .unwrap();
    let error = live.reload().expect_err("the duplicate is refused");
    assert!(error.position.is_some(), "{error}");
    assert!(live.route_owned(&Request::new("m1")).backend().is_some());

    // A missing file too.
    std::fs::remove_file(&path).unwrap();
    assert!(live.reload().is_err());
    assert!(live.route_owned(&Request::new("m1")).backend().is_some());

    // Fixed: it loads.
    std::fs::write(&path, backend("a", "local", "m2", "priority = 2")).unwrap();
    let summary = live.reload().expect("the fixed file loads");
    assert_eq!(summary.generation, 1, "failed reloads do not count");
    assert!(live.route_owned(&Request::new("m2")).backend().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_spend_store_and_its_spend_carry_over_and_moving_it_is_refused() {
    let dir = std::env::temp_dir().join(format!("nexus-reload-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nexus.toml");
    let config = |store: &str, limit: f64| {
        format!(
            "{}[routing.budget]\nmonthly_limit_usd = {limit}\nstore = \"{store}\"\n",
            backend("cloud", "cloud", "m", "")
        )
    };
    std::fs::write(&path, config("spend.redb", 100.0)).unwrap();
    let live = LiveRouter::from_file(Router::builder(), &path).unwrap();
    let mut decision =
        live.route_owned(&Request::new("m").input_tokens(1000).max_output_tokens(1000));
    decision
        .take_guard()
        .unwrap()
        .finish(Outcome::success(Duration::from_millis(5)).usage(1000, 1000));
    drop(decision);

    // A new limit with the same store: the spend stays, the store stays open.
    std::fs::write(&path, config("spend.redb", 50.0)).unwrap();
    live.reload().expect("same store, new limit");
    let router = live.current();
    assert_eq!(budget(&router).settings().monthly_limit_usd, Some(50.0));
    assert!((budget(&router).ledger().snapshot().settled_usd - 0.002).abs() < 1e-12);
    assert!(budget(&router).journal().is_some(), "still persisting");

    // Another store file: refused at its line, with the fix.
    std::fs::write(&path, config("elsewhere.redb", 50.0)).unwrap();
    let error = live.reload().expect_err("moving the store is refused");
    assert!(
        error.message.contains("cannot change while serving"),
        "{error}"
    );
    assert!(error.position.is_some(), "{error}");
    assert!(!dir.join("elsewhere.redb").exists(), "nothing created");
    drop(router);
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_settings_that_cannot_change_live_are_reported() {
    let base = backend("a", "local", "m", "");
    let live = LiveRouter::new(
        Router::builder(),
        Router::from_toml("a.toml", &base).unwrap(),
        None,
    );
    let summary = live
        .reload_str(
            "a.toml",
            &format!("{base}[server]\nlisten = \"127.0.0.1:9999\"\n[health]\ninterval_secs = 5\n"),
        )
        .unwrap();
    assert_eq!(
        summary.restart_required,
        [
            "[server] listen: running \"127.0.0.1:8800\", file \"127.0.0.1:9999\"",
            "[health] interval_secs: running 10, file 5",
        ]
    );
    // Still the settings first loaded.
    assert_eq!(live.server().listen, "127.0.0.1:8800");
    assert_eq!(live.current().server().listen, "127.0.0.1:9999");
}
