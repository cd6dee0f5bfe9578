//! The basic routing scenarios, through the facade: route, queue, reject, fallbacks.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cloud, fleet, local};
use nexus_core::{
    clock::{Clock, SystemClock},
    fleet::{BackendId, BackendStatus},
    Outcome, Request, RoutingDecision,
};
use nexus_router::{DecisionReport, Router};

fn three_healthy() -> String {
    fleet([
        local("local-a", 11434).priority(2).serves("llama3:70b"),
        local("local-b", 11435).serves("llama3:70b"),
        cloud("cloud").serves_priced("llama3:70b", 1.0, Some(2.0)),
    ])
}

#[test]
fn three_healthy_backends_route_with_backend_model_reason_and_cost() {
    let router = Router::from_toml("three.toml", &three_healthy()).unwrap();
    let decision = router.route(&Request::new("llama3:70b").input_tokens(1000));
    let RoutingDecision::Route {
        backend,
        reason,
        cost_estimate,
        ..
    } = decision.kind()
    else {
        panic!("expected a route, got {:?}", decision.kind());
    };
    assert_eq!(router.fleet().backend(*backend).name(), "local-a");
    assert_eq!(decision.model(), Some("llama3:70b"));
    assert_eq!(reason.candidates, 3);
    assert_eq!(reason.to_string(), "highest score 0.0200 of 3 candidates");
    assert_eq!(cost_estimate.input_tokens, 1000);
    assert_eq!(cost_estimate.estimated_output_tokens, 500);
    assert_eq!(cost_estimate.cost_usd, 0.0);
    assert!(decision.rejections().is_empty());
}

#[test]
fn the_cost_estimate_uses_the_chosen_backends_prices() {
    let router = Router::from_toml("three.toml", &three_healthy()).unwrap();
    for id in ["local-a", "local-b"] {
        let backend = router.fleet().backend_by_name(id).unwrap().id();
        router.fleet().set_status(backend, BackendStatus::Unhealthy);
    }
    let decision = router.route(
        &Request::new("llama3:70b")
            .input_tokens(1000)
            .max_output_tokens(100),
    );
    let report = DecisionReport::new("llama3:70b", &decision);
    assert_eq!(report.backend.as_deref(), Some("cloud"));
    // 1000 x $1 + 100 x $2 per million tokens.
    assert!((report.cost_estimate.cost_usd.unwrap() - 0.0012).abs() < 1e-12);
    assert_eq!(report.rejections.len(), 2);
    assert!(report
        .rejections
        .iter()
        .all(|r| r.reconciler == "analyzer" && r.reason.contains("unhealthy")));
}

fn saturating() -> String {
    fleet([
        local("gpu-1", 1).max_concurrency(1).serves("llama3:70b"),
        local("gpu-2", 2).max_concurrency(2).serves("llama3:70b"),
        local("small", 3).serves("mistral:7b"),
    ]) + "\n[routing.fallbacks]\n\"llama3:70b\" = [\"mistral:7b\"]\n"
}

#[test]
fn all_at_capacity_queues_with_a_wait_estimate_and_a_fallback() {
    let router = Router::from_toml("saturating.toml", &saturating()).unwrap();
    for id in ["gpu-1", "gpu-2"] {
        let live = router.fleet().backend_by_name(id).unwrap().live();
        live.record_latency(Duration::from_millis(300), SystemClock.now_secs());
    }
    let mut guards = Vec::new();
    for _ in 0..3 {
        let mut decision = router.route(&Request::new("llama3:70b"));
        guards.push(decision.take_guard().expect("there is room for three"));
    }
    let decision = router.route(&Request::new("llama3:70b"));
    let report = DecisionReport::new("llama3:70b", &decision);
    assert_eq!(report.decision, "queue", "{report:#?}");
    assert_eq!(report.model.as_deref(), Some("llama3:70b"));
    assert_eq!(
        report.estimated_wait_ms,
        Some(150),
        "gpu-2 frees one of 2 slots in 300/2 ms"
    );
    assert_eq!(report.fallback_backend.as_deref(), Some("small"));
    assert_eq!(report.fallback_model.as_deref(), Some("mistral:7b"));
    assert!(
        report
            .reason
            .contains("all 2 candidates are at max_concurrency"),
        "{}",
        report.reason
    );
    assert_eq!(
        report.candidates.len(),
        2,
        "the queued model's candidates: {report:#?}"
    );
    drop(decision);

    for guard in guards {
        guard.finish(Outcome::success(Duration::from_millis(300)));
    }
    assert_eq!(
        router.route(&Request::new("llama3:70b")).kind().as_str(),
        "route"
    );
}

#[test]
fn no_backend_serving_the_model_rejects_with_reasons() {
    let router = Router::from_toml("three.toml", &three_healthy()).unwrap();
    let decision = router.route(&Request::new("llama3:7b"));
    let RoutingDecision::Reject { reason, fix, .. } = decision.kind() else {
        panic!("expected a reject");
    };
    assert_eq!(
        reason,
        "no backend serves model 'llama3:7b' and no alias names it"
    );
    let fix = fix.as_ref().unwrap();
    assert!(
        fix.suggested_action.contains("did you mean 'llama3:70b'?"),
        "{fix:?}"
    );
}

