//! Every row of the design's error table, answered by a served gateway: status, code,
//! retry headers and the decision under `error.nexus`.

mod common;

use common::{backend, chat_body, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};
use serde_json::{json, Value};

async fn refused(
    answer: reqwest::Response,
    status: u16,
    code: &str,
) -> (reqwest::header::HeaderMap, Value) {
    assert_eq!(answer.status(), status, "{code}");
    let headers = answer.headers().clone();
    assert!(headers.get("x-request-id").is_some());
    let body: Value = answer.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    for key in ["message", "type", "code", "param"] {
        assert!(body["error"].get(key).is_some(), "{key}: {body}");
    }
    (headers, body)
}

#[tokio::test]
async fn unknown_model_is_404_with_the_closest_name() {
    let config = format!(
        "{}\n[routing.aliases]\n\"gpt-4\" = \"m\"\n{NO_HEALTH}",
        backend("b", "http://127.0.0.1:9", "local", &["m"], "")
    );
    let served = serve(&config).await;
    let (_, body) = refused(served.chat("gpt4").await, 404, "model_not_found").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("did you mean `gpt-4`?"), "{message}");
    assert_eq!(body["error"]["nexus"]["decision"], "reject");
}

#[tokio::test]
async fn a_spent_budget_is_429_and_says_not_to_retry() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "[[backends]]\nid = \"cloud\"\nurl = \"{}\"\nzone = \"cloud\"\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1.0\n[routing.budget]\nmonthly_limit_usd = 1.0\n{NO_HEALTH}",
        mock.url()
    );
    let served = serve(&config).await;
    served.budget().ledger().set_month_to_date(1.0);
    let (headers, body) = refused(served.chat("m").await, 429, "budget_exceeded").await;
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(
        body["error"]["nexus"]["rejections"][0]["reconciler"],
        "budget"
    );
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn no_viable_backend_is_503_and_names_what_is_down() {
    let config = format!(
        "{}{NO_HEALTH}",
        backend(
            "gpu",
            "http://127.0.0.1:9",
            "local",
            &["m"],
            "status = \"unhealthy\""
        )
    );
    let served = serve(&config).await;
    let (headers, body) = refused(served.chat("m").await, 503, "no_viable_backend").await;
    assert_eq!(headers["x-should-retry"], "false");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Down: gpu (http://127.0.0.1:9)"),
        "{message}"
    );
    assert!(message.contains("point `url` in the config"), "{message}");
    assert_eq!(body["error"]["nexus"]["rejections"][0]["backend"], "gpu");
}

#[tokio::test]
async fn queue_timeout_and_queue_full_are_503_with_retry_after_ms() {
    let loading = backend(
        "gpu",
        "http://127.0.0.1:9",
        "local",
        &["m"],
        "status = \"loading\"",
    );
    let served = serve(&format!(
        "{loading}\n[server]\nqueue_timeout_ms = 50\n{NO_HEALTH}"
    ))
    .await;
    let (headers, body) = refused(served.chat("m").await, 503, "queue_timeout").await;
    assert!(headers.get("retry-after-ms").is_some());
    assert!(headers.get("retry-after").is_some());
    assert_eq!(body["error"]["nexus"]["decision"], "queue");
    assert_eq!(served.gateway.queued(), 0);

    let served = serve(&format!("{loading}\n[server]\nmax_queued = 0\n{NO_HEALTH}")).await;
    let (headers, _) = refused(served.chat("m").await, 503, "queue_full").await;
    assert!(headers.get("retry-after-ms").is_some());
}

#[tokio::test]
async fn bad_input_is_400_or_413_and_never_reaches_a_backend() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nmax_body_bytes = 4096\n{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    );
    let served = serve(&config).await;
    let raw = |body: &'static str| {
        served
            .client
            .post(served.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    refused(raw("{not json").await.unwrap(), 400, "invalid_request").await;
    let (_, body) = refused(
        raw(r#"{"messages": []}"#).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    let (_, body) = refused(
        raw(r#"{"model": 7, "messages": []}"#).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    let mut wrong = chat_body("m", false);
    wrong["max_tokens"] = json!("lots");
    let (_, body) = refused(
        served.post("/v1/chat/completions", &wrong).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(body["error"]["param"], "max_tokens");
    let mut big = chat_body("m", false);
    big["messages"][0]["content"] = json!("x".repeat(5000));
    refused(
        served.post("/v1/chat/completions", &big).await,
        413,
        "invalid_request",
    )
    .await;
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn upstream_failure_after_the_attempts_is_502() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    mock.set_fault(Some(Fault::status(500)));
    let config = format!(
        "{}{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    );
    let served = serve(&config).await;
    let (_, body) = refused(served.chat("m").await, 502, "upstream_error").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("b: answered 500"), "{message}");
    assert_eq!(served.in_flight(), 0);
}
