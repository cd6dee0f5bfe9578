//! An upstream that answers 200 with a body that is not JSON (an HTML error page from a
//! proxy in front of it): the gateway reads the body's first byte before it answers, so
//! this is a failed attempt like a 5xx: the next backend serves, or the client gets 502
//! `upstream_error` naming what the body started with. Nothing is billed for it.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn a_non_json_answer_fails_over_then_is_a_502() {
    let _serial = serial().await;
    let garbage = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let good = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{BUDGET}{NO_HEALTH}",
        priced_backend("garbage", &garbage.url(), "priority = 100"),
        priced_backend("good", &good.url(), ""),
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    garbage.set_fault(Some(Fault::NonJson));
    for stream in [false, true] {
        let answer = served
            .post("/v1/chat/completions", &chat_body("m", stream))
            .await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-nexus-backend"], "good");
        let text = answer.text().await.unwrap();
        assert!(!text.contains("<html>"), "{text}");
    }

    good.set_fault(Some(Fault::NonJson));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not JSON"), "{message}");
    assert!(message.contains("<html>"), "{message}");
    after_fault(&served, &base, &[&garbage, &good], 0.0).await;
}
