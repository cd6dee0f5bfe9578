//! An upstream whose event stream holds broken events (data that is not JSON, a stray
//! line): the broken events are dropped, so the client (whose OpenAI library would raise
//! on them) reads a clean stream of the good ones, and the answer settles from the usage
//! the upstream reported.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, events, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn broken_events_are_dropped_and_the_rest_passes() {
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
    mock.set_fault(Some(Fault::MalformedSse));

    let mut body = chat_body("m", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let answer = served.post("/v1/chat/completions", &body).await;
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let mut reply = String::new();
    for event in &data[..data.len() - 1] {
        let chunk: serde_json::Value =
            serde_json::from_str(event).unwrap_or_else(|e| panic!("{e}: {event}"));
        if let Some(content) = chunk.pointer("/choices/0/delta/content") {
            reply.push_str(content.as_str().unwrap());
        }
    }
    assert_eq!(reply, "Hello from the mock upstream.");
    assert!(!text.contains("bro\n"), "{text}");
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    after_fault(&served, &base, &[&mock], 0.0).await;
}
