//! A backend's key (from its `api_key_env`) is sent to that backend only, as
//! `Authorization: Bearer`, and never echoed; the client's own key stays here.

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{Fault, MockConfig, MockUpstream};

const VAR: &str = "NEXUS_GATEWAY_TEST_KEY_API_KEYS";
const KEY: &str = "sk-test-only-for-the-keyed-backend";

#[tokio::test]
async fn keys_go_only_to_their_backend() {
    // This test binary has one test: nothing else reads the environment meanwhile.
    std::env::set_var(VAR, KEY);
    let keyed = MockUpstream::start(MockConfig::serving(["k"]))
        .await
        .unwrap();
    let plain = MockUpstream::start(MockConfig::serving(["p"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}\n[health]\ninterval_secs = 3600\n",
        backend(
            "keyed",
            &keyed.url(),
            "cloud",
            &["k"],
            &format!("api_key_env = \"{VAR}\"")
        ),
        backend("plain", &plain.url(), "local", &["p"], ""),
    );
    let served = serve(&config).await;
    for model in ["k", "p"] {
        let answer = served
            .client
            .post(served.url("/v1/chat/completions"))
            .header("authorization", "Bearer sk-the-clients-own")
            .json(&common::chat_body(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Inference and health checks alike.
    let keyed_requests = keyed.requests();
    assert!(keyed_requests.len() >= 2, "a health check and a chat");
    for request in &keyed_requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str()),
            "{}",
            request.path
        );
    }
    for request in plain.requests() {
        assert_eq!(request.header("authorization"), None, "{}", request.path);
    }

    // Never echoed: not in a refusal, not in the backends listing.
    keyed.set_fault(Some(Fault::status(500)));
    let refusal = served.chat("k").await.text().await.unwrap();
    assert!(!refusal.contains(KEY), "{refusal}");
    let listing = served
        .client
        .get(served.url("/v1/nexus/backends"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(KEY));
    assert!(
        !format!("{:?}", served.gateway).contains(KEY),
        "Debug hides it"
    );
    let _ = NO_HEALTH;
}
