//! Egress proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`): `https` backends
//! through a `CONNECT` tunnel with TLS inside it, `http` backends by absolute-form requests
//! to the proxy, credentials as `Proxy-Authorization`, `NO_PROXY` hosts direct, a bad
//! proxy URL refused at start, and a proxy that is down or refuses is a failed attempt
//! that fails over and names the proxy. The variables are given to the gateway rather
//! than set in this process (tests run on parallel threads).

use std::time::Duration;

use nexus_gateway::upstream::{self, ProxyConfig};
use nexus_gateway::Gateway;
use nexus_router::{LiveRouter, Router};
use nexus_testkit::{MockConfig, MockProxy, MockUpstream};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Proxy variables as the environment would hold them.
fn vars(pairs: &[(&str, &str)]) -> Result<ProxyConfig, upstream::ProxyError> {
    ProxyConfig::from_vars(|name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    })
}

/// `Basic base64(user:password)`, written out for the pair these tests use.
const ALADDIN: &str = "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==";

/// A gateway over `config` on a loopback port, with `proxies`; stops when the task is
/// dropped at the end of the test.
async fn serve(config: &str, proxies: ProxyConfig) -> (String, reqwest::Client) {
    let router = Router::from_toml("test.toml", config).expect("a valid config");
    let live = LiveRouter::new(Router::builder(), router, None);
    let gateway = Gateway::reloadable_with_proxy(live, proxies).expect("a gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(nexus_gateway::serve(
        gateway,
        listener,
        std::future::pending(),
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    (format!("http://{addr}"), client)
}

fn backend(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nid = \"{id}\"\nurl = \"{url}\"\nzone = \"local\"\n{extra}\n  [[backends.models]]\n  name = \"m\"\n"
    )
}

const NO_HEALTH: &str = "\n[health]\ninterval_secs = 0\n";

async fn chat(base: &str, client: &reqwest::Client) -> (u16, String, Value) {
    let answer = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .expect("the gateway answers");
    let status = answer.status().as_u16();
    let served_by = answer
        .headers()
        .get("x-nexus-backend")
        .map(|v| v.to_str().expect("a text header").to_owned())
        .unwrap_or_default();
    (
        status,
        served_by,
        answer.json().await.unwrap_or(Value::Null),
    )
}

/// Two backends on the mock at `port`: `proxied` (`127.0.0.1`, preferred), then `direct`
/// (`localhost`, which the tests list in `NO_PROXY`).
fn proxied_then_direct(port: u16) -> String {
    format!(
        "{}{}{NO_HEALTH}",
        backend(
            "proxied",
            &format!("http://127.0.0.1:{port}"),
            "priority = 100"
        ),
        backend("direct", &format!("http://localhost:{port}"), ""),
    )
}

/// The `proxied` backend of [`proxied_then_direct`] alone: nowhere to fail over to.
fn proxied_only(port: u16) -> String {
    format!(
        "{}{NO_HEALTH}",
        backend("proxied", &format!("http://127.0.0.1:{port}"), "")
    )
}

/// Serves an `https` backend (`https://127.0.0.1:9/v1`) behind `proxy`, which refuses its
/// `CONNECT`, and asks once: the answer must be a 502 that says the connection failed and
/// names the proxy (from `HTTPS_PROXY`). Returns the error message.
async fn connect_refused_through(proxy: &MockProxy, proxies: ProxyConfig) -> String {
    let config = format!(
        "{}{NO_HEALTH}",
        backend("cloud", "https://127.0.0.1:9/v1", "")
    );
    let (base, client) = serve(&config, proxies).await;
    let (status, _, body) = chat(&base, &client).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("an error message")
        .to_owned();
    assert!(
        message.contains("cannot connect to https://127.0.0.1:9/v1"),
        "{message}"
    );
    assert!(
        message.contains(&format!("through the proxy {} (HTTPS_PROXY)", proxy.url())),
        "{message}"
    );
    message
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    listener.local_addr().expect("an address").port()
}

/// A backend that only records how a connection starts: its address, and a future that
/// checks (within 10 s) that the first connection's first bytes open a TLS handshake (a
/// ClientHello starts 0x16 0x03). It then answers in plain text, failing the handshake.
async fn tls_backend() -> (std::net::SocketAddr, impl std::future::Future<Output = ()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut start = [0u8; 2];
        stream.read_exact(&mut start).await.expect("two bytes");
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        start
    });
    let began = async move {
        let start = tokio::time::timeout(Duration::from_secs(10), first_bytes)
            .await
            .expect("bounded")
            .expect("the backend task ran");
        assert_eq!(
            start,
            [0x16, 0x03],
            "TLS began inside the tunnel, to the backend"
        );
    };
    (addr, began)
}

