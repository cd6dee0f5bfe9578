//! `nexus serve` writes one line per request at info, as `[server] log_format` says:
//! decision, backend, model, status, tokens, cost and durations, and never a key.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::Value;

const BACKEND_KEY: &str = "sk-backend-secret-0123456789";
const CLIENT_KEY: &str = "sk-client-secret-9876543210";

/// Starts `nexus serve` with every stderr line sent to the returned channel.
fn start(config: &std::path::Path) -> (Child, String, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let (child, addr) = common::spawn_serving(
        common::serve_command(config).env("NEXUS_TEST_BACKEND_KEY", BACKEND_KEY),
        move |line| {
            let _ = tx.send(line.to_owned());
        },
    );
    (child, addr, rx)
}

/// Lines until the process exits (the channel closes), bounded in time.
fn rest_of(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        lines.push(line);
    }
    lines
}

fn config(dir: &std::path::Path, mock: &MockUpstream, format: &str) -> std::path::PathBuf {
    let path = dir.join(format!("nexus-{format}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[[backends]]
id = "paid"
url = "{}"
zone = "cloud"
api_key_env = "NEXUS_TEST_BACKEND_KEY"
  [[backends.models]]
  name = "m"
  input_usd_per_mtok = 1000.0
  output_usd_per_mtok = 2000.0

[server]
log_format = "{format}"

[health]
interval_secs = 0
"#,
            mock.url()
        ),
    )
    .unwrap();
    path
}

async fn traffic(addr: &str) {
    let client = common::http_client();
    for (model, stream, status) in [("m", false, 200), ("m", true, 200), ("nope", false, 404)] {
        let body = serde_json::json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        let answer = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
        // Read the whole body, so that the request is settled.
        let _ = answer.bytes().await.unwrap();
    }
}

/// Serves the usual traffic through `nexus serve` logging in `format`, stops it, and
/// returns every line it wrote after starting (the config's directory is removed).
async fn logged_lines(format: &str) -> Vec<String> {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("nexus-request-log-{format}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr, rx) = start(&config(&dir, &mock, format));
    traffic(&addr).await;
    common::terminate(&child);
    let lines = tokio::task::spawn_blocking(move || rest_of(&rx))
        .await
        .unwrap();
    common::wait_exit(&mut child, Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_request_with_what_happened() {
    let lines = logged_lines("json").await;
    let all = lines.join("\n");
    assert!(
        !all.contains(BACKEND_KEY),
        "a backend key was logged:\n{all}"
    );
    assert!(!all.contains(CLIENT_KEY), "a client key was logged:\n{all}");

    let requests: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "nexus::request")
        .collect();
    assert_eq!(requests.len(), 3, "one line per request:\n{all}");
    for (line, streamed) in requests[..2].iter().zip([false, true]) {
        assert_eq!(line["level"], "INFO", "{line}");
        let f = &line["fields"];
        assert_eq!(f["decision"], "route", "{line}");
        assert_eq!(f["backend"], "paid", "{line}");
        assert_eq!(f["model"], "m", "{line}");
        assert_eq!(f["requested_model"], "m", "{line}");
        assert_eq!(f["status"], 200, "{line}");
        assert_eq!(f["ending"], "complete", "{line}");
        // The mock reports 10 tokens in and 20 out: $0.01 + $0.04.
        assert_eq!(f["input_tokens"], 10, "{line}");
        assert_eq!(f["output_tokens"], 20, "{line}");
        assert!(
            (f["cost_usd"].as_f64().unwrap() - 0.05).abs() < 1e-9,
            "{line}"
        );
        assert_eq!(f["attempts"], 1, "{line}");
        assert!(
            f["request_id"].as_str().unwrap().starts_with("req-"),
            "{line}"
        );
        for key in ["decide_ms", "upstream_ms", "total_ms"] {
            assert!(f[key].as_f64().unwrap() >= 0.0, "{key}: {line}");
        }
        assert_eq!(f["ttft_ms"].is_f64(), streamed, "{line}");
    }
    let refused = &requests[2]["fields"];
    assert_eq!(refused["decision"], "reject", "{refused}");
    assert_eq!(refused["requested_model"], "nope", "{refused}");
    assert_eq!(refused["status"], 404, "{refused}");
    assert_eq!(refused["error"], "model_not_found", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_the_default_and_carry_the_same_fields() {
    let lines = logged_lines("text").await;
    let all = lines.join("\n");
    assert!(
        !all.contains(BACKEND_KEY) && !all.contains(CLIENT_KEY),
        "{all}"
    );
    let requests: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" INFO ") && l.contains("request_id="))
        .collect();
    assert_eq!(requests.len(), 3, "{all}");
    assert!(
        requests[0].contains("decision=\"route\"")
            && requests[0].contains("requested_model=\"m\"")
            && requests[0].contains("backend=\"paid\"")
            && requests[0].contains("status=200")
            && requests[0].contains("output_tokens=20"),
        "{}",
        requests[0]
    );
    assert!(requests[0]
        .trim_start()
        .chars()
        .next()
        .unwrap()
        .is_ascii_digit());
    assert!(requests[2].contains("status=404"), "{}", requests[2]);
}
