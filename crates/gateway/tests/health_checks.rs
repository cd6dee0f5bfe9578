//! Active health checks turn status live: a backend that fails its checks becomes
//! unhealthy (at once on the first round), one that answers again becomes healthy, and
//! an Ollama's loaded models are picked up.

mod common;

use common::{backend, serve};
use nexus_core::fleet::BackendStatus;
use nexus_testkit::{MockConfig, MockUpstream};

#[tokio::test]
async fn status_follows_the_checks() {
    let mut ollama_config = MockConfig::serving(["llama3:8b", "mistral:7b"]);
    ollama_config.loaded = Some(vec!["llama3:8b".to_owned()]);
    let ollama = MockUpstream::start(ollama_config).await.unwrap();
    let openai = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{}{}\n[health]\ninterval_secs = 1\ntimeout_ms = 500\nunhealthy_after = 2\n",
        backend(
            "ollama",
            &ollama.url(),
            "local",
            &["llama3:8b"],
            "type = \"ollama\""
        ),
        backend("vllm", &openai.base_url(), "local", &["m"], ""),
        backend("nothing", "http://127.0.0.1:9", "local", &["m"], ""),
    );
    let served = serve(&config).await;
    let status = |s: &common::Served, name: &str| {
        s.gateway
            .router()
            .fleet()
            .backend_by_name(name)
            .unwrap()
            .live()
            .status()
    };
    // The first round ran before serving: the dead one is unhealthy already.
    served
        .eventually("first round", |s| {
            status(s, "nothing") == BackendStatus::Unhealthy
        })
        .await;
    assert_eq!(status(&served, "ollama"), BackendStatus::Healthy);
    assert_eq!(status(&served, "vllm"), BackendStatus::Healthy);
    assert!(ollama.requests_to("/api/tags").len() == 1 && ollama.requests_to("/api/ps").len() == 1);
    assert_eq!(
        openai.requests_to("/v1/models").len(),
        1,
        "/models under a /v1 URL"
    );
    let listing: serde_json::Value = served
        .client
        .get(served.url("/v1/nexus/backends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing["backends"][0]["loaded_models"],
        serde_json::json!(["llama3:8b"])
    );

    openai.set_listings_failing(true);
    served
        .eventually("two failed checks", |s| {
            status(s, "vllm") == BackendStatus::Unhealthy
        })
        .await;
    openai.set_listings_failing(false);
    served
        .eventually("a passed check", |s| {
            status(s, "vllm") == BackendStatus::Healthy
        })
        .await;
}