#[tokio::test]
async fn an_http_backend_is_reached_by_absolute_form_requests_to_the_proxy_with_credentials() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let proxy = MockProxy::start().await.unwrap();
    let with_user = proxy
        .url()
        .replace("http://", "http://Aladdin:open%20sesame@");
    let proxies = vars(&[("HTTP_PROXY", &with_user)]).unwrap();
    let (base, client) = serve(
        &format!("{}{NO_HEALTH}", backend("b", &mock.base_url(), "")),
        proxies,
    )
    .await;

    for _ in 0..3 {
        let (status, served_by, body) = chat(&base, &client).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(served_by, "b");
    }
    let seen = proxy.requests();
    assert_eq!(
        seen.len(),
        3,
        "every request went through the proxy: {seen:?}"
    );
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.target,
            format!("http://{}/v1/chat/completions", mock.addr()),
            "absolute form"
        );
        assert_eq!(request.proxy_authorization.as_deref(), Some(ALADDIN));
    }
    assert_eq!(mock.requests_to("/v1/chat/completions").len(), 3);
    // The credentials were for the proxy: the backend never saw them.
    for recorded in mock.requests() {
        assert_eq!(recorded.header("proxy-authorization"), None);
    }
}

#[tokio::test]
async fn an_https_backend_is_reached_through_a_connect_tunnel_with_tls_inside_it() {
    let (backend_addr, tls_began) = tls_backend().await;
    let proxy = MockProxy::start().await.unwrap();
    let with_user = proxy
        .url()
        .replace("http://", "http://Aladdin:open%20sesame@");
    let proxies = vars(&[("HTTPS_PROXY", &with_user), ("NO_PROXY", "example.com")]).unwrap();
    let client = upstream::client_builder().proxy(proxies).build().unwrap();
    let request = axum::http::Request::get(format!("https://{backend_addr}/v1/models"))
        .body(upstream::OutgoingBody::default())
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), client.send(request))
        .await
        .expect("bounded")
        .unwrap_err();

    assert!(
        err.is_connect(),
        "a failed handshake is a connect failure: {err:?}"
    );
    let message = nexus_gateway::error::with_causes(&err);
    assert!(
        message.contains(&format!("through the proxy {} (HTTPS_PROXY)", proxy.url())),
        "{message}"
    );
    assert!(
        !message.contains("sesame"),
        "no credentials in errors: {message}"
    );
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(seen[0].target, backend_addr.to_string());
    assert_eq!(seen[0].proxy_authorization.as_deref(), Some(ALADDIN));
    tls_began.await;
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let proxy = MockProxy::start().await.unwrap();
    let port = mock.addr().port();
    // `localhost` by name, `127.0.0.1` by a CIDR range; a domain with and without its dot.
    for (url, no_proxy) in [
        (format!("http://localhost:{port}"), "localhost"),
        (
            format!("http://127.0.0.1:{port}"),
            "internal.corp, 127.0.0.0/8",
        ),
        (format!("http://127.0.0.1:{port}"), "*"),
    ] {
        let proxies = vars(&[("ALL_PROXY", &proxy.url()), ("no_proxy", no_proxy)]).unwrap();
        let client = upstream::client_builder().proxy(proxies).build().unwrap();
        let request = axum::http::Request::get(format!("{url}/v1/models"))
            .body(upstream::OutgoingBody::default())
            .unwrap();
        let answer = client.send(request).await.unwrap();
        assert_eq!(answer.status(), 200, "{url} with NO_PROXY={no_proxy}");
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());

    // The same host not listed goes through the proxy.
    let proxies = vars(&[
        ("ALL_PROXY", &proxy.url()),
        ("NO_PROXY", ".internal.corp,10.0.0.1"),
    ])
    .unwrap();
    assert_eq!(
        proxies.proxy_for(&format!("http://127.0.0.1:{port}/").parse().unwrap()),
        Some(proxy.url().as_str())
    );
    assert_eq!(
        proxies.proxy_for(&"https://api.internal.corp/v1".parse().unwrap()),
        None
    );
    assert_eq!(
        proxies.proxy_for(&"https://internal.corp/v1".parse().unwrap()),
        None
    );
    let client = upstream::client_builder().proxy(proxies).build().unwrap();
    let request = axum::http::Request::get(format!("http://127.0.0.1:{port}/v1/models"))
        .body(upstream::OutgoingBody::default())
        .unwrap();
    assert_eq!(client.send(request).await.unwrap().status(), 200);
    assert_eq!(proxy.requests().len(), 1);
}

#[test]
fn a_proxy_url_that_cannot_be_used_is_an_error_naming_the_variable() {
    for (var, value, problem) in [
        ("HTTPS_PROXY", "http://user:secret@[::1", "not a URL"),
        ("http_proxy", "http://", "not a URL"),
        (
            "ALL_PROXY",
            "socks4://user:secret@127.0.0.1:1080",
            "socks4:// proxies are not supported",
        ),
        (
            "HTTPS_PROXY",
            "https://proxy.example:3128",
            "https:// proxy",
        ),
        (
            "HTTP_PROXY",
            "ftp://proxy.example",
            "ftp:// is not a proxy scheme",
        ),
    ] {
        let err = vars(&[(var, value)]).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.var(), var);
        assert!(message.starts_with(&format!("{var}=")), "{message}");
        assert!(message.contains(problem), "{message}");
        assert!(
            message.contains(&format!("set {var} to a proxy URL")),
            "{message}"
        );
        assert!(!message.contains("secret"), "credentials masked: {message}");
    }
    // Unset or empty is no proxy; a URL without a scheme is http.
    assert!(vars(&[("HTTPS_PROXY", " ")]).unwrap().is_direct());
    let bare = vars(&[("HTTPS_PROXY", "proxy.example:3128")]).unwrap();
    assert_eq!(
        bare.proxy_for(&"https://api.openai.com/v1".parse().unwrap()),
        Some("http://proxy.example:3128")
    );
}

