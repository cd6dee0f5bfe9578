//! An upstream that answers 429: a rate limit is that backend's, not the request's, so
//! it is a failed attempt and another backend serves. When every attempt failed and one
//! was rate limited, the client gets 429 `rate_limit_exceeded` with the shortest delay a
//! backend asked for as `retry-after-ms` and `retry-after`, which the OpenAI clients
//! wait before they retry (they retry 429 by default). Nothing is billed for a 429.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn a_429_fails_over_then_is_passed_on_with_its_retry_after() {
    let _serial = serial().await;
    let limited = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let other = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{BUDGET}{NO_HEALTH}",
        priced_backend("limited", &limited.url(), "priority = 100"),
        priced_backend("other", &other.url(), ""),
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    limited.set_fault(Some(Fault::rate_limited(7)));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "other");
    answer.bytes().await.unwrap();
    assert_eq!(limited.requests_to("/v1/chat/completions").len(), 2);

    // Both limited: the shorter delay is passed on, in both headers.
    other.set_fault(Some(
        Fault::status(429).with_header("retry-after-ms", "1500"),
    ));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after-ms"], "1500");
    assert_eq!(answer.headers()["retry-after"], "2");
    assert!(answer.headers().get("x-should-retry").is_none());
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("limited: answered 429"), "{message}");
    assert!(message.contains("other: answered 429"), "{message}");

    // Limited without a delay, the other down: 429, and the client's own backoff.
    limited.set_fault(Some(Fault::status(429)));
    other.set_fault(Some(Fault::status(503)));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().get("retry-after").is_none());
    answer.bytes().await.unwrap();

    after_fault(&served, &base, &[&limited, &other], 0.0).await;
}
