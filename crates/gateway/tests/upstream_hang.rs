//! An upstream that hangs: before the headers it is a failed attempt after
//! `first_byte_timeout_ms`; mid-stream the stream ends with an error event after
//! `idle_timeout_ms`. Either way the guard settles as a failure.

mod common;

use common::{backend, chat_body, events, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn a_hang_before_the_headers_is_a_failed_attempt() {
    let hung = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    hung.set_fault(Some(Fault::HangBeforeHeaders));
    let good = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[server]\nfirst_byte_timeout_ms = 200\n{NO_HEALTH}",
        backend("hung", &hung.url(), "local", &["m"], "priority = 100"),
        backend("good", &good.url(), "local", &["m"], ""),
    );
    let served = serve(&config).await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "good");

    good.set_fault(Some(Fault::HangBeforeHeaders));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("first_byte_timeout_ms"), "{message}");
    assert_eq!(served.in_flight(), 0);
}

#[tokio::test]
async fn a_hang_mid_stream_ends_with_an_error_event() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    mock.set_fault(Some(Fault::HangMidStream { after_events: 2 }));
    let config = format!(
        "{}\n[server]\nidle_timeout_ms = 200\n{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    );
    let served = serve(&config).await;
    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200, "the headers were already sent");
    let text = answer.text().await.unwrap();
    let data = events(&text);
    assert_eq!(data.len(), 3, "{text}");
    let error: serde_json::Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("idle_timeout_ms"));
    served.eventually("settled", |s| s.in_flight() == 0).await;
    assert_eq!(
        mock.requests_to("/v1/chat/completions").len(),
        1,
        "never retried after the first byte"
    );
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_an_error_event() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    mock.set_fault(Some(Fault::ResetMidStream { after_events: 1 }));
    let config = format!(
        "{}{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    );
    let served = serve(&config).await;
    let text = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await
        .text()
        .await
        .unwrap();
    let data = events(&text);
    assert!(
        data.last().unwrap().contains("\"upstream_error\""),
        "{text}"
    );
    served.eventually("settled", |s| s.in_flight() == 0).await;
}
