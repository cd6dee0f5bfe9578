//! `tests/openai_client.py`, the script that drives `nexus serve` with the official
//! OpenAI Python client (`crates/cli/tests/openai_python_client.rs`, refusals included),
//! runs here against the bare mock upstream: the mock itself must satisfy the real
//! library on its success paths (models, chat, streams with and without usage,
//! completions, embeddings, a 404), or the gateway's run would test the mock. Where
//! python3 or the `openai` package is missing the test says so and passes, except under
//! CI (`CI` set), where `.ci/run` installs the package and a skip would hide a gap.

use std::time::Duration;

use nexus_testkit::{MockConfig, MockUpstream};
use tokio::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");

async fn python_has_openai() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .await;
    matches!(probe, Ok(out) if out.status.success())
}

#[tokio::test]
async fn the_official_python_client_is_served_by_the_mock() {
    if !python_has_openai().await {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the openai package is required under CI (.ci/run installs it)"
        );
        eprintln!(
            "skipped: python3 with the openai package is missing (python3 -m pip install openai)"
        );
        return;
    }
    let mock = MockUpstream::start(MockConfig::serving(["mock-chat", "mock-embed"]))
        .await
        .expect("a mock");
    let run = Command::new("python3")
        .arg(SCRIPT)
        .args(["--base-url", &mock.base_url()])
        .args([
            "--chat-model",
            "mock-chat",
            "--embedding-model",
            "mock-embed",
        ])
        .args(["--unknown-model", "no-such-model", "--timeout", "20"])
        // Loopback only: a proxy from the environment must not see this traffic.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the script finishes within two minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");

    let chats = mock.requests_to("/v1/chat/completions");
    assert!(chats.len() >= 3, "chat, stream, stream with usage, 404");
    for request in &chats {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer sk-nexus-test")
        );
    }
    let usage_asked = chats
        .iter()
        .filter_map(|r| r.json())
        .filter(|body| body.pointer("/stream_options/include_usage") == Some(&true.into()))
        .count();
    assert_eq!(usage_asked, 1);
}
