//! The upstream client speaks TLS with the crypto provider the crate chose: an HTTPS
//! request runs a handshake (which fails here, against a server that is not TLS) instead of
//! panicking for want of a provider.

use nexus_gateway::upstream;

#[tokio::test]
async fn https_runs_a_handshake_with_the_chosen_provider() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers the handshake with plain text and closes.
    let server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let client = upstream::client_builder().build().unwrap();
    let request = axum::http::Request::get(format!("https://{addr}/v1/models"))
        .body(upstream::OutgoingBody::default())
        .unwrap();
    let err = client.send(request).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    server.abort();
}