#[test]
fn a_reject_lists_every_backend_and_leads_with_the_fix_that_admits_most() {
    let router = Router::from_toml("three.toml", &three_healthy()).unwrap();
    for backend in router.fleet().backends() {
        router
            .fleet()
            .set_status(backend.id(), BackendStatus::Unhealthy);
    }
    let decision = router.route(&Request::new("llama3:70b"));
    let report = DecisionReport::new("llama3:70b", &decision);
    assert_eq!(report.decision, "reject");
    assert!(!report.fallback_used);
    assert_eq!(report.rejections.len(), 3);
    assert_eq!(
        report.reason,
        "all 3 backends serving 'llama3:70b' were excluded"
    );
    let fix = report.suggested_fix.unwrap();
    assert_eq!(fix.reconciler, "analyzer");
    assert_eq!(fix.admits, ["local-a", "local-b", "cloud"]);
}

fn with_fallbacks() -> String {
    fleet([
        local("big", 1).status("unhealthy").serves("llama3:70b"),
        local("medium", 2).status("unhealthy").serves("qwen2:72b"),
        local("small", 3).serves("mistral:7b"),
    ]) + r#"
[routing.aliases]
"gpt-4" = "llama3:70b"

[routing.fallbacks]
"llama3:70b" = ["qwen2:72b", "mistral:7b"]
"#
}

#[test]
fn fallbacks_are_tried_in_order_when_the_primary_has_no_viable_backend() {
    let router = Router::from_toml("fallbacks.toml", &with_fallbacks()).unwrap();
    let decision = router.route(&Request::new("gpt-4"));
    let report = DecisionReport::new("gpt-4", &decision);
    assert_eq!(report.decision, "route");
    assert_eq!(report.model.as_deref(), Some("mistral:7b"));
    assert_eq!(report.backend.as_deref(), Some("small"));
    assert!(report.fallback_used);
    let excluded: Vec<(&str, &str)> = report
        .rejections
        .iter()
        .map(|r| (r.backend.as_str(), r.model.as_str()))
        .collect();
    assert_eq!(excluded, [("big", "llama3:70b"), ("medium", "qwen2:72b")]);

    // Once the primary is back, it serves again.
    router
        .fleet()
        .set_status(BackendId::new(0), BackendStatus::Healthy);
    let decision = router.route(&Request::new("gpt-4"));
    assert_eq!(decision.model(), Some("llama3:70b"));
    assert!(!decision.fallback_used());
}

#[test]
fn a_reject_after_trying_every_fallback_uses_none() {
    let router = Router::from_toml("fallbacks.toml", &with_fallbacks()).unwrap();
    let small = router.fleet().backend_by_name("small").unwrap().id();
    router.fleet().set_status(small, BackendStatus::Unhealthy);
    let decision = router.route(&Request::new("gpt-4"));
    let report = DecisionReport::new("gpt-4", &decision);
    assert_eq!(report.decision, "reject");
    assert!(!report.fallback_used, "nothing serves a reject");
    assert_eq!(report.model, None);
    assert_eq!(
        report.reason,
        "the only backend serving 'llama3:70b' was excluded, and so were those of its 2 fallbacks"
    );
    assert_eq!(report.rejections.len(), 3, "one per model tried");
}

#[test]
fn a_policy_that_forbids_fallbacks_is_obeyed() {
    let config = format!(
        "{with_fallbacks}\n[[routing.policies]]\nmodel_pattern = \"gpt-4\"\nfallback_allowed = false\n", with_fallbacks = with_fallbacks());
    let router = Router::from_toml("fallbacks.toml", &config).unwrap();
    assert_eq!(
        router.route(&Request::new("gpt-4")).kind().as_str(),
        "reject"
    );
    // Asked for by its own name, the model has no such policy.
    assert_eq!(
        router.route(&Request::new("llama3:70b")).kind().as_str(),
        "route"
    );
}

#[test]
fn finishing_a_guard_updates_in_flight_and_latency() {
    let router = Router::from_toml("three.toml", &three_healthy()).unwrap();
    let mut decision = router.route(&Request::new("llama3:70b"));
    let guard = decision.take_guard().unwrap();
    let live = router.fleet().backend(guard.ticket().backend).live();
    assert_eq!(live.in_flight(), 1);
    guard.finish(
        Outcome::success(Duration::from_millis(250)).time_to_first_token(Duration::from_millis(40)),
    );
    assert_eq!(live.in_flight(), 0);
    assert_eq!(live.latency_ewma_ms(SystemClock.now_secs()), Some(250.0));

    // Dropping a guard unfinished releases its slot too.
    let mut decision = router.route(&Request::new("llama3:70b"));
    let guard = decision.take_guard().unwrap();
    let live = router.fleet().backend(guard.ticket().backend).live();
    drop(guard);
    assert_eq!(live.in_flight(), 0);
}
