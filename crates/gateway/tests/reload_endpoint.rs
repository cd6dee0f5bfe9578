//! `POST /v1/nexus/reload`: the admin key is required (401 without, 403 when none is
//! configured); a valid file is swapped in (200 with a summary) and /v1/models, routing
//! and health checks follow it; an invalid one is refused (422 `invalid_config`, the
//! error's place under `error.nexus`) and the running config stays.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{backend, chat_body};
use nexus_gateway::Gateway;
use nexus_router::{LiveRouter, Router};
use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::Value;
use tokio::sync::oneshot;

const ADMIN_VAR: &str = "NEXUS_TEST_RELOAD_ADMIN_KEY";
const ADMIN_KEY: &str = "reload-admin-secret";

struct Running {
    gateway: Gateway,
    base: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

async fn serve_file(path: &Path) -> Running {
    let live = LiveRouter::from_file(Router::builder(), path).expect("a valid config");
    let gateway = Gateway::reloadable(live).expect("a gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(nexus_gateway::serve(gateway.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Running {
        gateway,
        base,
        client,
        _stop: stop,
    }
}

impl Running {
    async fn reload(&self, key: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}/v1/nexus/reload", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let answer = request.send().await.expect("an answer");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("a JSON body"))
    }

    async fn models(&self) -> Vec<String> {
        let body: Value = self
            .client
            .get(format!("{}/v1/models", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn chat(&self, model: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&chat_body(model, false))
            .send()
            .await
            .unwrap()
    }
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-reload-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nexus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const SERVER: &str =
    "[server]\nadmin_key_env = \"NEXUS_TEST_RELOAD_ADMIN_KEY\"\n[health]\ninterval_secs = 3600\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_reloads_a_valid_file_and_everything_follows_it() {
    std::env::set_var(ADMIN_VAR, ADMIN_KEY);
    let a = MockUpstream::start(MockConfig::serving(["m1"]))
        .await
        .unwrap();
    let b = MockUpstream::start(MockConfig::serving(["m2"]))
        .await
        .unwrap();
    let path = temp_config(
        "ok",
        &format!("{}{SERVER}", backend("a", &a.url(), "local", &["m1"], "")),
    );
    let running = serve_file(&path).await;
    assert_eq!(running.models().await, ["m1"]);
    assert_eq!(running.chat("m1").await.status(), 200);

    // `b` starts unhealthy by config: only the health check run after the reload can
    // make it healthy.
    std::fs::write(
        &path,
        format!(
            "{}{SERVER}",
            backend("b", &b.url(), "local", &["m2"], "status = \"unhealthy\"")
        ),
    )
    .unwrap();

    let (status, body) = running.reload(None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, _) = running.reload(Some("not-the-key")).await;
    assert_eq!(status, 401);
    assert_eq!(running.models().await, ["m1"], "nothing reloaded yet");

    let (status, body) = running.reload(Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["generation"], 1);
    assert_eq!(body["backends_added"], serde_json::json!(["b"]));
    assert_eq!(body["backends_removed"], serde_json::json!(["a"]));
    assert_eq!(body["file"], path.display().to_string());

    assert_eq!(running.models().await, ["m2"]);
    assert_eq!(running.chat("m1").await.status(), 404, "a's model is gone");
    // The checker checks the new backend at once.
    let mut healthy = false;
    for _ in 0..500 {
        let answer = running.chat("m2").await;
        if answer.status() == 200 {
            assert_eq!(answer.headers()["x-nexus-backend"], "b");
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(healthy, "the new backend was health-checked and serves");
    let backends: Value = running
        .client
        .get(format!("{}/v1/nexus/backends", running.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(backends["backends"].as_array().unwrap().len(), 1);
    assert_eq!(backends["backends"][0]["id"], "b");
    assert!(!b.requests_to("/v1/models").is_empty());
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_with_its_place_and_the_running_config_stays() {
    std::env::set_var(ADMIN_VAR, ADMIN_KEY);
    let a = MockUpstream::start(MockConfig::serving(["m1"]))
        .await
        .unwrap();
    let good = format!("{}{SERVER}", backend("a", &a.url(), "local", &["m1"], ""));
    let path = temp_config("bad", &good);
    let running = serve_file(&path).await;

    std::fs::write(
        &path,
        format!("{good}[routing]\npipeline = [\"analyzer\", \"schedulr\"]\n"),
    )
    .unwrap();
    let (status, body) = running.reload(Some(ADMIN_KEY)).await;
    assert_eq!(status, 422, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "invalid_config");
    assert_eq!(error["type"], "invalid_request_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("{}:", path.display())),
        "{message}"
    );
    assert!(message.contains("did you mean `scheduler`?"), "{message}");
    assert_eq!(error["nexus"]["line"], good.lines().count() + 2);
    assert!(error["nexus"]["column"].as_u64().is_some());
    assert_eq!(error["nexus"]["help"], "did you mean `scheduler`?");

    // Still serving the old config.
    assert_eq!(running.models().await, ["m1"]);
    assert_eq!(running.chat("m1").await.status(), 200);
    assert_eq!(running.gateway.live_router().current().warnings().len(), 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn without_an_admin_key_configured_the_endpoint_is_off() {
    let path = temp_config(
        "off",
        &backend(
            "a",
            "http://127.0.0.1:9",
            "local",
            &["m1"],
            "[health]\ninterval_secs = 0",
        ),
    );
    let running = serve_file(&path).await;
    let (status, body) = running.reload(Some("anything")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "admin_disabled");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin_key_env"));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
