//! A restricted model never reaches a cloud backend, checked on the mocks' side: not
//! when the local backend serves, not when it is down, not when it fails.

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

#[tokio::test]
async fn restricted_traffic_stays_local_whatever_happens() {
    let local = MockUpstream::start(MockConfig::serving(["secret", "open"]))
        .await
        .unwrap();
    let cloud = MockUpstream::start(MockConfig::serving(["secret", "open"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[[routing.policies]]\nmodel_pattern = \"secret*\"\nprivacy = \"restricted\"\n{NO_HEALTH}",
        backend("local", &local.url(), "local", &["secret", "open"], ""),
        backend("cloud", &cloud.url(), "cloud", &["secret", "open"], "priority = 100"),
    );
    let served = serve(&config).await;

    for _ in 0..5 {
        let answer = served.chat("secret").await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-nexus-privacy-zone"], "local");
    }
    // The local backend fails: failover must not take it to the cloud.
    local.set_fault(Some(Fault::status(500)));
    assert_eq!(served.chat("secret").await.status(), 502);
    local.set_fault(None);
    // The local backend is down.
    let router = served.gateway.router();
    let fleet = router.fleet();
    fleet.set_status(
        fleet.backend_by_name("local").unwrap().id(),
        nexus_core::fleet::BackendStatus::Unhealthy,
    );
    let answer = served.chat("secret").await;
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    let rejections = body["error"]["nexus"]["rejections"].as_array().unwrap();
    assert!(rejections
        .iter()
        .any(|r| r["backend"] == "cloud" && r["reconciler"] == "privacy"));

    assert_eq!(
        cloud.requests_to("/v1/chat/completions").len(),
        0,
        "nothing restricted reached the cloud"
    );
    // Unrestricted traffic may go there.
    assert_eq!(
        served.chat("open").await.headers()["x-nexus-backend"],
        "cloud"
    );
    assert_eq!(cloud.requests_to("/v1/chat/completions").len(), 1);
}
