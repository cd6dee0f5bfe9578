//! A client that goes away mid-stream cancels the upstream request, and the route
//! guard settles what was used: in flight back to 0, nothing left reserved.

mod common;

use std::time::Duration;

use common::{chat_body, serve, NO_HEALTH};
use futures_util::StreamExt;
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test]
async fn a_disconnect_cancels_the_upstream_and_settles_the_guard() {
    let mut config = MockConfig::serving(["m"]);
    config.chunks = 10;
    config.chunk_interval = Duration::from_millis(100);
    let mock = MockUpstream::start(config).await.unwrap();
    let config = format!(
        "[[backends]]\nid = \"cloud\"\nurl = \"{}\"\nzone = \"cloud\"\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1000.0\n  output_usd_per_mtok = 1000.0\n[routing.budget]\nmonthly_limit_usd = 100.0\n{NO_HEALTH}",
        mock.url()
    );
    let served = serve(&config).await;
    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let first = body.next().await.expect("a first event").unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(served.in_flight(), 1);
    assert!(served.reserved_usd() > 0.0);
    drop(body);

    served
        .eventually("the guard settled", |s| s.in_flight() == 0)
        .await;
    assert_eq!(served.reserved_usd(), 0.0, "the reservation is settled");
    assert!(
        served.settled_usd() > 0.0,
        "what was used is billed (an estimate)"
    );
    // Had the upstream kept streaming, its usage event would have been sent by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        mock.declared_usage().answers,
        0,
        "the upstream request was cancelled"
    );
}
