//! `nexus serve` on SIGTERM: stops accepting, lets the request in flight finish, and
//! exits within its grace; with no backend running, it still starts and answers.

mod common;

use std::time::Duration;

use common::{start, terminate, wait_exit};

use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_then_exits() {
    let mut mock_config = MockConfig::serving(["m"]);
    mock_config.chunks = 8;
    mock_config.chunk_interval = Duration::from_millis(100);
    let mock = MockUpstream::start(mock_config).await.unwrap();
    let dir = std::env::temp_dir().join(format!("nexus-serve-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nid = \"b\"\nurl = \"{}\"\nzone = \"local\"\nmodels = [{{ name = \"m\" }}]\n[server]\nshutdown_grace_secs = 10\n[health]\ninterval_secs = 0\n",
            mock.url()
        ),
    )
    .unwrap();
    let (mut child, addr) = start(&config);
    let client = common::http_client();
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let answer = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    // The stream is under way: stop the server now.
    terminate(&child);
    let text = answer.text().await.expect("the whole stream");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    // Nothing accepts any more.
    assert!(client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn with_nothing_running_it_starts_routes_and_says_what_is_down() {
    let dir = std::env::temp_dir().join(format!("nexus-serve-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        "[[backends]]\nid = \"gpu-box\"\ntype = \"ollama\"\nurl = \"http://127.0.0.1:9\"\nzone = \"local\"\nmodels = [{ name = \"llama3:70b\" }]\n[routing.aliases]\n\"gpt-4\" = \"llama3:70b\"\n",
    )
    .unwrap();
    let (mut child, addr) = start(&config);
    let client = common::http_client();
    let body =
        serde_json::json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]});
    let route: serde_json::Value = client
        .post(format!("http://{addr}/v1/nexus/route"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(route["decision"], "reject");
    let answer = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let error: serde_json::Value = answer.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Down: gpu-box (http://127.0.0.1:9)"),
        "{message}"
    );
    assert!(message.contains("point `url` in the config"), "{message}");
    terminate(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