#[tokio::test]
async fn a_proxy_that_is_down_or_refuses_fails_over_and_is_named() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let proxies = vars(&[("HTTP_PROXY", &dead), ("NO_PROXY", "localhost")]).unwrap();
    let port = mock.addr().port();
    // Through the proxy (`127.0.0.1`), then direct (`localhost`, in NO_PROXY).
    let config = proxied_then_direct(port);
    let (base, client) = serve(&config, proxies.clone()).await;
    let (status, served_by, body) = chat(&base, &client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by, "direct", "failed over from the proxied backend");

    // With no backend to fail over to: 502, naming the proxy.
    let config = proxied_only(port);
    let (base, client) = serve(&config, proxies).await;
    let (status, _, body) = chat(&base, &client).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("cannot connect to http://127.0.0.1:{port}")),
        "a connect failure: {message}"
    );
    assert!(
        message.contains(&format!("through the proxy {dead} (HTTP_PROXY)")),
        "{message}"
    );

    // A proxy that refuses the CONNECT.
    let proxy = MockProxy::start().await.unwrap();
    proxy.refuse_connect(Some(403));
    let proxies = vars(&[("HTTPS_PROXY", &proxy.url())]).unwrap();
    connect_refused_through(&proxy, proxies).await;
    assert_eq!(proxy.requests().len(), 1);
    assert_eq!(proxy.requests()[0].target, "127.0.0.1:9");
}

#[tokio::test]
async fn a_socks5_proxy_tunnels_both_schemes_with_its_credentials() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let proxy = MockProxy::start().await.unwrap();
    let socks = proxy.url().replace("http://", "socks5h://ops:pw@");
    let proxies = vars(&[("ALL_PROXY", &socks)]).unwrap();
    assert!(proxies.to_string().contains(&format!(
        "http backends through socks5h://{} (ALL_PROXY, with credentials)",
        proxy.addr()
    )));
    let client = upstream::client_builder().proxy(proxies).build().unwrap();

    // http: the name goes to the proxy to resolve (socks5h), then plain HTTP inside.
    let port = mock.addr().port();
    let request = axum::http::Request::get(format!("http://localhost:{port}/v1/models"))
        .body(upstream::OutgoingBody::default())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), client.send(request))
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(mock.requests_to("/v1/models").len(), 1);

    // https: TLS to the backend inside the tunnel.
    let (backend_addr, tls_began) = tls_backend().await;
    let request = axum::http::Request::get(format!("https://{backend_addr}/v1/models"))
        .body(upstream::OutgoingBody::default())
        .unwrap();
    let sending = tokio::spawn(client.send(request));
    tls_began.await;
    sending.abort();

    let seen = proxy.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].method, "SOCKS5");
    assert_eq!(seen[0].target, format!("localhost:{port}"));
    assert_eq!(seen[1].target, backend_addr.to_string());
    for request in &seen {
        assert_eq!(request.proxy_authorization.as_deref(), Some("ops:pw"));
    }
}

#[tokio::test]
async fn a_proxy_that_wants_credentials_is_a_failed_attempt_that_says_how_to_give_them() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let proxy = MockProxy::start().await.unwrap();
    proxy.require_authorization(Some(ALADDIN));
    let proxies = vars(&[
        ("HTTP_PROXY", &proxy.url()),
        ("HTTPS_PROXY", &proxy.url()),
        ("NO_PROXY", "localhost"),
    ])
    .unwrap();
    let port = mock.addr().port();

    // A forwarded request answered 407 fails over: the client never sees the proxy's
    // 407, which would ask it to authenticate to a proxy it does not know of.
    let config = proxied_then_direct(port);
    let (base, client) = serve(&config, proxies.clone()).await;
    let (status, served_by, body) = chat(&base, &client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by, "direct", "failed over from the proxied backend");
    assert_eq!(proxy.requests().len(), 1);

    // With nowhere to fail over to: 502, saying what the proxy wants and where it goes.
    let config = proxied_only(port);
    let (base, client) = serve(&config, proxies.clone()).await;
    let (status, _, body) = chat(&base, &client).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("answered 407 Proxy Authentication Required"),
        "{message}"
    );
    assert!(
        message.contains("http://user:password@host:port in HTTP_PROXY"),
        "{message}"
    );

    // A CONNECT answered 407 is a connect failure naming the proxy.
    let message = connect_refused_through(&proxy, proxies).await;
    assert!(
        message.contains("proxy authorization required"),
        "{message}"
    );
    assert_eq!(mock.requests_to("/v1/chat/completions").len(), 1);
}
