//! The budget through the facade and through `nexus route --spent`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use nexus_core::Request;
use nexus_router::{DecisionReport, Router};

const FLEET: &str = r#"
[[backends]]
id = "local"
url = "http://127.0.0.1:11434"
zone = "local"
priority = 4
  [[backends.models]]
  name = "llama3:70b"

[[backends]]
id = "cloud"
url = "https://api.example.com"
zone = "cloud"
priority = 5
  [[backends.models]]
  name = "llama3:70b"
  input_usd_per_mtok = 0.9
  output_usd_per_mtok = 0.9

[[backends]]
id = "cloud-only"
url = "https://api.example.com"
zone = "cloud"
  [[backends.models]]
  name = "gpt-4o"
  input_usd_per_mtok = 2.5
  output_usd_per_mtok = 10.0

[routing.budget]
monthly_limit_usd = 100.0
soft_limit_percent = 0.75
"#;

fn decide(model: &str, spent: f64) -> DecisionReport {
    let router = Router::from_toml("budget.toml", FLEET).unwrap();
    let budget = router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()
        .unwrap();
    budget.ledger().set_month_to_date(spent);
    let decision = router.route(&Request::new(model).input_tokens(1000));
    DecisionReport::new(model, &decision)
}

#[test]
fn below_the_soft_limit_is_normal_and_keeps_every_backend() {
    let report = decide("llama3:70b", 10.0);
    assert_eq!(report.budget_status, "normal");
    assert!(report.rejections.is_empty());
    assert_eq!(
        report.backend.as_deref(),
        Some("cloud"),
        "priority 2 beats 1"
    );
}

#[test]
fn above_the_soft_limit_a_local_backend_beats_a_slightly_higher_priority_cloud_one() {
    let report = decide("llama3:70b", 80.0);
    assert_eq!(report.budget_status, "soft_limit");
    assert_eq!(report.backend.as_deref(), Some("local"));
    assert!(
        report.rejections.is_empty(),
        "the cloud is only weighted down"
    );
}

#[test]
fn at_the_limit_cloud_backends_are_excluded_with_a_budget_reason() {
    let report = decide("llama3:70b", 100.0);
    assert_eq!(report.budget_status, "hard_limit");
    assert_eq!(report.backend.as_deref(), Some("local"));
    assert_eq!(report.rejections.len(), 1);
    assert_eq!(report.rejections[0].backend, "cloud");
    assert_eq!(report.rejections[0].reconciler, "budget");
    assert!(report.rejections[0]
        .reason
        .starts_with("monthly budget reached: spend $100.00 of $100.00"));
}

#[test]
fn at_the_limit_with_no_local_backend_the_request_is_rejected_with_guidance() {
    let report = decide("gpt-4o", 100.0);
    assert_eq!(report.decision, "reject");
    let fix = report.suggested_fix.unwrap();
    assert_eq!(fix.reconciler, "budget");
    assert_eq!(
        fix.suggested_action,
        "raise monthly_limit_usd in [routing.budget], or add a local backend for 'gpt-4o'"
    );
}

#[test]
fn the_cost_estimate_and_token_tier_are_reported() {
    let report = decide("gpt-4o", 0.0);
    // 1000 in x $2.5 + 500 out x $10 per million.
    assert_eq!(report.cost_estimate.cost_usd, Some(0.0075));
    assert_eq!(report.cost_estimate.token_tier, "medium");
}

#[test]
fn a_soft_limit_given_as_a_percentage_is_a_config_error_with_its_line() {
    let config = FLEET.replace("soft_limit_percent = 0.75", "soft_limit_percent = 75");
    let err = Router::from_toml("budget.toml", &config).unwrap_err();
    // At the key, not at the table's header.
    let line = config
        .lines()
        .position(|l| l.starts_with("soft_limit_percent"))
        .unwrap()
        + 1;
    assert_eq!(err.position, Some((line, 1)));
    assert!(
        err.message
            .contains("soft_limit_percent is a fraction of the limit in (0, 1], got 75"),
        "{err}"
    );
    assert_eq!(err.help.as_deref(), Some("did you mean 0.75?"));
}

#[test]
fn unknown_budget_keys_suggest_the_right_one() {
    let config = FLEET.replace("monthly_limit_usd", "monthly_limit");
    let err = Router::from_toml("budget.toml", &config).unwrap_err();
    assert!(
        err.message.contains("unknown field `monthly_limit`"),
        "{err}"
    );
    assert_eq!(
        err.help.as_deref(),
        Some("did you mean `monthly_limit_usd`?")
    );
}

#[test]
fn nexus_route_spent_sets_the_month_to_date() {
    let run = |spent: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args([
                "route",
                "--model",
                "gpt-4o-mini",
                "--input-tokens",
                "1000",
                "--spent",
                spent,
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let normal = run("0");
    assert_eq!(normal["budget_status"], "normal");
    assert_eq!(normal["decision"], "route");
    let soft = run("80");
    assert_eq!(soft["budget_status"], "soft_limit");
    let hard = run("100");
    assert_eq!(hard["budget_status"], "hard_limit");
    assert_eq!(hard["decision"], "reject");
    assert_eq!(hard["rejections"][0]["reconciler"], "budget");
}

#[test]
fn a_config_store_keeps_spend_across_routers() {
    let dir = std::env::temp_dir().join(format!("nexus-budget-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("spend.redb");
    let config = FLEET.replace(
        "[routing.budget]\n",
        &format!("[routing.budget]\nstore = \"{}\"\n", store.display()),
    );
    {
        let router = Router::from_toml("budget.toml", &config).unwrap();
        let mut decision = router.route(
            &Request::new("gpt-4o")
                .input_tokens(1000)
                .max_output_tokens(0),
        );
        decision.take_guard().unwrap().finish(
            nexus_core::Outcome::success(std::time::Duration::from_millis(5)).usage(1000, 0),
        );
        // Dropping the router stops the journal after writing what it queued.
    }
    let router = Router::from_toml("budget.toml", &config).unwrap();
    let budget = router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()
        .unwrap();
    assert_eq!(budget.ledger().snapshot().settled_usd, 0.0025);
    drop(router);
    std::fs::remove_dir_all(&dir).unwrap();
}
