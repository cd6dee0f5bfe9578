//! Streams pass through event by event; the upstream is always asked for usage, the
//! usage chunk reaches only clients that asked for it, and spend settles from it: the
//! budget ledger agrees with the usage the mock declared.

mod common;

use common::{chat_body, events, serve, NO_HEALTH};
use futures_util::StreamExt;
use nexus_testkit::{MockConfig, MockUpstream};

/// $1 per thousand tokens in and $2 per thousand out.
fn priced(url: &str) -> String {
    format!(
        "[[backends]]\nid = \"cloud\"\nurl = \"{url}\"\nzone = \"cloud\"\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1000.0\n  output_usd_per_mtok = 2000.0\n[routing.budget]\nmonthly_limit_usd = 100.0\n{NO_HEALTH}"
    )
}

#[tokio::test]
async fn streams_pass_through_and_settle_from_the_reported_usage() {
    let mut config = MockConfig::serving(["m"]);
    // Events apart in time, so that a relay that buffered would be seen.
    config.chunk_interval = std::time::Duration::from_millis(20);
    let mock = MockUpstream::start(config).await.unwrap();
    let served = serve(&priced(&mock.url())).await;

    // Not asked: no usage chunk for the client, but the upstream was asked.
    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    assert_eq!(answer.headers()["x-nexus-backend"], "cloud");
    let mut chunks = 0;
    let mut text = String::new();
    let mut body = answer.bytes_stream();
    while let Some(chunk) = body.next().await {
        chunks += 1;
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(chunks > 1, "relayed in pieces, not as one buffer");
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(!text.contains("\"usage\":{"), "no usage chunk: {text}");
    let sent = &mock.requests_to("/v1/chat/completions")[0];
    assert_eq!(
        sent.json().unwrap()["stream_options"]["include_usage"],
        true
    );

    // Asked: the usage chunk comes through, last before [DONE].
    let mut with_usage = chat_body("m", true);
    with_usage["stream_options"] = serde_json::json!({"include_usage": true});
    let text = served
        .post("/v1/chat/completions", &with_usage)
        .await
        .text()
        .await
        .unwrap();
    let data = events(&text);
    assert!(data[data.len() - 2].contains("\"usage\":{"), "{text}");

    // Non-streamed, too.
    assert_eq!(served.chat("m").await.status(), 200);

    served.eventually("settled", |s| s.in_flight() == 0).await;
    let declared = mock.declared_usage();
    assert_eq!(declared.answers, 3);
    let expected =
        declared.prompt_tokens as f64 * 0.001 + declared.completion_tokens as f64 * 0.002;
    assert!(
        (served.settled_usd() - expected).abs() < 1e-9,
        "{} vs {expected}",
        served.settled_usd()
    );
    assert_eq!(served.reserved_usd(), 0.0);
}
