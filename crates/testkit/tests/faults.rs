//! The mock's fault knobs do what issue 12's fault tests need. Every wait is bounded by a
//! client timeout or an idle limit; no test asserts how long anything took.

mod common;

use std::time::Duration;

use common::{client, events, impatient, read_body, Ending};
use nexus_testkit::{Fault, MockConfig, MockUpstream};
use serde_json::{json, Value};

const IDLE: Duration = Duration::from_millis(300);

async fn mock() -> MockUpstream {
    MockUpstream::start(MockConfig::default())
        .await
        .expect("a mock")
}

fn chat(mock: &MockUpstream, client: &reqwest::Client, stream: bool) -> reqwest::RequestBuilder {
    let body = json!({"model": "mock-model", "stream": stream, "stream_options": {"include_usage": stream}});
    client
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&body)
}

/// Whether an error was, somewhere down its chain, a connection reset.
fn is_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionReset {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

#[tokio::test]
async fn refuses_connections_while_not_listening() {
    let mock = mock().await;
    let client = client();
    assert_eq!(
        chat(&mock, &client, false).send().await.unwrap().status(),
        200
    );
    mock.stop_listening().await;
    assert!(!mock.is_listening());
    let err = chat(&mock, &client, false).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    mock.resume_listening().await.unwrap();
    assert_eq!(
        chat(&mock, &client, false).send().await.unwrap().status(),
        200
    );
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn hangs_before_headers() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::HangBeforeHeaders));
    let err = chat(&mock, &impatient(IDLE), false)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        mock.request_count(),
        1,
        "the request arrived, the answer did not"
    );
}

#[tokio::test]
async fn a_delay_holds_the_headers() {
    let mock = mock().await;
    mock.set_delay(Duration::from_secs(30));
    let err = chat(&mock, &impatient(IDLE), false)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    mock.set_delay(Duration::ZERO);
    assert_eq!(
        chat(&mock, &client(), false).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn hangs_mid_stream() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::HangMidStream { after_events: 2 }));
    let response = chat(&mock, &client(), true).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (body, ending) = read_body(response, IDLE).await;
    assert!(matches!(ending, Ending::Stalled), "{ending:?}");
    assert_eq!(events(&String::from_utf8(body).unwrap()).len(), 2);
    // A non-streaming body stops after its first half.
    let response = chat(&mock, &client(), false).send().await.unwrap();
    let (body, ending) = read_body(response, IDLE).await;
    assert!(matches!(ending, Ending::Stalled), "{ending:?}");
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert_eq!(mock.declared_usage().answers, 0);
}

#[tokio::test]
async fn resets_mid_stream() {
    let mock = mock().await;
    mock.fault_next(1, Fault::ResetMidStream { after_events: 2 });
    // The mock pauses before resetting so that the client reads the headers first; on a
    // machine too loaded for that, the reset reaches `send` instead: a reset all the same.
    match chat(&mock, &client(), true).send().await {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            let (body, ending) = read_body(response, Duration::from_secs(10)).await;
            let Ending::Failed(err) = ending else {
                panic!("the body should fail, it ended {ending:?}");
            };
            assert!(is_reset(&err), "a TCP reset, not a clean close: {err:?}");
            assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
        }
        Err(err) => assert!(is_reset(&err), "{err:?}"),
    }
    // The next request is answered normally, on a new connection.
    let response = chat(&mock, &client(), true).send().await.unwrap();
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn trickles_one_byte_at_a_time() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::Trickle {
        interval: Duration::from_millis(20),
    }));
    let response = chat(&mock, &client(), false).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let whole = 300; // the JSON answer is longer than this
    let mut stream = response.bytes_stream();
    let mut got = 0;
    for _ in 0..3 {
        let chunk = futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        got += chunk.len();
    }
    assert!(got < whole, "three reads got {got} bytes: not a trickle");
}

#[tokio::test]
async fn answers_non_json() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::NonJson));
    let response = chat(&mock, &client(), false).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err());
}

#[tokio::test]
async fn sends_malformed_sse_then_the_real_stream() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::MalformedSse));
    let text = chat(&mock, &client(), true)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("data: {\"choices\": [{\"delta\": {\"content\": \"bro\n\n"));
    assert!(text.contains("\n\nthis line has no colon\n\n"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Non-streaming requests are answered normally.
    let body: Value = chat(&mock, &client(), false)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "chat.completion");
}

#[tokio::test]
async fn answers_a_given_status_with_headers_for_the_next_requests_only() {
    let mock = mock().await;
    mock.fault_next(2, Fault::rate_limited(7));
    for _ in 0..2 {
        let response = chat(&mock, &client(), false).send().await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(
        chat(&mock, &client(), false).send().await.unwrap().status(),
        200
    );

    mock.set_fault(Some(Fault::Status {
        status: 500,
        headers: vec![],
        body: Some("oops".into()),
    }));
    let response = chat(&mock, &client(), false).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.unwrap(), "oops");
    mock.set_fault(None);
    assert_eq!(
        chat(&mock, &client(), false).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn faults_spare_the_listings_which_fail_on_their_own_knob() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::status(500)));
    let tags = format!("{}/api/tags", mock.url());
    assert_eq!(client().get(&tags).send().await.unwrap().status(), 200);
    mock.set_fault(None);
    mock.set_listings_failing(true);
    assert_eq!(client().get(&tags).send().await.unwrap().status(), 503);
    assert_eq!(
        chat(&mock, &client(), false).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn dropping_the_mock_ends_hung_answers() {
    let mock = mock().await;
    mock.set_fault(Some(Fault::HangMidStream { after_events: 1 }));
    let response = chat(&mock, &client(), true).send().await.unwrap();
    drop(mock);
    let (_, ending) = read_body(response, Duration::from_secs(10)).await;
    assert!(!matches!(ending, Ending::Stalled), "{ending:?}");
}
