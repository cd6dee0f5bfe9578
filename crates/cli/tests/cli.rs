//! The `nexus` command: its exit codes, its JSON contract and its error format.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn nexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn route_prints_the_design_json_object() {
    let output = nexus(&[
        "route",
        "--model",
        "gpt-4",
        "--input-tokens",
        "1000",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    for key in [
        "decision",
        "requested_model",
        "model",
        "backend",
        "fallback_used",
        "estimated_wait_ms",
        "fallback_backend",
        "reason",
        "budget_status",
        "cost_estimate",
        "warnings",
        "rejections",
    ] {
        assert!(json.get(key).is_some(), "missing key {key} in {json:#}");
    }
    assert_eq!(json["decision"], "route");
    assert_eq!(json["requested_model"], "gpt-4");
    assert_eq!(json["model"], "llama3:70b");
    assert_eq!(json["backend"], "gpu-box");
    assert_eq!(json["fallback_used"], false);
    assert_eq!(json["budget_status"], "normal");
    assert_eq!(json["cost_estimate"]["input_tokens"], 1000);
    assert_eq!(json["cost_estimate"]["estimated_output_tokens"], 500);
    assert!(json["reason"]
        .as_str()
        .unwrap()
        .starts_with("highest score"));
    assert!(json["warnings"].is_array() && json["rejections"].is_array());
}

#[test]
fn route_exits_zero_for_a_reject_too() {
    let output = nexus(&["route", "--model", "no-such-model", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["decision"], "reject");
    assert_eq!(json["backend"], serde_json::Value::Null);
}

#[test]
fn route_text_is_a_readable_explanation() {
    let output = nexus(&["route", "--model", "gpt-4"]);
    let text = stdout(&output);
    assert!(text.starts_with("ROUTE  gpt-4 -> gpu-box"), "{text}");
    assert!(text.contains("candidates (best first):"), "{text}");
}

#[test]
fn check_accepts_the_built_in_config() {
    let output = nexus(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("<built-in example>: ok"), "{text}");
    assert!(text.contains("pipeline: analyzer"), "{text}");
    assert!(
        text.contains(
            "budget: $100 a month, soft limit at 75%, block_cloud at the limit; $0.00 spent in "
        ),
        "{text}"
    );
}

#[test]
fn check_on_a_broken_config_exits_2_with_file_line_column() {
    let dir = std::env::temp_dir().join(format!("nexus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        "[[backends]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\nzone = \"clod\"\n",
    )
    .unwrap();
    let output = nexus(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.starts_with(&format!("{}:4:8: unknown variant `clod`", path.display())),
        "{err}"
    );
    assert!(err.contains("did you mean `cloud`?"), "{err}");

    let output = nexus(&["route", "--config", path.to_str().unwrap(), "--model", "m"]);
    assert_eq!(output.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(nexus(&["route"]).status.code(), Some(2));
    assert_eq!(
        nexus(&["route", "--model", "m", "--strict", "--flexible"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        nexus(&["route", "--model", "m", "--spent", "-3"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        nexus(&["check", "--config", "/nonexistent/nexus.toml"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn check_into_a_reader_that_stops_early_exits_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // Far more output than a pipe buffers, so that nexus is still writing when the
    // reader goes.
    let mut config = String::new();
    for i in 0..3000 {
        config.push_str(&format!(
            "[[backends]]\nid = \"backend-{i}\"\nurl = \"http://127.0.0.1:{}\"\nzone = \"local\"\nmodels = [{{ name = \"model-{i}\" }}]\n",
            10_000 + i
        ));
    }
    let dir = std::env::temp_dir().join(format!("nexus-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.toml");
    std::fs::write(&path, config).unwrap();
    {
        let args = ["check", "--config", path.to_str().unwrap()];
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // The reader is dropped here: `nexus check | head -1`.
        assert!(first.contains(": ok"), "{first}");
        let output = child.wait_with_output().unwrap();
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_requested_name_with_terminal_escapes_is_printed_escaped() {
    let name = "x\u{1b}[2Jy";
    let output = nexus(&["route", "--model", name]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("REJECT x\\u{1b}[2Jy"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let output = nexus(&["route", "--model", name, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["requested_model"], name);
    assert!(!stdout(&output).contains('\u{1b}'));
}
