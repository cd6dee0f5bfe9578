//! Helpers shared by the mock's tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::StreamExt;

/// A client for the mock: plain HTTP, but reqwest still wants a TLS provider chosen.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// A client that gives up after `timeout`.
pub fn impatient(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("a client")
}

/// The `data:` values of an event-stream body.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Reads a body chunk by chunk until it ends, fails, or `idle` passes with nothing;
/// returns what arrived and how it ended.
pub async fn read_body(response: reqwest::Response, idle: Duration) -> (Vec<u8>, Ending) {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    loop {
        match tokio::time::timeout(idle, chunks.next()).await {
            Err(_) => return (body, Ending::Stalled),
            Ok(None) => return (body, Ending::Complete),
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            Ok(Some(Err(e))) => return (body, Ending::Failed(e)),
        }
    }
}

/// How reading a body ended.
#[derive(Debug)]
pub enum Ending {
    Complete,
    Stalled,
    Failed(reqwest::Error),
}
