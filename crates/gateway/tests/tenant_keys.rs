//! With `[[tenants]]`, every request needs a tenant's key (or the admin key): 401
//! `invalid_api_key` otherwise, the key never echoed. A tenant's overrides apply to its
//! requests only, and `GET /v1/nexus/budget` shows a tenant its own entry, the admin
//! every tenant, and anyone everything when neither tenants nor an admin key are set.
#![allow(clippy::unwrap_used)]

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN_VAR: &str = "NEXUS_TENANT_KEYS_TEST_ADMIN";
const ADMIN_KEY: &str = "admin-7f3e9c";

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

async fn code_of(answer: reqwest::Response) -> (u16, Value) {
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    (status, body)
}

// One test in this binary: it sets an environment variable, which nothing else reads
// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_who_may_call_and_what_they_see() {
    std::env::set_var(ADMIN_VAR, ADMIN_KEY);
    let local = MockUpstream::start(MockConfig::serving(["llama3"]))
        .await
        .expect("a mock");
    let cloud = MockUpstream::start(MockConfig::serving(["gpt-x", "llama3-big"]))
        .await
        .expect("a mock");
    let mut text = backend("gpu", &local.base_url(), "local", &["llama3"], "");
    text.push_str(&backend(
        "cloud",
        &cloud.base_url(),
        "cloud",
        &["gpt-x", "llama3-big"],
        "",
    ));
    text.push_str(&format!(
        r#"
[server]
admin_key_env = "{ADMIN_VAR}"

[routing.budget]
monthly_limit_usd = 10.0

[[tenants]]
id = "team-a"
key_sha256 = "{}"
monthly_limit_usd = 2.0

[[tenants]]
id = "team-b"
key_sha256 = "{}"
privacy = "restricted"
models = ["llama*"]
"#,
        sha256_hex("sk-team-a"),
        sha256_hex("sk-team-b"),
    ));
    text.push_str(NO_HEALTH);
    let served = serve(&text).await;
    let post = |path: &str, key: Option<&str>, body: Value| {
        let mut request = served.client.post(served.url(path)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let get = |path: &str, key: Option<&str>| {
        let mut request = served.client.get(served.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };

    // No key, a wrong key, another scheme: 401 everywhere but the probes.
    for key in [None, Some("sk-wrong-key"), Some("")] {
        for path in ["/v1/chat/completions", "/v1/nexus/route"] {
            let (status, body) = code_of(post(path, key, chat("llama3")).await.unwrap()).await;
            assert_eq!(status, 401, "{path} with {key:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_api_key");
            assert!(
                !body.to_string().contains("sk-wrong-key"),
                "the key is never echoed"
            );
        }
        for path in ["/v1/models", "/v1/nexus/backends", "/v1/nexus/budget"] {
            let (status, body) = code_of(get(path, key).await.unwrap()).await;
            assert_eq!(status, 401, "{path} with {key:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_api_key");
        }
    }
    let basic = served
        .client
        .post(served.url("/v1/chat/completions"))
        .header("authorization", "Basic c2stdGVhbS1hOg==")
        .json(&chat("llama3"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    for path in ["/health", "/metrics"] {
        assert_eq!(
            get(path, None).await.unwrap().status(),
            200,
            "{path} stays open"
        );
    }
    assert_eq!(
        local.request_count() + cloud.request_count(),
        0,
        "nothing went upstream"
    );

    // A tenant's key serves; the client's key is not passed upstream.
    let answer = post("/v1/chat/completions", Some("sk-team-a"), chat("gpt-x"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let upstream = cloud.requests_to("/v1/chat/completions");
    assert_eq!(upstream.len(), 1);
    assert!(upstream[0].header("authorization").is_none());

    // Team B's overrides: restricted (the cloud-only model is refused), and its models
    // only.
    let (status, body) = code_of(
        post(
            "/v1/chat/completions",
            Some("sk-team-b"),
            chat("llama3-big"),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_viable_backend");
    assert!(body["error"]["nexus"]["rejections"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("restricted"));
    assert_eq!(cloud.requests_to("/v1/chat/completions").len(), 1);
    let answer = post("/v1/chat/completions", Some("sk-team-b"), chat("llama3"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The same cloud model for team A (unrestricted) still serves.
    let answer = post(
        "/v1/chat/completions",
        Some("sk-team-a"),
        chat("llama3-big"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    // A model outside team B's list.
    let (status, body) = code_of(
        post("/v1/chat/completions", Some("sk-team-b"), chat("gpt-x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team-b"),
        "{body}"
    );

    // The budget: each tenant sees its own entry, the admin sees both.
    served
        .eventually("settled", |s| s.reserved_usd() == 0.0)
        .await;
    let (status, as_a) = code_of(get("/v1/nexus/budget", Some("sk-team-a")).await.unwrap()).await;
    assert_eq!(status, 200);
    let ids = |v: &Value| -> Vec<String> {
        v["tenants"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(ids(&as_a), ["team-a"]);
    assert_eq!(as_a["global"]["limit_usd"], 10.0);
    assert_eq!(as_a["global"]["shared"], "local");
    assert_eq!(as_a["tenants"][0]["limit_usd"], 2.0);
    assert!(as_a["month"].as_str().unwrap().len() == 7, "{as_a}");
    let (_, as_b) = code_of(get("/v1/nexus/budget", Some("sk-team-b")).await.unwrap()).await;
    assert_eq!(ids(&as_b), ["team-b"]);
    assert_eq!(as_b["tenants"][0]["limit_usd"], Value::Null);
    assert_eq!(as_b["tenants"][0]["remaining_usd"], Value::Null);
    let (status, as_admin) = code_of(get("/v1/nexus/budget", Some(ADMIN_KEY)).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&as_admin), ["team-a", "team-b"]);
    // The admin key is a valid caller of the other endpoints too.
    assert_eq!(
        get("/v1/models", Some(ADMIN_KEY)).await.unwrap().status(),
        200
    );
    served.stop().await;

    // No tenants, an admin key: the budget needs it, the rest stays open.
    let mut text = backend("gpu", &local.base_url(), "local", &["llama3"], "");
    text.push_str(&format!(
        "[server]\nadmin_key_env = \"{ADMIN_VAR}\"\n{NO_HEALTH}"
    ));
    let served = serve(&text).await;
    let open = served
        .client
        .get(served.url("/v1/nexus/budget"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 401);
    let admin = served
        .client
        .get(served.url("/v1/nexus/budget"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    let body: Value = admin.json().await.unwrap();
    assert_eq!(body["tenants"], json!([]));
    let chat_answer = served
        .client
        .post(served.url("/v1/chat/completions"))
        .json(&chat("llama3"))
        .send()
        .await
        .unwrap();
    assert_eq!(chat_answer.status(), 200, "no tenants: no key needed");
    served.stop().await;

    // Neither: open, like /v1/nexus/backends.
    let text = format!(
        "{}{NO_HEALTH}",
        backend("gpu", &local.base_url(), "local", &["llama3"], "")
    );
    let served = serve(&text).await;
    let open = served
        .client
        .get(served.url("/v1/nexus/budget"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let body: Value = open.json().await.unwrap();
    assert_eq!(body["global"]["limit_usd"], Value::Null);
    assert_eq!(body["tenants"], json!([]));
    served.stop().await;
}
