//! The building blocks together against the mock upstream: a client's body read and
//! rewritten reaches the upstream byte for byte, and the upstream's stream, inspected on
//! the way back, settles on the usage the upstream declared.

use axum::http::Request;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use nexus_gateway::sse::SseInspector;
use nexus_gateway::upstream::{self, OutgoingBody};
use nexus_gateway::wire::{Endpoint, RequestBody, Usage};
use nexus_testkit::{MockConfig, MockUpstream, MockUsage};

const SERVING: &str = "llama3:8b";

async fn mock() -> MockUpstream {
    let config = MockConfig {
        usage: MockUsage {
            prompt_tokens: 21,
            completion_tokens: 5,
        },
        ..MockConfig::serving([SERVING])
    };
    MockUpstream::start(config).await.expect("a mock")
}

#[tokio::test]
async fn the_rewritten_body_reaches_the_upstream_as_sent_but_for_the_model() {
    let mock = mock().await;
    let sent = br#"{ "model": "gpt-4",  "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.50 }"#;
    let read = RequestBody::parse(Endpoint::ChatCompletions, sent).unwrap();
    let body = read.rewrite(SERVING);
    let request = Request::post(format!(
        "{}{}",
        mock.url(),
        Endpoint::ChatCompletions.path()
    ))
    .header("content-type", "application/json")
    .body(OutgoingBody::from(body.clone()))
    .unwrap();
    let response = upstream::client_builder()
        .build()
        .unwrap()
        .send(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        Usage::from_response(&answer),
        Some(Usage {
            prompt_tokens: 21,
            completion_tokens: 5
        })
    );

    let received = &mock.requests()[0];
    assert_eq!(received.body, body);
    assert_eq!(
        std::str::from_utf8(&received.body).unwrap(),
        r#"{ "model": "llama3:8b",  "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.50 }"#
    );
    assert_eq!(
        received.header("user-agent"),
        Some(nexus_gateway::upstream::USER_AGENT)
    );
}

#[tokio::test]
async fn a_stream_settles_on_the_usage_the_client_did_not_ask_to_see() {
    let mock = mock().await;
    let sent =
        br#"{"model": "gpt-4", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#;
    let read = RequestBody::parse(Endpoint::ChatCompletions, sent).unwrap();
    assert!(!read.summary().include_usage);
    let request = Request::post(format!(
        "{}{}",
        mock.url(),
        Endpoint::ChatCompletions.path()
    ))
    .body(OutgoingBody::from(read.rewrite(SERVING)))
    .unwrap();
    let response = upstream::client_builder()
        .build()
        .unwrap()
        .send(request)
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    let mut inspector = SseInspector::new(read.summary().include_usage);
    let mut to_client = Vec::new();
    let mut first_content = 0;
    let mut chunks = response.into_body().into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let step = inspector.push(chunk.unwrap());
        assert!(step.problems.is_empty(), "{:?}", step.problems);
        first_content += usize::from(step.first_content);
        to_client.extend_from_slice(&step.forward);
    }
    let last = inspector.finish();
    assert!(last.forward.is_empty() && last.problems.is_empty());

    let declared = mock.declared_usage();
    assert_eq!(declared.answers, 1, "the upstream was asked for usage");
    assert_eq!(
        inspector.usage(),
        Some(Usage {
            prompt_tokens: declared.prompt_tokens,
            completion_tokens: declared.completion_tokens
        })
    );
    assert!(inspector.is_done());
    assert_eq!(first_content, 1);
    let text = String::from_utf8(to_client).unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "the usage chunk was dropped: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}
