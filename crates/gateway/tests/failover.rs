//! A failure before the first byte (a 5xx, a refused connection) is recorded and the
//! request is decided again without that backend, up to `[server] max_attempts`.

mod common;

use common::checks::{after_fault, priced_backend, serial, Baseline, BUDGET};
use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn a_5xx_or_a_refused_connection_fails_over_to_the_next_backend() {
    let _serial = serial().await;
    let first = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let second = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{NO_HEALTH}",
        backend("first", &first.url(), "local", &["m"], "priority = 100"),
        backend("second", &second.url(), "local", &["m"], ""),
    );
    let served = serve(&config).await;

    first.fault_next(1, Fault::status(503));
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "second");
    assert_eq!(first.requests_to("/v1/chat/completions").len(), 1);
    assert_eq!(second.requests_to("/v1/chat/completions").len(), 1);

    first.stop_listening().await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "second");
    assert_eq!(served.in_flight(), 0);

    // The failures reached the quality stage.
    let router = served.gateway.router();
    let quality = router
        .pipeline()
        .stage_of::<nexus_router::quality::QualityReconciler>()
        .unwrap();
    let first_id = served
        .gateway
        .router()
        .fleet()
        .backend_by_name("first")
        .unwrap()
        .id();
    let stats = quality
        .tracker()
        .stats_at(first_id, quality.tracker().now_secs())
        .unwrap();
    assert!(stats.error_rate_1h() > 0.0);
}

#[tokio::test]
async fn attempts_stop_at_max_attempts() {
    let _serial = serial().await;
    let mocks = [
        MockUpstream::start(MockConfig::serving(["m"]))
            .await
            .unwrap(),
        MockUpstream::start(MockConfig::serving(["m"]))
            .await
            .unwrap(),
        MockUpstream::start(MockConfig::serving(["m"]))
            .await
            .unwrap(),
    ];
    let mut config = String::new();
    for (i, mock) in mocks.iter().enumerate() {
        mock.set_fault(Some(Fault::status(500)));
        config.push_str(&backend(&format!("b{i}"), &mock.url(), "local", &["m"], ""));
    }
    config.push_str(&format!("\n[server]\nmax_attempts = 2\n{NO_HEALTH}"));
    let served = serve(&config).await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{body}"
    );
    let sent: usize = mocks
        .iter()
        .map(|m| m.requests_to("/v1/chat/completions").len())
        .sum();
    assert_eq!(sent, 2);
    assert_eq!(served.in_flight(), 0);
}

#[tokio::test]
async fn refused_connections_fail_over_then_502_and_leave_nothing_behind() {
    let _serial = serial().await;
    let first = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let second = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{BUDGET}{NO_HEALTH}",
        priced_backend("first", &first.url(), "priority = 100"),
        priced_backend("second", &second.url(), ""),
    );
    let served = serve(&config).await;
    let base = Baseline::take(&served, "m").await;

    first.stop_listening().await;
    for _ in 0..3 {
        let answer = served.chat("m").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-nexus-backend"], "second");
        answer.bytes().await.unwrap();
    }
    second.stop_listening().await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot connect"), "{message}");
    assert_eq!(body["error"]["code"], "upstream_error");

    first.resume_listening().await.unwrap();
    second.resume_listening().await.unwrap();
    after_fault(&served, &base, &[&first, &second], 0.0).await;
}
