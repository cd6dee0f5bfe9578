//! An upstream that hangs: before the headers it is a failed attempt after
//! `first_byte_timeout_ms`; mid-stream the stream ends with an error event after
//! `idle_timeout_ms`; a reset mid-stream ends it the same way. Either way the guard
//! settles as a failure, and the checks after a fault hold.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, events, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

/// The most the gateway may bill for one answer that broke before its usage: its
/// estimate is the request's input (a few tokens) and one output token per event, at
/// most `max_tokens` (50), at the fault tests' prices.
const ONE_ESTIMATE_USD: f64 = 0.2;

#[tokio::test]
async fn a_hang_before_the_headers_is_a_failed_attempt() {
    let _serial = serial().await;
    let hung = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let good = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[server]\nfirst_byte_timeout_ms = 200\n{BUDGET}{NO_HEALTH}",
        priced_backend("hung", &hung.url(), "priority = 100"),
        priced_backend("good", &good.url(), ""),
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    hung.set_fault(Some(Fault::HangBeforeHeaders));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "good");
    answer.bytes().await.unwrap();

    good.set_fault(Some(Fault::HangBeforeHeaders));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("first_byte_timeout_ms"), "{message}");
    assert_eq!(served.in_flight(), 0);
    after_fault(&served, &base, &[&hung, &good], 0.0).await;
}

#[tokio::test]
async fn a_hang_mid_stream_ends_with_an_error_event() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nidle_timeout_ms = 200\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::HangMidStream { after_events: 2 }));
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
        2,
        "never retried after the first byte (the warm-up and this one)"
    );
    after_fault(&served, &base, &[&mock], ONE_ESTIMATE_USD).await;
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_an_error_event() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::ResetMidStream { after_events: 1 }));
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
    after_fault(&served, &base, &[&mock], ONE_ESTIMATE_USD).await;
}

#[tokio::test]
async fn a_reset_mid_body_cuts_the_client_connection() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::ResetMidStream { after_events: 1 }));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200, "the headers were already sent");
    assert!(
        answer.bytes().await.is_err(),
        "a JSON body that breaks ends the connection mid-body"
    );
    served.eventually("settled", |s| s.in_flight() == 0).await;
    after_fault(&served, &base, &[&mock], ONE_ESTIMATE_USD).await;
}
