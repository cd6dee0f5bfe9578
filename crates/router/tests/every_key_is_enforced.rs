//! Whatever a config sets is enforced, or refused at its line (docs/configuration.md).
//!
//! The walk below takes every key of the policy and budget schemas, read from the
//! schemas themselves, and needs a case for each: two configs that differ only in that
//! key, and a request whose decision differs between them. A key added to a schema
//! without a case fails the walk, so a key that is parsed and ignored cannot come back.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{backend, fleet, local};
use nexus_core::{Outcome, Request};
use nexus_router::budget::{BudgetReconciler, BudgetSettings};
use nexus_router::{Router, POLICY_KEY_STAGES};
use serde::de::DeserializeOwned;

/// A local backend and a dearer, higher-priority cloud one serving `m`; a backend that
/// is down serving `big`, whose fallback `small` is served locally.
fn test_fleet() -> String {
    fleet([
        local("local", 11434)
            .priority(2)
            .tier(2)
            .serves("m")
            .serves("small"),
        backend("cloud", "https://api.example.com/v1")
            .zone("cloud")
            .priority(3)
            .tier(4)
            .serves_priced("m", 10.0, Some(10.0)),
        local("down", 8000).status("unhealthy").serves("big"),
    ]) + "\n[routing.fallbacks]\n\"big\" = [\"small\"]\n"
}

/// The fields of a `deny_unknown_fields` schema, as its unknown-field error lists them.
fn schema_fields<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let err = toml::from_str::<T>("no_such_key_in_any_schema = 0").unwrap_err();
    let message = err.message();
    let (_, expected) = message.split_once("expected one of").unwrap();
    let mut fields: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    fields.sort();
    fields
}

/// What a decision is, for comparing two: kind, backend, model.
fn outcome(router: &Router, request: &Request<'_>, spent: Option<f64>) -> String {
    if let Some(spent) = spent {
        let budget = router.pipeline().stage_of::<BudgetReconciler>().unwrap();
        budget.ledger().set_month_to_date(spent);
    }
    let decision = router.route(request);
    format!(
        "{} {} {}",
        decision.kind().as_str(),
        decision.backend().map_or("-", |b| b.name()),
        decision.model().unwrap_or("-"),
    )
}

