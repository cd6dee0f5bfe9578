//! Clients that open connections and send nothing (or half a request head): each is
//! closed after `[server] header_read_timeout_ms`, so they cannot hold sockets and tasks
//! forever, and requests from other clients are served meanwhile.

mod common;

use std::time::Duration;

use common::checks::{after_fault, open_fds, priced_backend, serial, Baseline, BUDGET};
use common::{serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_read_timeout() {
    let _serial = serial().await;
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nheader_read_timeout_ms = 300\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    let mut silent = Vec::new();
    for i in 0..100 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        if i % 2 == 1 {
            // Half a request head, then nothing.
            stream
                .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: nexus\r\n")
                .await
                .unwrap();
        }
        silent.push(stream);
    }
    // The silent connections are open (both ends in this process) while others are served.
    assert!(open_fds() >= base.fds + 200, "{} fds", open_fds());
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200, "served while the silent ones wait");
    answer.bytes().await.unwrap();

    for mut stream in silent {
        let mut buf = Vec::new();
        // Closed by the gateway: the read ends (with an error status, or none).
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
            .await
            .expect("the gateway closes a silent connection");
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    after_fault(&served, &base, &[&mock], 0.0).await;
}

#[tokio::test]
async fn the_header_read_timeout_does_not_cut_a_long_answer() {
    let _serial = serial().await;
    let mut config = MockConfig::serving(["m"]);
    config.chunks = 8;
    config.chunk_interval = Duration::from_millis(150);
    let mock = MockUpstream::start(config).await.unwrap();
    let config = format!(
        "{}\n[server]\nheader_read_timeout_ms = 200\n{BUDGET}{NO_HEALTH}",
        priced_backend("b", &mock.url(), "")
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;
    // About 1.2 s of events, six times the header read timeout, on a kept-alive
    // connection: the timeout covers waiting for a request head, not answering one.
    for _ in 0..2 {
        let text = served
            .post("/v1/chat/completions", &common::chat_body("m", true))
            .await
            .text()
            .await
            .unwrap();
        let data = common::events(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    }
    after_fault(&served, &base, &[&mock], 0.0).await;
}
