//! `serve` hands the proxied endpoints to their handler straight from the connection,
//! skipping axum's router: it must answer every request as the axum app does.

mod common;

use common::{backend, serve, NO_HEALTH};
use nexus_testkit::{MockConfig, MockUpstream};
use tower::ServiceExt as _;

/// (status, `error.code` or `None`) of an answer's head and body.
fn summary(status: u16, body: &[u8]) -> (u16, Option<String>) {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (status, code)
}

#[tokio::test]
async fn served_and_app_answer_alike() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let config = format!(
        "{}{NO_HEALTH}",
        backend("b", &mock.url(), "local", &["m"], "")
    );
    let served = serve(&config).await;
    let app = served.gateway.app();
    let chat = serde_json::to_vec(&common::chat_body("m", false)).unwrap();
    let cases: [(&str, &str, Vec<u8>); 8] = [
        ("POST", "/v1/chat/completions", chat.clone()),
        ("POST", "/v1/chat/completions?trace=1", chat.clone()),
        (
            "POST",
            "/v1/completions",
            br#"{"model":"m","prompt":"hi"}"#.to_vec(),
        ),
        ("POST", "/v1/chat/completions", b"{not json".to_vec()),
        ("POST", "/v1/chat/completions/", chat.clone()),
        ("GET", "/v1/chat/completions", Vec::new()),
        ("PUT", "/v1/embeddings", chat.clone()),
        ("POST", "/v1/chat/completion", chat.clone()),
    ];
    for (method, path, body) in cases {
        let method: reqwest::Method = method.parse().unwrap();
        let over_tcp = served
            .client
            .request(method.clone(), served.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let tcp_status = over_tcp.status().as_u16();
        let tcp_id = over_tcp.headers().get("x-request-id").cloned();
        let tcp = summary(tcp_status, &over_tcp.bytes().await.unwrap());

        let request = axum::http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let in_app = app.clone().oneshot(request).await.unwrap();
        let app_status = in_app.status().as_u16();
        let app_id = in_app.headers().get("x-request-id").cloned();
        let bytes = axum::body::to_bytes(in_app.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(tcp, summary(app_status, &bytes), "{method} {path}");
        assert_eq!(tcp_id.is_some(), app_id.is_some(), "{method} {path}");
    }
    served.stop().await;
}
