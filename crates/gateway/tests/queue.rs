//! A Queue decision waits and is decided again when a slot frees or a backend becomes
//! ready; it times out and fills up as `[server]` says (the refusals are checked in
//! `error_table.rs`).

mod common;

use std::time::Duration;

use common::{backend, serve, NO_HEALTH};
use nexus_core::fleet::BackendStatus;
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test]
async fn a_request_waits_for_a_free_slot_and_is_then_served() {
    let mut config = MockConfig::serving(["m"]);
    config.delay = Duration::from_millis(300);
    let mock = MockUpstream::start(config).await.unwrap();
    let config = format!(
        "{}\n[server]\nqueue_timeout_ms = 20000\n{NO_HEALTH}",
        backend("one", &mock.url(), "local", &["m"], "max_concurrency = 1")
    );
    let served = serve(&config).await;
    let first = served.chat("m");
    let second = async {
        // Ask once the first holds the only slot.
        served
            .eventually("the first in flight", |s| s.in_flight() == 1)
            .await;
        let answer = served.chat("m").await;
        (answer.status(), served.gateway.queued())
    };
    let watch = async {
        served
            .eventually("the second queued", |s| s.gateway.queued() == 1)
            .await;
    };
    let (first, (second, _), ()) = tokio::join!(first, second, watch);
    assert_eq!(first.status(), 200);
    assert_eq!(second, 200);
    assert_eq!(mock.requests_to("/v1/chat/completions").len(), 2);
    assert_eq!(served.gateway.queued(), 0);
    assert_eq!(served.in_flight(), 0);
}

#[tokio::test]
async fn a_request_waits_for_a_loading_backend_to_become_ready() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}\n[server]\nqueue_timeout_ms = 20000\n{NO_HEALTH}",
        backend("gpu", &mock.url(), "local", &["m"], "status = \"loading\"")
    );
    let served = serve(&config).await;
    let ready = async {
        served
            .eventually("queued", |s| s.gateway.queued() == 1)
            .await;
        let router = served.gateway.router();
        let fleet = router.fleet();
        fleet.set_status(fleet.backends()[0].id(), BackendStatus::Healthy);
        served.gateway.wake_queue();
    };
    let (answer, ()) = tokio::join!(served.chat("m"), ready);
    assert_eq!(answer.status(), 200);
    assert_eq!(served.gateway.queued(), 0);
}

#[tokio::test]
async fn a_ready_fallback_serves_when_waiting_would_outlast_the_timeout() {
    let mock = MockUpstream::start(MockConfig::serving(["small"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[routing.fallbacks]\n\"big\" = [\"small\"]\n[server]\nqueue_timeout_ms = 0\n{NO_HEALTH}",
        backend("loading", "http://127.0.0.1:9", "local", &["big"], "status = \"loading\""),
        backend("ready", &mock.url(), "local", &["small"], ""),
    );
    let served = serve(&config).await;
    let answer = served.chat("big").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "ready");
    assert_eq!(answer.headers()["x-nexus-fallback-model"], "small");
    assert!(answer.headers()["x-nexus-route-reason"]
        .to_str()
        .unwrap()
        .contains("fallback"));
}
