//! With the `otlp` feature, `nexus serve` exports its spans over OTLP/HTTP to the
//! endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT`, with the GenAI attribute names; all of
//! it is sent by the time the process exits. (`.ci/run` runs this file with
//! `--features otlp`; without the feature it is empty.)
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use nexus_testkit::{MockConfig, MockUpstream};

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_genai_attributes() {
    let received: Received = Arc::default();
    let collector = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(received): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received.lock().unwrap().push((kind, body));
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("nexus-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nid = \"b\"\nurl = \"{}\"\nzone = \"local\"\nmodels = [{{ name = \"m\" }}]\n[health]\ninterval_secs = 0\n",
            mock.url()
        ),
    )
    .unwrap();
    let (mut child, addr) = common::spawn_serving(
        common::serve_command(&config)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "nexus-under-test"),
        |_| {},
    );
    let client = common::http_client();
    let body = serde_json::json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let answer = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.bytes().await.unwrap();
    // Stopping flushes the batch: nothing is left unsent at exit.
    common::terminate(&child);
    let status =
        tokio::task::spawn_blocking(move || common::wait_exit(&mut child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "no export reached the collector");
    assert!(received
        .iter()
        .all(|(kind, _)| kind == "application/x-protobuf"));
    let all: Vec<u8> = received.iter().flat_map(|(_, b)| b.to_vec()).collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    for name in [
        "nexus-under-test",
        "nexus.decide",
        // Each attempt is a GenAI client span, named by the operation and the model.
        "chat m",
        "nexus.stream",
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.provider.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "http.response.status_code",
    ] {
        assert!(has(name), "{name} not exported");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
