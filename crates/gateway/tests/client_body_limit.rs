//! A body over `[server] max_body_bytes`: refused with 413 `invalid_request` at once
//! when its `content-length` says so (before the body is read), and as soon as the limit
//! is passed when it comes chunked; a body at the limit is served. Nothing over the limit
//! is sent upstream.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{chat_body, raw_head, read_answer, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: usize = 1024;

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nmax_body_bytes = {LIMIT}\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    let sent_before = mock.requests_to("/v1/chat/completions").len();

    // Declared too large: answered before a byte of the body is sent.
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(raw_head(1 << 30).as_bytes())
        .await
        .unwrap();
    let (status, text) = read_answer(&mut stream).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("max_body_bytes"), "{text}");
    assert!(text.contains("\"invalid_request\""), "{text}");
    drop(stream);

    // Chunked, no length: refused once the limit is passed.
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: nexus\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let piece = format!("{:x}\r\n{}\r\n", 512, " ".repeat(512));
    for _ in 0..4 {
        // The gateway may answer and close before every piece is written.
        if stream.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let (status, text) = read_answer(&mut stream).await;
    assert_eq!(status, 413, "{text}");
    drop(stream);

    // At the limit exactly: served.
    let mut body = chat_body("m", false).to_string();
    body.push_str(&" ".repeat(LIMIT - body.len()));
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(raw_head(LIMIT).as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let (status, text) = read_answer(&mut stream).await;
    assert_eq!(status, 200, "{text}");
    drop(stream);

    assert_eq!(
        mock.requests_to("/v1/chat/completions").len(),
        sent_before + 1,
        "only the body at the limit went upstream"
    );
    after_fault(&served, &base, &[&mock], 0.0).await;
}
