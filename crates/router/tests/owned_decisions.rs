//! Owned decisions (`Router::route_owned`) outlive the borrow of the router: they move
//! into other threads, survive the router itself, and settle what they reserved there.
//! And a request can leave backends out (`Request::excluding`), as a gateway does when
//! it decides again after a failed attempt.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cloud, fleet, local};
use nexus_core::{
    pipeline::{OwnedDecision, OwnedRouteGuard},
    Outcome, Request, RoutingDecision,
};
use nexus_router::budget::BudgetReconciler;
use nexus_router::Router;

fn test_fleet() -> String {
    fleet([
        local("local", 11434).priority(4).serves("m"),
        cloud("cloud").serves_priced("m", 1000.0, Some(1000.0)),
    ]) + "\n[routing.budget]\nmonthly_limit_usd = 10.0\n"
}

fn send_and_static<T: Send + 'static>() {}

#[test]
fn owned_decisions_and_guards_are_send_and_static() {
    send_and_static::<OwnedDecision>();
    send_and_static::<OwnedRouteGuard>();
}

#[test]
fn an_owned_guard_finishes_in_another_thread_after_the_router_is_gone() {
    let router = Router::from_toml("fleet.toml", &test_fleet()).unwrap();
    let ledger = router
        .pipeline()
        .stage_of::<BudgetReconciler>()
        .unwrap()
        .ledger()
        .clone();
    let fleet = router.fleet().clone();
    // Only the priced cloud backend is left: its cost is reserved.
    let local = [fleet.backend_by_name("local").unwrap().id()];
    let request = Request::new("m")
        .input_tokens(1000)
        .max_output_tokens(1000)
        .excluding(&local);
    let mut decision = router.route_owned(&request);
    assert_eq!(decision.backend().unwrap().name(), "cloud");
    let guard = decision.take_guard().unwrap();
    assert_eq!(guard.model(), "m");
    drop(decision);
    drop(router);
    assert!(
        ledger.snapshot().reserved_usd > 1.99,
        "{:?}",
        ledger.snapshot()
    );
    assert_eq!(
        fleet.backend_by_name("cloud").unwrap().live().in_flight(),
        1
    );

    std::thread::spawn(move || {
        guard.finish(Outcome::success(Duration::from_millis(30)).usage(500, 500));
    })
    .join()
    .unwrap();
    let snapshot = ledger.snapshot();
    assert_eq!(snapshot.reserved_usd, 0.0);
    assert!((snapshot.settled_usd - 1.0).abs() < 1e-9, "{snapshot:?}");
    assert_eq!(
        fleet.backend_by_name("cloud").unwrap().live().in_flight(),
        0
    );
}

#[test]
fn a_decision_moves_into_a_thread_and_drops_there() {
    let router = Router::from_toml("fleet.toml", &test_fleet()).unwrap();
    let decision = router.route_owned(&Request::new("m"));
    let fleet = router.fleet().clone();
    assert_eq!(
        fleet.backend_by_name("local").unwrap().live().in_flight(),
        1
    );
    // Dropped unfinished in another thread: the route counts as failed and its slot
    // is freed.
    std::thread::spawn(move || drop(decision)).join().unwrap();
    assert_eq!(
        fleet.backend_by_name("local").unwrap().live().in_flight(),
        0
    );
}

#[test]
fn excluded_backends_are_left_out_and_say_why() {
    let router = Router::from_toml("fleet.toml", &test_fleet()).unwrap();
    let fleet = router.fleet();
    let local = fleet.backend_by_name("local").unwrap().id();
    let cloud = fleet.backend_by_name("cloud").unwrap().id();

    let mut decision = router.route(&Request::new("m").excluding(&[local]));
    assert_eq!(decision.backend().unwrap().name(), "cloud");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(&*rejections[0].backend, "local");
    assert_eq!(rejections[0].reconciler, "pipeline");
    assert!(
        rejections[0].reason.contains("earlier attempt"),
        "{rejections:?}"
    );
    decision.take_guard().unwrap().cancel();

    let both = [local, cloud];
    let decision = router.route(&Request::new("m").excluding(&both));
    let RoutingDecision::Reject { rejections, .. } = decision.kind() else {
        panic!("expected a reject, got {:?}", decision.kind());
    };
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(rejections.iter().all(|r| r.reconciler == "pipeline"));
}
