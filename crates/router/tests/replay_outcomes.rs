//! `Router::replay_outcomes`: recorded outcomes reach the quality stage, and a bad file
//! is refused naming the file, line and column.
#![cfg(feature = "quality")]

mod common;

use std::path::PathBuf;

use common::{backend, fleet};
use nexus_core::Request;
use nexus_router::Router;

fn config() -> String {
    fleet([
        backend("flaky", "http://127.0.0.1:1").serves("m"),
        backend("steady", "http://127.0.0.1:2").serves("m"),
    ]) + "\n[routing]\npipeline = [\"analyzer\", \"quality\", \"scheduler\"]\n"
}

fn outcomes_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("the outcomes file");
    path
}

#[test]
fn replayed_failures_keep_the_quality_stage_from_a_backend() {
    let router = Router::builder()
        .load_str("inline.toml", &config())
        .expect("a valid config");
    let line = r#"{"backend": "flaky", "success": false, "latency_ms": 900}"#;
    let text = format!("# twenty failures\n\n{}\n", vec![line; 20].join("\n"));
    let path = outcomes_file("failures.jsonl", &text);
    assert_eq!(router.replay_outcomes(&path), Ok(20));
    for _ in 0..5 {
        let mut decision = router.route(&Request::new("m"));
        assert_eq!(decision.backend().map(|b| b.name()), Some("steady"));
        if let Some(guard) = decision.take_guard() {
            guard.cancel();
        }
    }
}

#[test]
fn a_bad_line_is_named_by_file_line_and_column() {
    let router = Router::builder()
        .load_str("inline.toml", &config())
        .expect("a valid config");
    let path = outcomes_file(
        "bad.jsonl",
        "{\"backend\": \"steady\", \"success\": true}\n{\"backend\": \"steady\", \"succes\": true}\n",
    );
    let error = router.replay_outcomes(&path).unwrap_err().to_string();
    let at = format!("{}:2:", path.display());
    assert!(error.starts_with(&at), "{error}");
    assert!(error.contains("succes"), "{error}");
}

#[test]
fn an_unknown_backend_gets_a_hint() {
    let router = Router::builder()
        .load_str("inline.toml", &config())
        .expect("a valid config");
    let path = outcomes_file(
        "unknown.jsonl",
        "{\"backend\": \"stedy\", \"success\": true}\n",
    );
    let error = router.replay_outcomes(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:1:1: unknown backend 'stedy' (did you mean 'steady'?)",
            path.display()
        )
    );
}

#[test]
fn the_summary_names_what_was_loaded() {
    let router = Router::builder()
        .load_str("inline.toml", &config())
        .expect("a valid config");
    let summary = router.summary("inline.toml");
    assert!(
        summary.starts_with("inline.toml: ok\n  backends: 2\n"),
        "{summary}"
    );
    assert!(
        summary.contains("  pipeline: analyzer (fail_closed) -> quality ("),
        "{summary}"
    );
}
