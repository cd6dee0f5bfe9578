//! An upstream that trickles its answer a byte at a time: every byte is activity, so
//! `idle_timeout_ms` does not end it; the client gets whole events (the gateway holds
//! at most one incomplete event) and the answer settles from its reported usage. A
//! trickle slower than the idle timeout breaks like a hang.

mod common;

use std::time::Duration;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, events, serve, NO_HEALTH};
use futures_util::StreamExt;
use nexus_testkit::{Fault, MockConfig, MockUpstream};

fn config(mock: &MockUpstream, idle_timeout_ms: u64) -> String {
    format!(
        "{}\n[server]\nidle_timeout_ms = {idle_timeout_ms}\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    )
}

#[tokio::test]
async fn a_trickle_faster_than_the_idle_timeout_completes() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let served = serve(&config(&mock, 500)).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::Trickle {
        interval: Duration::from_millis(1),
    }));

    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    for event in &data[..data.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(event).expect("whole JSON events");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }

    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 20);
    // Both answers completed: billed exactly what the mock reported.
    after_fault(&served, &base, &[&mock], 0.0).await;
}

#[tokio::test]
async fn a_trickle_of_a_byte_a_second_holds_its_slot_until_the_client_goes() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    // A byte a second never leaves the connection silent for the idle timeout.
    let served = serve(&config(&mock, 1_500)).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::Trickle {
        interval: Duration::from_secs(1),
    }));
    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let early = tokio::time::timeout(Duration::from_millis(3_500), body.next()).await;
    assert!(
        early.is_err(),
        "no whole event yet, and the stream was not ended: {early:?}"
    );
    assert_eq!(
        served.in_flight(),
        1,
        "still streaming past the idle timeout"
    );
    drop(body);
    served
        .eventually("the client's disconnect settled", |s| s.in_flight() == 0)
        .await;
    // No usage arrived: the gateway billed its estimate for the cut answer.
    after_fault(&served, &base, &[&mock], 0.2).await;
}

#[tokio::test]
async fn a_trickle_slower_than_the_idle_timeout_breaks() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let served = serve(&config(&mock, 100)).await;
    let base = Baseline::take(&served, "m").await;
    mock.set_fault(Some(Fault::Trickle {
        interval: Duration::from_millis(400),
    }));
    let text = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await
        .text()
        .await
        .unwrap();
    let data = events(&text);
    assert_eq!(data.len(), 1, "{text}");
    assert!(data[0].contains("idle_timeout_ms"), "{text}");
    after_fault(&served, &base, &[&mock], 0.2).await;
}
