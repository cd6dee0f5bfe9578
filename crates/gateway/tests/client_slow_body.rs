//! A client that sends its body slowly: served if the whole body arrives within
//! `[server] body_read_timeout_ms`, else answered 408 `invalid_request` when the time is
//! up; nothing is sent upstream and nothing reserved for a body that never came.

mod common;

use std::time::Duration;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, raw_head, read_answer, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_slow_body_is_served_in_time_and_408_after() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nbody_read_timeout_ms = 1000\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    let body = chat_body("m", false).to_string();

    // In 8 pieces 50 ms apart: within the timeout.
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(raw_head(body.len()).as_bytes())
        .await
        .unwrap();
    for piece in body.as_bytes().chunks(body.len().div_ceil(8)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(piece).await.unwrap();
    }
    let (status, text) = read_answer(&mut stream).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Hello from the mock upstream."), "{text}");
    drop(stream);

    // Half the body, then nothing: 408 once the timeout passes, and the upstream never
    // hears of it.
    let sent_before = mock.requests_to("/v1/chat/completions").len();
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(raw_head(body.len()).as_bytes())
        .await
        .unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let (status, text) = read_answer(&mut stream).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_read_timeout_ms"), "{text}");
    assert!(text.contains("\"invalid_request\""), "{text}");
    assert_eq!(mock.requests_to("/v1/chat/completions").len(), sent_before);
    drop(stream);
    after_fault(&served, &base, &[&mock], 0.0).await;
}
