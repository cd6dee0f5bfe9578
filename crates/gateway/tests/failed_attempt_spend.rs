//! A failed attempt costs nothing: when a backend answers 5xx, or nothing before
//! `first_byte_timeout_ms`, and the request fails over, the budget ledger settles only
//! the usage of the answer that came back (the soak found the ledger charging each failed
//! attempt its estimate).

mod common;

use common::{serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

/// Two cloud backends at $1 per thousand tokens in and $2 per thousand out; the first is
/// preferred by far (the score is proportional to the priority).
fn priced(first: &str, second: &str) -> String {
    let backend = |id: &str, url: &str, priority: u32| {
        format!(
            "[[backends]]\nid = \"{id}\"\nurl = \"{url}\"\nzone = \"cloud\"\npriority = {priority}\n  [[backends.models]]\n  name = \"m\"\n  input_usd_per_mtok = 1000.0\n  output_usd_per_mtok = 2000.0\n"
        )
    };
    format!(
        "{}{}[routing.budget]\nmonthly_limit_usd = 100.0\n[server]\nfirst_byte_timeout_ms = 300\n{NO_HEALTH}",
        backend("first", first, 100),
        backend("second", second, 1),
    )
}

#[tokio::test]
async fn failed_attempts_settle_nothing_and_the_answer_its_usage() {
    for fault in [Fault::status(500), Fault::HangBeforeHeaders] {
        // A fresh gateway per fault: the quality stage remembers failures.
        let first = MockUpstream::start(MockConfig::serving(["m"]))
            .await
            .expect("a mock");
        let second = MockUpstream::start(MockConfig::serving(["m"]))
            .await
            .expect("a mock");
        let served = serve(&priced(&first.url(), &second.url())).await;
        first.set_fault(Some(fault.clone()));
        let answer = served.chat("m").await;
        assert_eq!(answer.status(), 200, "{fault:?}");
        answer.bytes().await.expect("a body");
        served
            .eventually("every route settled", |s| s.in_flight() == 0)
            .await;
        // The attempt reached the first backend and failed there; the second answered.
        assert_eq!(first.request_count(), 1, "{fault:?}");
        assert_eq!(first.declared_usage().answers, 0, "{fault:?}");
        let declared = second.declared_usage();
        assert_eq!(declared.answers, 1, "{fault:?}");
        let expected =
            declared.prompt_tokens as f64 * 0.001 + declared.completion_tokens as f64 * 0.002;
        assert!(
            (served.settled_usd() - expected).abs() < 1e-9,
            "{fault:?}: settled {} against {expected} declared",
            served.settled_usd()
        );
        assert_eq!(served.reserved_usd(), 0.0, "{fault:?}");
        served.stop().await;
    }
}
