//! The upstream client reads each connection into a fixed buffer
//! (`upstream::DEFAULT_READ_BUFFER`, 4 KiB): an answer larger than it, a JSON body or one
//! event of a stream, still reaches the client whole and settles on the usage it
//! declared; an answer whose *headers* do not fit is a failed attempt, which fails over
//! and otherwise is a 502 that says so.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, events, serve, NO_HEALTH};
use nexus_gateway::upstream::DEFAULT_READ_BUFFER;
use nexus_testkit::{MockConfig, MockUpstream, MockUsage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reply 25 times the read buffer, of varied text so that a lost or repeated piece
/// shows.
fn long_reply() -> String {
    (0..)
        .map(|i: u32| format!("{i:06} "))
        .take(25 * DEFAULT_READ_BUFFER / 7)
        .collect()
}

#[tokio::test]
async fn answers_larger_than_the_read_buffer_arrive_whole() {
    let _serial = serial().await;
    let reply = long_reply();
    let mock = MockUpstream::start(MockConfig {
        reply: reply.clone(),
        // Two events of about 12 buffers each.
        chunks: 2,
        usage: MockUsage {
            prompt_tokens: 7,
            completion_tokens: 9,
        },
        ..MockConfig::serving(["m"])
    })
    .await
    .unwrap();
    let config = format!(
        "{}{BUDGET}{NO_HEALTH}",
        priced_backend("big", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    let answer = served
        .post("/v1/chat/completions", &chat_body("m", false))
        .await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], reply.as_str());

    let mut streamed = chat_body("m", true);
    streamed["stream_options"] = serde_json::json!({"include_usage": true});
    let answer = served.post("/v1/chat/completions", &streamed).await;
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let mut content = String::new();
    let mut usage = None;
    for data in events(&text) {
        if data == "[DONE]" {
            continue;
        }
        let event: serde_json::Value = serde_json::from_str(&data).unwrap();
        if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if !event["usage"].is_null() {
            usage = Some(event["usage"].clone());
        }
    }
    assert_eq!(content, reply, "the events arrived whole and in order");
    assert_eq!(usage.unwrap()["completion_tokens"], 9);

    // Both settled on the usage the mock declared, read from the end of each answer.
    after_fault(&served, &base, &[&mock], 0.0).await;
}

/// A server that answers every request with a 200 whose headers are `header_bytes` long.
async fn big_headers_upstream(header_bytes: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-padding: {}\r\ncontent-length: 2\r\n\r\n{{}}",
                    "p".repeat(header_bytes)
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn headers_larger_than_the_read_buffer_fail_the_attempt() {
    let _serial = serial().await;
    let big = big_headers_upstream(2 * DEFAULT_READ_BUFFER).await;
    let good = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{BUDGET}{NO_HEALTH}",
        priced_backend("big", &big, "priority = 100"),
        priced_backend("good", &good.url(), ""),
    );
    let served = serve(&config).await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "good");
    drop(served);

    let alone = serve(&format!(
        "{}{BUDGET}{NO_HEALTH}",
        priced_backend("big", &big, "")
    ))
    .await;
    let answer = alone.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("too large"), "{message}");
    alone
        .eventually("the failed attempt settled", |s| s.in_flight() == 0)
        .await;
    assert_eq!(alone.settled_usd(), 0.0, "nothing billed for it");
}
