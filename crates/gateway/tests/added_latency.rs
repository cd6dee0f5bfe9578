//! The gateway's added latency: a chat request through the gateway against the same
//! mock called directly, sequentially, median and p99, measured twice in one run.
//! Ignored by default (it measures, it does not check); run it in release:
//!
//! ```sh
//! cargo test --release -p nexus-gateway --test added_latency -- --ignored --nocapture
//! ```
//!
//! `NEXUS_LATENCY_REQUESTS` sets the requests per series (default 2000).
//! `NEXUS_LATENCY_LOGS=text` or `json` installs the log subscriber `nexus serve` uses
//! (`json-with-spans`: a JSON subscriber that also keeps every span's fields),
//! at info, writing to nothing: the request's spans and its log line are then paid for,
//! as in production (without it no subscriber listens and spans cost next to nothing).

mod common;

use std::time::{Duration, Instant};

use common::{backend, chat_body, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn once(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let answer = client.post(url).json(body).send().await.expect("an answer");
    assert_eq!(answer.status(), 200);
    answer.bytes().await.expect("a body");
    started.elapsed()
}

/// `n` requests to each URL, alternating, so that both series see the same moments of a
/// shared machine; each series sorted.
async fn series(
    client: &reqwest::Client,
    direct: &str,
    gateway: &str,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let body = chat_body("m", false);
    let (mut d, mut g) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        d.push(once(client, direct, &body).await);
        g.push(once(client, gateway, &body).await);
    }
    d.sort_unstable();
    g.sort_unstable();
    (d, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
async fn added_latency_median_and_p99() {
    let n: usize = std::env::var("NEXUS_LATENCY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    match std::env::var("NEXUS_LATENCY_LOGS").as_deref() {
        Ok("text") => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .with_target(false)
            .init(),
        // As `nexus serve` sets it up: events only, without their spans.
        Ok("json") => {
            use tracing_subscriber::filter::{filter_fn, FilterExt as _, LevelFilter};
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            use tracing_subscriber::Layer as _;
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .json()
                .with_current_span(false)
                .with_span_list(false)
                .with_filter(LevelFilter::INFO.and(filter_fn(|m| m.is_event())));
            tracing_subscriber::registry().with(layer).init();
        }
        Ok("json-with-spans") => tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .json()
            .init(),
        _ => {}
    }
    let mut config = MockConfig::serving(["m"]);
    config.record = false;
    let mock = MockUpstream::start(config).await.unwrap();
    let served = serve(&format!(
        "{}{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "max_concurrency = 64")
    ))
    .await;
    let client = served.client.clone();
    let direct_url = format!("{}/chat/completions", mock.base_url());
    let gateway_url = served.url("/v1/chat/completions");
    // Warm both paths (connections, allocator, caches).
    series(&client, &direct_url, &gateway_url, 200).await;
    println!("{n} sequential non-streamed chat requests per series, direct and through the gateway alternating, keep-alive connections");
    println!("run  direct p50  direct p99  gateway p50  gateway p99  added p50  added p99");
    for run in 1..=2 {
        let (direct, gateway) = series(&client, &direct_url, &gateway_url, n).await;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
        let (g50, g99) = (percentile(&gateway, 0.5), percentile(&gateway, 0.99));
        println!(
            "{run}    {:>7.0} us  {:>7.0} us  {:>8.0} us  {:>8.0} us  {:>6.0} us  {:>6.0} us",
            us(d50),
            us(d99),
            us(g50),
            us(g99),
            us(g50) - us(d50),
            us(g99) - us(d99),
        );
    }
    assert_eq!(served.in_flight(), 0);
}
