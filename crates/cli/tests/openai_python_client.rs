//! The official OpenAI Python client (`max_retries=0`) against `nexus serve`: chat,
//! streams with and without usage, completions, embeddings, models, and every refusal
//! the gateway can give without tenants, each read through the client's own exception
//! type (`crates/gateway/tests/openai_client.py`). Where python3 or the `openai` package
//! is missing the test says so and passes, except under CI (`CI` set), where `.ci/run`
//! installs the package and a skip would hide a gap.

mod common;

use std::time::Duration;

use common::{start, terminate, wait_exit};
use nexus_testkit::{Fault, MockConfig, MockUpstream};
use tokio::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gateway/tests/openai_client.py"
);

async fn python_has_openai() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .await;
    matches!(probe, Ok(out) if out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_is_served_by_nexus_serve() {
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
    let good = MockUpstream::start(MockConfig::serving([
        "llama3:8b",
        "nomic-embed-text",
        "pricey",
    ]))
    .await
    .unwrap();
    let broken = MockUpstream::start(MockConfig::serving(["broken"]))
        .await
        .unwrap();
    broken.set_fault(Some(Fault::status(500)));
    let config = format!(
        r#"
[[backends]]
id = "local"
url = "{good}"
zone = "local"
models = [{{ name = "llama3:8b" }}, {{ name = "nomic-embed-text" }}]

[[backends]]
id = "cloud"
url = "{good_v1}"
zone = "cloud"
models = [{{ name = "pricey", input_usd_per_mtok = 1000.0, output_usd_per_mtok = 1000.0 }}]

[[backends]]
id = "down"
url = "http://127.0.0.1:9"
zone = "local"
status = "unhealthy"
models = [{{ name = "unavailable" }}]

[[backends]]
id = "loading"
url = "http://127.0.0.1:9"
zone = "local"
status = "loading"
models = [{{ name = "queued" }}]

[[backends]]
id = "flaky"
url = "{broken}"
zone = "local"
models = [{{ name = "broken" }}]

[[routing.policies]]
model_pattern = "pricey"
max_cost_per_request = 0.000001

[server]
queue_timeout_ms = 100
max_attempts = 1

[health]
interval_secs = 0
"#,
        good = good.url(),
        good_v1 = good.base_url(),
        broken = broken.url(),
    );
    let dir = std::env::temp_dir().join(format!("nexus-python-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nexus.toml");
    std::fs::write(&path, config).unwrap();
    let (mut child, addr) = start(&path);

    let run = Command::new("python3")
        .arg(SCRIPT)
        .args(["--base-url", &format!("http://{addr}/v1"), "--nexus"])
        .args([
            "--chat-model",
            "llama3:8b",
            "--embedding-model",
            "nomic-embed-text",
        ])
        .args(["--unknown-model", "llama3:8", "--budget-model", "pricey"])
        .args([
            "--unavailable-model",
            "unavailable",
            "--queued-model",
            "queued",
        ])
        .args([
            "--broken-model",
            "broken",
            "--bad-request",
            "--timeout",
            "20",
        ])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await;
    terminate(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out
        .expect("the script finishes within two minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
    assert!(status.success());

    // The client's key stayed at the gateway; the upstream was asked for usage always.
    let chats = good.requests_to("/v1/chat/completions");
    assert!(chats.len() >= 3);
    for request in &chats {
        assert_eq!(request.header("authorization"), None);
        let body = request.json().unwrap();
        if body["stream"] == true {
            assert_eq!(body["stream_options"]["include_usage"], true);
        }
    }
    assert_eq!(
        good.requests()
            .iter()
            .filter(|r| r.model().as_deref() == Some("pricey"))
            .count(),
        0
    );
}
