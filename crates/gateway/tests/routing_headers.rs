//! Every proxied answer carries the routing headers before its first byte; the body
//! reaches the upstream as sent except `model`; the client's own key stays here.

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use serde_json::json;

#[tokio::test]
async fn routing_headers_and_the_served_model() {
    let mock = MockUpstream::start(MockConfig::serving(["llama3:8b"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[routing.aliases]\n\"gpt-4\" = \"llama3:8b\"\n{NO_HEALTH}",
        backend("gpu-box", &mock.url(), "local", &["llama3:8b"], "")
    );
    let served = serve(&config).await;
    let answer = served
        .client
        .post(served.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-client-secret")
        .header("x-request-id", "my-request-7")
        .json(&common::chat_body("gpt-4", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let h = answer.headers().clone();
    assert_eq!(h["x-nexus-backend"], "gpu-box");
    assert_eq!(h["x-nexus-model"], "llama3:8b");
    assert!(h["x-nexus-route-reason"]
        .to_str()
        .unwrap()
        .starts_with("highest score"));
    assert_eq!(h["x-nexus-cost-estimate-usd"], "0.000000");
    assert_eq!(h["x-nexus-privacy-zone"], "local");
    assert_eq!(h["x-nexus-budget-status"], "normal");
    assert_eq!(h["x-request-id"], "my-request-7");
    assert!(h.get("x-nexus-fallback-model").is_none());
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].is_string());

    let sent = mock.requests_to("/v1/chat/completions");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].model().as_deref(), Some("llama3:8b"));
    assert_eq!(
        sent[0].header("authorization"),
        None,
        "the client's key is not forwarded"
    );
    assert_eq!(sent[0].header("x-request-id"), Some("my-request-7"));
    assert_eq!(served.in_flight(), 0);
}

#[tokio::test]
async fn a_fallback_says_so_and_ids_are_made_when_missing() {
    let mock = MockUpstream::start(MockConfig::serving(["small"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[routing.fallbacks]\n\"big\" = [\"small\"]\n{NO_HEALTH}",
        backend(
            "down",
            "http://127.0.0.1:9",
            "local",
            &["big"],
            "status = \"unhealthy\""
        ),
        backend("up", &mock.url(), "local", &["small"], ""),
    );
    let served = serve(&config).await;
    let answer = served.chat("big").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-fallback-model"], "small");
    assert_eq!(answer.headers()["x-nexus-model"], "small");
    assert!(answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-"));
    assert_eq!(
        mock.requests_to("/v1/chat/completions")[0]
            .model()
            .as_deref(),
        Some("small")
    );
}

#[tokio::test]
async fn the_other_endpoints_answer() {
    let mock = MockUpstream::start(MockConfig::serving(["m", "e"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[routing.aliases]\n\"alias\" = \"m\"\n{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m", "e"], "")
    );
    let served = serve(&config).await;
    let get = |path: &'static str| {
        let client = served.client.clone();
        let url = served.url(path);
        async move { client.get(url).send().await.unwrap() }
    };
    let models: serde_json::Value = get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alias", "e", "m"]);
    assert_eq!(models["object"], "list");

    let backends: serde_json::Value = get("/v1/nexus/backends").await.json().await.unwrap();
    let b = &backends["backends"][0];
    assert_eq!(b["id"], "b");
    assert_eq!(b["zone"], "local");
    assert_eq!(b["status"], "healthy");
    assert_eq!(b["in_flight"], 0);
    assert_eq!(b["circuit"]["state"], "closed");

    assert_eq!(get("/health").await.status(), 200);
    assert_eq!(get("/ready").await.status(), 200);

    let embed = served
        .post(
            "/v1/embeddings",
            &json!({"model": "e", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(embed.status(), 200);
    assert_eq!(embed.headers()["x-nexus-model"], "e");
    let completion = served
        .post(
            "/v1/completions",
            &json!({"model": "alias", "prompt": "Hi", "max_tokens": 5}),
        )
        .await;
    assert_eq!(completion.status(), 200);

    let route = served
        .post("/v1/nexus/route", &common::chat_body("alias", false))
        .await;
    assert_eq!(route.status(), 200);
    let decision: serde_json::Value = route.json().await.unwrap();
    assert_eq!(decision["decision"], "route");
    assert_eq!(decision["model"], "m");
    assert_eq!(decision["backend"], "b");
    assert_eq!(
        mock.requests_to("/v1/chat/completions").len(),
        0,
        "route sends nothing"
    );
    assert_eq!(served.in_flight(), 0, "the route's guard is cancelled");

    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("nexus_decisions_total"), "{metrics}");
    assert!(
        metrics.contains("nexus_upstream_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("nexus_backend_up"), "{metrics}");

    let unknown = get("/v2/nothing").await;
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
}
