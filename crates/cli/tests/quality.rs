//! The quality stage through the facade and `nexus route --outcomes`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use nexus_core::{Outcome, Request};
use nexus_router::{DecisionReport, Router};

const FLEET: &str = r#"
[[backends]]
id = "flaky"
url = "http://127.0.0.1:1"
zone = "local"
priority = 3
models = [{ name = "m" }]

[[backends]]
id = "steady"
url = "http://127.0.0.1:2"
zone = "local"
models = [{ name = "m" }]

[routing.quality]
failure_threshold = 3
cooldown_secs = 60
"#;

#[test]
fn failing_requests_open_the_circuit_and_the_rejection_says_why() {
    let router = Router::from_toml("quality.toml", FLEET).unwrap();
    for _ in 0..3 {
        let mut decision = router.route(&Request::new("m"));
        let guard = decision.take_guard().unwrap();
        assert_eq!(guard.backend().name(), "flaky");
        guard.finish(Outcome::failure(Duration::from_millis(50)));
    }
    let decision = router.route(&Request::new("m"));
    let report = DecisionReport::new("m", &decision);
    assert_eq!(report.backend.as_deref(), Some("steady"));
    assert_eq!(report.rejections.len(), 1);
    let rejection = &report.rejections[0];
    assert_eq!(
        (rejection.backend.as_str(), rejection.reconciler.as_str()),
        ("flaky", "quality")
    );
    assert!(
        rejection
            .reason
            .starts_with("3 consecutive failures; circuit open for "),
        "{}",
        rejection.reason
    );
    assert!(rejection
        .suggested_action
        .contains("check the backend's logs"));
}

#[test]
fn dropping_guards_counts_as_failures() {
    let router = Router::from_toml("quality.toml", FLEET).unwrap();
    for _ in 0..3 {
        let mut decision = router.route(&Request::new("m"));
        drop(decision.take_guard());
    }
    assert_eq!(
        router.route(&Request::new("m")).backend().unwrap().name(),
        "steady"
    );
}

#[test]
fn nexus_route_replays_outcomes_and_shows_quality_rejections() {
    let dir = std::env::temp_dir().join(format!("nexus-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("fleet.toml");
    // Only the error-rate rule: never three failures in a row counts here.
    std::fs::write(
        &config,
        FLEET.replace("failure_threshold = 3", "failure_threshold = 100"),
    )
    .unwrap();
    let outcomes = dir.join("outcomes.jsonl");
    let mut lines =
        String::from("# flaky failed 12 of its last 20 requests, over the last 10 minutes\n");
    for i in 0..20 {
        let success = i % 5 < 2;
        lines.push_str(&format!(
            "{{\"backend\": \"flaky\", \"success\": {success}, \"latency_ms\": 900, \"seconds_ago\": {}}}\n",
            600 - i * 30
        ));
    }
    std::fs::write(&outcomes, lines).unwrap();
    let args = [
        "route",
        "--config",
        config.to_str().unwrap(),
        "--model",
        "m",
        "--outcomes",
        outcomes.to_str().unwrap(),
    ];

    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["backend"], "steady");
    assert_eq!(json["rejections"][0]["reconciler"], "quality");
    assert!(
        json["rejections"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with(
                "error rate 60% over the last hour (12 of 20 requests); circuit open for "
            ),
        "{json:#}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("  by quality (1):\n    flaky: error rate 60%"),
        "{text}"
    );

    std::fs::write(&outcomes, "{\"backend\": \"flakey\", \"success\": true}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.contains("outcomes.jsonl:1:1: unknown backend 'flakey' (did you mean 'flaky'?)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quality_settings_are_validated_at_load() {
    let config = FLEET.replace(
        "cooldown_secs = 60",
        "cooldown_secs = 60\nmax_error_rate = 50",
    );
    let err = Router::from_toml("quality.toml", &config).unwrap_err();
    assert!(
        err.message
            .contains("max_error_rate` is a fraction in (0, 1], got 50"),
        "{err}"
    );
    assert_eq!(err.help.as_deref(), Some("did you mean 0.5?"), "{err}");
    // At the key's line, not the table's.
    let line = 1 + config
        .lines()
        .position(|l| l.starts_with("max_error_rate"))
        .unwrap();
    assert_eq!(err.position.map(|p| p.0), Some(line), "{err}");
}
