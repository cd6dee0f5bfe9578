//! A backend's redirect is relayed to the client, not followed: the backend's URL is where
//! it answers, and following would resend the body elsewhere (or turn the POST into a GET).

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn a_redirect_is_relayed_and_the_route_settled() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .expect("a mock");
    // Where the redirect points: a second mock that must see nothing.
    let elsewhere = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .expect("a mock");
    mock.fault_next(
        1,
        Fault::status(307).with_header(
            "location",
            format!("{}/v1/chat/completions", elsewhere.url()),
        ),
    );
    let served = serve(&format!(
        "{}{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    ))
    .await;
    let answer = served.chat("m").await;
    assert_eq!(answer.status(), 307);
    assert_eq!(mock.request_count(), 1);
    assert_eq!(elsewhere.request_count(), 0);
    served
        .eventually("the route is settled", |s| s.in_flight() == 0)
        .await;
    // The next request is served as usual.
    assert_eq!(served.chat("m").await.status(), 200);
    served.stop().await;
}