/// One key: two settings that differ only in it, and what each decides.
struct Case {
    key: &'static str,
    set: &'static str,
    other: &'static str,
    model: &'static str,
    spent: Option<f64>,
    expect: [&'static str; 2],
}

const POLICY_CASES: &[Case] = &[
    Case {
        key: "model_pattern",
        set: "model_pattern = \"m\"\nprivacy = \"restricted\"",
        other: "model_pattern = \"n\"\nprivacy = \"restricted\"",
        model: "m",
        spent: None,
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "privacy",
        set: "model_pattern = \"m\"\nprivacy = \"restricted\"",
        other: "model_pattern = \"m\"\nprivacy = \"unrestricted\"",
        model: "m",
        spent: None,
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "min_tier",
        set: "model_pattern = \"m\"\nmin_tier = 5",
        other: "model_pattern = \"m\"",
        model: "m",
        spent: None,
        expect: ["reject - -", "route cloud m"],
    },
    Case {
        key: "max_cost_per_request",
        // 1000 tokens in, 500 out at $10 per million: $0.015.
        set: "model_pattern = \"m\"\nmax_cost_per_request = 0.01",
        other: "model_pattern = \"m\"",
        model: "m",
        spent: None,
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "fallback_allowed",
        set: "model_pattern = \"big\"\nfallback_allowed = false",
        other: "model_pattern = \"big\"\nfallback_allowed = true",
        model: "big",
        spent: None,
        expect: ["reject - -", "route local small"],
    },
];

/// `{store}` stands for a store file that already holds $100 of this month's spend.
const BUDGET_CASES: &[Case] = &[
    Case {
        key: "monthly_limit_usd",
        set: "monthly_limit_usd = 50.0",
        other: "monthly_limit_usd = 1000.0",
        model: "m",
        spent: Some(50.0),
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "soft_limit_percent",
        // At the soft limit the cloud's score is halved: 3 x 0.5 < 2.
        set: "monthly_limit_usd = 100.0\nsoft_limit_percent = 0.4",
        other: "monthly_limit_usd = 100.0\nsoft_limit_percent = 0.75",
        model: "m",
        spent: Some(50.0),
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "hard_limit_action",
        set: "monthly_limit_usd = 100.0\nhard_limit_action = \"block_cloud\"",
        other: "monthly_limit_usd = 100.0\nhard_limit_action = \"warn\"",
        model: "m",
        spent: Some(100.0),
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "soft_limit_cloud_weight",
        set: "monthly_limit_usd = 100.0\nsoft_limit_cloud_weight = 0.5",
        other: "monthly_limit_usd = 100.0\nsoft_limit_cloud_weight = 1.0",
        model: "m",
        spent: Some(80.0),
        expect: ["route local m", "route cloud m"],
    },
    Case {
        key: "store",
        set: "monthly_limit_usd = 100.0\nstore = \"{store}\"",
        other: "monthly_limit_usd = 100.0",
        model: "m",
        spent: None,
        expect: ["route local m", "route cloud m"],
    },
    // A shared budget whose Redis never answers (nothing listens on port 1): the month's
    // spend is unknown, so nothing paid is routed.
    #[cfg(feature = "redis")]
    Case {
        key: "redis",
        set: "monthly_limit_usd = 100.0\n[routing.budget.redis]\nurl = \"redis://127.0.0.1:1\"",
        other: "monthly_limit_usd = 100.0",
        model: "m",
        spent: None,
        expect: ["route local m", "route cloud m"],
    },
];

/// Keys with no decision of their own to change, and why. Each must still be a key of
/// the schema, and each says where its effect is tested instead.
const NOT_DECISION_KEYS: &[(&str, &str)] = &[
    #[cfg(not(feature = "redis"))]
    (
        "redis",
        "[routing.budget.redis] is refused at load without nexus-router's redis feature; \
         with it, the case above runs, and crates/cli/tests/shared_budget_*.rs test it on \
         a real Redis",
    ),
    (
        "reconciliation_interval_secs",
        "how often the store and spend sources are folded into the ledger: a decision sees \
     it only when another writer changes the store, which the built-in store (one \
     process per file) does not allow; the interval is tested in \
     crates/budget/tests/reconciliation.rs",
    ),
];

fn policy_config(policy: &str) -> String {
    format!(
        "{fleet}\n[[routing.policies]]\n{policy}\n",
        fleet = test_fleet()
    )
}

fn budget_config(budget: &str, store: &Path) -> String {
    let budget = budget.replace("{store}", &store.display().to_string());
    format!(
        "{fleet}\n[routing.budget]\n{budget}\n",
        fleet = test_fleet()
    )
}

/// A store file holding $100 of this month's spend, written the way a router does.
fn store_with_100_usd(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("spend.redb");
    let config = budget_config("monthly_limit_usd = 1000.0\nstore = \"{store}\"", &store);
    let router = Router::from_toml("seed.toml", &config).unwrap();
    {
        let mut decision = router.route(&Request::new("m").input_tokens(1).max_output_tokens(0));
        assert_eq!(decision.backend().unwrap().name(), "cloud");
        // 10 million tokens at $10 per million.
        decision
            .take_guard()
            .unwrap()
            .finish(Outcome::success(Duration::from_millis(5)).usage(0, 10_000_000));
    }
    // Dropping the router writes what its journal queued.
    drop(router);
    store
}

fn walk(cases: &[Case], schema: Vec<String>, config: impl Fn(&str) -> String) {
    let mut covered: Vec<String> = cases
        .iter()
        .map(|c| c.key.to_owned())
        .chain(NOT_DECISION_KEYS.iter().map(|(k, _)| (*k).to_owned()))
        .filter(|k| schema.contains(k))
        .collect();
    covered.sort();
    assert_eq!(
        covered, schema,
        "every key of the schema needs a case that proves it changes a decision"
    );
    for case in cases {
        let decide = |settings: &str| {
            let text = config(settings);
            let router = Router::from_toml("walk.toml", &text)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", case.key));
            assert!(router.warnings().is_empty(), "{:?}", router.warnings());
            outcome(
                &router,
                &Request::new(case.model).input_tokens(1000),
                case.spent,
            )
        };
        let got = [decide(case.set), decide(case.other)];
        assert_eq!(got, case.expect, "key {}", case.key);
        assert_ne!(got[0], got[1], "key {} changes no decision", case.key);
    }
}

#[test]
fn every_policy_key_changes_a_decision() {
    walk(
        POLICY_CASES,
        schema_fields::<nexus_core::policy::TrafficPolicy>(),
        policy_config,
    );
    let mut listed: Vec<&str> = POLICY_KEY_STAGES.iter().map(|(k, _)| *k).collect();
    listed.sort_unstable();
    assert_eq!(listed, schema_fields::<nexus_core::policy::TrafficPolicy>());
}

#[test]
fn every_budget_key_changes_a_decision() {
    let dir = std::env::temp_dir().join(format!("nexus-every-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = store_with_100_usd(&dir);
    walk(BUDGET_CASES, schema_fields::<BudgetSettings>(), |budget| {
        budget_config(budget, &store)
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every stage of the default pipeline but `left_out`.
fn pipeline_without(left_out: &str) -> String {
    let kinds: Vec<String> = nexus_router::DEFAULT_PIPELINE
        .iter()
        .filter(|k| **k != left_out)
        .map(|k| format!("\"{k}\""))
        .collect();
    format!("[routing]\npipeline = [{}]\n", kinds.join(", "))
}

#[test]
fn a_policy_key_whose_stage_is_left_out_is_an_error_at_that_key() {
    for (key, stage) in POLICY_KEY_STAGES {
        let Some(stage) = stage else { continue };
        let case = POLICY_CASES.iter().find(|c| c.key == key).unwrap();
        let text = format!("{}{}", pipeline_without(stage), policy_config(case.set));
        let err = Router::from_toml("left-out.toml", &text).unwrap_err();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1;
        assert_eq!(err.position.map(|p| p.0), Some(line), "{key}: {err}");
        assert!(
            err.message.contains(&format!(
                "{key} = {} needs the '{stage}' stage, which the pipeline leaves out",
                case.set.split_once(&format!("{key} = ")).unwrap().1
            )),
            "{err}"
        );
        assert_eq!(
            err.help.as_deref(),
            Some(format!("add \"{stage}\" to [routing] pipeline, or remove {key}").as_str())
        );
    }
}

#[test]
fn the_issue_reproductions_are_refused_or_enforced() {
    // A restricted policy in a pipeline without privacy routed to the cloud.
    let text = format!(
        "{fleet}\n[routing]\npipeline = [\"analyzer\", \"tier\", \"scheduler\"]\n\n[[routing.policies]]\nmodel_pattern = \"m\"\nprivacy = \"restricted\"\n", fleet = test_fleet());
    let err = Router::from_toml("p.toml", &text).unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("privacy ="))
        .unwrap()
        + 1;
    assert!(
        err.to_string().starts_with(&format!(
            "p.toml:{line}:1: policy 0 ('m'): privacy = \"restricted\" needs the 'privacy' stage"
        )),
        "{err}"
    );

    // A $0.35 request under a $0.05 cap, with no [routing.budget]: the cap holds.
    let router = Router::from_toml(
        "c.toml",
        &policy_config("model_pattern = \"m\"\nmax_cost_per_request = 0.05"),
    )
    .unwrap();
    let request = Request::new("m")
        .input_tokens(20_000)
        .max_output_tokens(15_000);
    let decision = router.route(&request);
    assert_eq!(decision.backend().unwrap().name(), "local");
    let rejections = decision.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].reconciler, "budget");
}

#[test]
fn a_stage_table_whose_stage_is_left_out_is_an_error_at_the_table() {
    let text = format!(
        "{fleet}\n[routing]\npipeline = [\"analyzer\", \"scheduler\"]\n\n[routing.quality]\nmin_samples = 5\n", fleet = test_fleet());
    let err = Router::from_toml("t.toml", &text).unwrap_err();
    let line = text.lines().position(|l| l == "[routing.quality]").unwrap() + 1;
    assert_eq!(err.position.map(|p| p.0), Some(line), "{err}");
    assert!(
        err.message.starts_with(
            "[routing.quality] configures the 'quality' stage, which the pipeline leaves out"
        ),
        "{err}"
    );
    assert_eq!(
        err.help.as_deref(),
        Some("add \"quality\" to [routing] pipeline, or remove the table")
    );
}

#[test]
fn the_default_pipeline_runs_the_budget_stage_without_a_budget_table() {
    let router = Router::from_toml("d.toml", &test_fleet()).unwrap();
    let budget = router.pipeline().stage_of::<BudgetReconciler>().unwrap();
    assert_eq!(budget.settings().monthly_limit_usd, None);
    // No monthly limit: any spend is Normal, and the cloud stays admitted.
    budget.ledger().set_month_to_date(1e6);
    let decision = router.route(&Request::new("m").input_tokens(1000));
    assert_eq!(
        decision.budget_status(),
        nexus_core::stage::BudgetStatus::Normal
    );
    assert_eq!(decision.backend().unwrap().name(), "cloud");
}
