//! Amounts the budget cannot enforce to the nano-dollar are refused where they are
//! written: a limit or a price in the config fails at its key, `--spent` exits 2.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use nexus_router::{ConfigError, Router};

const BACKENDS: &str = r#"[[backends]]
id = "cloud"
url = "https://api.example.com"
zone = "cloud"
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 2.5
  output_usd_per_mtok = 10.0
"#;

fn load(text: &str) -> Result<Router, ConfigError> {
    Router::from_toml("nexus.toml", text)
}

fn with_limit(limit: &str) -> String {
    format!("{BACKENDS}\n[routing.budget]\nmonthly_limit_usd = {limit}\n")
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    1 + text.lines().position(|l| l.contains(needle)).unwrap()
}

#[test]
fn limits_the_ledger_cannot_enforce_fail_at_their_key() {
    for (limit, shown, why) in [
        ("2e10", "20000000000", "a larger limit cannot be counted"),
        ("1e300", "1e300", "a larger limit cannot be counted"),
        ("1e-12", "1e-12", "a smaller limit rounds to nothing"),
    ] {
        let text = with_limit(limit);
        let err = load(&text).unwrap_err();
        assert_eq!(
            err.position,
            Some((line_of(&text, "monthly_limit_usd"), 1)),
            "{err}"
        );
        assert_eq!(
            err.message,
            format!(
                "[routing.budget]: monthly_limit_usd must be between $0.000001 and $1000000000, the limits the budget enforces exactly, got {shown}"
            ),
            "{err}"
        );
        assert!(
            err.help.as_deref().is_some_and(|h| h.starts_with(why)),
            "{err}"
        );
    }
    for limit in ["0.000001", "1000000000", "1000.0"] {
        load(&with_limit(limit)).unwrap();
    }
}

#[test]
fn prices_that_could_overflow_a_ledger_fail_at_their_key() {
    let text = BACKENDS.replace("output_usd_per_mtok = 10.0", "output_usd_per_mtok = 1e12");
    let err = load(&text).unwrap_err();
    assert_eq!(
        err.position,
        Some((line_of(&text, "output_usd_per_mtok"), 3)),
        "{err}"
    );
    assert_eq!(
        err.message,
        "backend 'cloud': model 'm' has output_usd_per_mtok = 1000000000000"
    );
    assert_eq!(
        err.help.as_deref(),
        Some("a price is USD per million tokens, from 0 (local servers) to 1000000 (a dollar a token)")
    );
    let text = BACKENDS.replace("input_usd_per_mtok = 2.5", "input_usd_per_mtok = -1.0");
    let err = load(&text).unwrap_err();
    assert_eq!(
        err.position.map(|p| p.0),
        Some(line_of(&text, "input_usd_per_mtok"))
    );
    load(&BACKENDS.replace(
        "output_usd_per_mtok = 10.0",
        "output_usd_per_mtok = 1000000.0",
    ))
    .unwrap();
}

fn nexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn nexus_check_exits_2_at_the_line_of_an_unenforceable_limit() {
    let dir = std::env::temp_dir().join(format!("nexus-budget-amounts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge-limit.toml");
    let text = with_limit("2e10");
    std::fs::write(&path, &text).unwrap();
    let output = nexus(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:{}:1: [routing.budget]: monthly_limit_usd must be between",
            path.display(),
            line_of(&text, "monthly_limit_usd")
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_what_if_spend_past_the_largest_limit_exits_2() {
    for spent in ["3e10", "1e300"] {
        let output = nexus(&["route", "--model", "gpt-4o-mini", "--spent", spent]);
        assert_eq!(output.status.code(), Some(2), "--spent {spent}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            err.contains(&format!(
                "'{spent}' is more than $1000000000, the largest monthly limit the budget enforces"
            )),
            "{err}"
        );
    }
    let output = nexus(&[
        "route",
        "--model",
        "gpt-4o-mini",
        "--spent",
        "1000000000",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["budget_status"], "hard_limit");
}

#[test]
fn the_dearest_requests_at_the_dearest_price_saturate_the_ledger_instead_of_wrapping() {
    // Under warn nothing is refused: two requests of u32::MAX tokens in and out at $1 a
    // token reserve $17 billion, past the ledger's i64 of nano-dollars.
    let text = format!(
        "{}\n[routing.budget]\nmonthly_limit_usd = 1e9\nhard_limit_action = \"warn\"\n",
        BACKENDS
            .replace("input_usd_per_mtok = 2.5", "input_usd_per_mtok = 1e6")
            .replace("output_usd_per_mtok = 10.0", "output_usd_per_mtok = 1e6")
    );
    let router = load(&text).unwrap();
    let request = nexus_core::Request::new("m")
        .input_tokens(u32::MAX)
        .max_output_tokens(u32::MAX);
    let mut first = router.route(&request);
    let mut second = router.route(&request);
    let guards = [first.take_guard().unwrap(), second.take_guard().unwrap()];
    let third = router.route(&request);
    assert_eq!(
        nexus_router::DecisionReport::new("m", &third).budget_status,
        "hard_limit"
    );
    let budget = router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()
        .unwrap();
    assert_eq!(budget.ledger().total_nanos(), i64::MAX as u64);
    for guard in guards {
        guard.finish(
            nexus_core::Outcome::success(std::time::Duration::from_secs(1))
                .usage(u32::MAX, u32::MAX),
        );
    }
    assert_eq!(budget.ledger().total_nanos(), i64::MAX as u64);
}
