//! A stream in flight when a reload removes its backend finishes on the config it
//! started with, and its spend settles in the ledger the new config shares.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{backend, chat_body, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_reload_that_removes_its_backend_and_settles() {
    let mut slow = MockConfig::serving(["m"]);
    slow.chunks = 6;
    slow.chunk_interval = Duration::from_millis(100);
    let old = MockUpstream::start(slow).await.unwrap();
    let new = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let priced = "  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1.0\n  output_usd_per_mtok = 1.0\n";
    let budget = "[routing.budget]\nmonthly_limit_usd = 100.0\n";
    let served = serve(&format!(
        "{}{priced}{budget}{NO_HEALTH}",
        backend("old", &old.url(), "cloud", &[], "")
    ))
    .await;
    let before = served.gateway.router();

    let answer = served
        .post("/v1/chat/completions", &chat_body("m", true))
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-nexus-backend"], "old");
    served
        .eventually("the stream is in flight", |s| s.in_flight() == 1)
        .await;
    assert!(served.reserved_usd() > 0.0);

    let summary = served
        .gateway
        .reload_str(
            "new.toml",
            &format!(
                "{}{priced}{budget}{NO_HEALTH}",
                backend("new", &new.url(), "cloud", &[], "")
            ),
        )
        .expect("the new config loads");
    assert_eq!(summary.backends_removed, ["old"]);
    // New requests go to the new backend while the old stream goes on.
    let fresh = served.chat("m").await;
    assert_eq!(fresh.headers()["x-nexus-backend"], "new");
    assert_eq!(fresh.status(), 200);
    let _ = fresh.text().await;

    let text = answer.text().await.expect("the whole stream");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let removed = before.fleet().backend_by_name("old").unwrap();
    for _ in 0..500 {
        if removed.live().in_flight() == 0 && served.reserved_usd() == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(removed.live().in_flight(), 0, "the old stream settled");
    assert_eq!(served.reserved_usd(), 0.0);
    // Both answers' spend is in the one ledger (the mock's usage, at $1/Mtok each way).
    let usage = MockConfig::default().usage;
    let one = (usage.prompt_tokens + usage.completion_tokens) as f64 / 1e6;
    let settled = served.settled_usd();
    assert!(
        (settled - 2.0 * one).abs() < 1e-12,
        "settled {settled}, expected {}",
        2.0 * one
    );
    assert!(std::sync::Arc::ptr_eq(
        served.budget().ledger(),
        before
            .pipeline()
            .stage_of::<nexus_router::budget::BudgetReconciler>()
            .unwrap()
            .ledger()
    ));
    assert_eq!(old.requests_to("/v1/chat/completions").len(), 1);
    assert_eq!(new.requests_to("/v1/chat/completions").len(), 1);
}
