//! The HTTP client that talks to backends.
//!
//! hyper-util's pooled client over hyper's HTTP/1.1 (what local servers and the cloud
//! APIs all speak; HTTP/2 would buy nothing over a pooled keep-alive connection here),
//! with TLS for `https` backends by rustls (through hyper-rustls) on the `ring` crypto
//! provider and the platform verifier: the operating system's root certificates, no
//! bundled root list to keep up to date. [`client_builder`] installs `ring` as rustls'
//! process default unless the embedding program installed a provider first, and the
//! client uses whichever is the default.
//!
//! The client does what the gateway needs and no more: a request goes to the URI it
//! names, as it is (each backend's URIs are parsed once, when a config is loaded); a
//! redirect is an answer like any other (relayed, never followed); nothing is
//! decompressed. An egress proxy is used when the builder is given one
//! ([`ClientBuilder::proxy`]; the gateway gives it [`ProxyConfig::from_env`], curl's
//! `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`): through an `http` proxy,
//! `https` backends by a `CONNECT` tunnel with TLS to the backend inside it and `http`
//! backends by requests in absolute form to the proxy; through a SOCKS5 proxy, both
//! tunnelled. The builder itself reads no variable, so that a program embedding it
//! decides. Its read buffer is a fixed [`DEFAULT_READ_BUFFER`] bytes per connection
//! rather than hyper's 8 KiB and up, which is most of what an open stream costs: see
//! [`ClientBuilder::read_buffer_size`] for what that bounds. Timeouts other than
//! connecting are the request path's (first byte, idle stream), set per request from
//! the server's configuration.

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

mod connector;
mod proxy;

pub use proxy::{ProxyConfig, ProxyError};

/// The `user-agent` the gateway sends upstream.
pub const USER_AGENT: &str = concat!("nexus-gateway/", env!("CARGO_PKG_VERSION"));

/// The read buffer of each upstream connection, in bytes, unless
/// [`ClientBuilder::read_buffer_size`] says otherwise: 4 KiB, half of hyper's default.
/// An answer's status line and headers must fit in it (those of OpenAI-compatible servers
/// and the cloud APIs are typically well under 2 KB); bodies of any size stream through
/// it.
pub const DEFAULT_READ_BUFFER: usize = 4096;

/// The smallest read buffer [`ClientBuilder::read_buffer_size`] takes: 1 KiB.
pub const MIN_READ_BUFFER: usize = 1024;

/// A request's body: the whole of it, in memory (the gateway has read and rewritten it).
pub type OutgoingBody = Full<Bytes>;

/// An answer, its body still to be read as it arrives.
pub type Answer = Response<Incoming>;

/// Why a request got no answer: [`is_connect`](hyper_util::client::legacy::Error::is_connect)
/// tells a backend that could not be reached from one that broke off; its
/// [`source`](std::error::Error::source) chain says why.
pub type Error = hyper_util::client::legacy::Error;

/// The upstream HTTP client: cheap to clone (a handle on one pool). Build it with
/// [`client_builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::http::{Request, Uri};
/// use nexus_gateway::upstream::{self, OutgoingBody};
///
/// let client = upstream::client_builder()
///     .connect_timeout(std::time::Duration::from_secs(2))
///     .build()?;
/// let uri: Uri = "http://127.0.0.1:11434/api/tags".parse()?;
/// let answer = client.send(Request::get(uri).body(OutgoingBody::default())?).await?;
/// println!("{}", answer.status());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<connector::Connector, OutgoingBody>,
    /// The inner client's connector too: it knows which requests go to a proxy that wants
    /// `Proxy-Authorization`.
    connector: connector::Connector,
}

impl Client {
    /// Sends `request` to the absolute URI it names (`http` or `https`) on a pooled
    /// connection, with the gateway's `user-agent` and `accept: */*` unless it has its
    /// own (and `proxy-authorization` when it is forwarded through a proxy with
    /// credentials); resolves when the answer's headers have arrived.
    ///
    /// # Errors
    ///
    /// The future's: the backend could not be reached (connect, TLS) or broke off before
    /// its headers, or the URI is not absolute.
    pub fn send(
        &self,
        mut request: Request<OutgoingBody>,
    ) -> impl Future<Output = Result<Answer, Error>> + Send + 'static {
        let headers = request.headers_mut();
        headers
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT));
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        connector::authorize(&self.connector, &mut request);
        self.inner.request(request)
    }
}

/// How to build a [`Client`]; from [`client_builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientBuilder {
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    read_buffer: Option<usize>,
    proxy: ProxyConfig,
}

/// A client builder with the gateway's TLS set-up, user agent and defaults: no connect
/// timeout, idle pooled connections closed after 90 s, no limit on idle connections per
/// backend, a [`DEFAULT_READ_BUFFER`]-byte read buffer, `TCP_NODELAY`, TCP keep-alive
/// every 15 s, no proxy (the environment's proxy variables are not read: pass
/// [`ProxyConfig::from_env`] to [`proxy`](ClientBuilder::proxy) for them). Change what
/// you need, then [`build`](ClientBuilder::build).
///
/// ```
/// let client = nexus_gateway::upstream::client_builder()
///     .connect_timeout(std::time::Duration::from_secs(2))
///     .pool_max_idle_per_host(64)
///     .build()?;
/// # drop(client);
/// # Ok::<(), nexus_gateway::upstream::ClientError>(())
/// ```
pub fn client_builder() -> ClientBuilder {
    ClientBuilder {
        connect_timeout: None,
        pool_idle_timeout: Some(Duration::from_secs(90)),
        pool_max_idle_per_host: usize::MAX,
        read_buffer: Some(DEFAULT_READ_BUFFER),
        proxy: ProxyConfig::none(),
    }
}

impl ClientBuilder {
    /// How long connecting (TCP, per address tried) may take; `[server] connect_timeout_ms`
    /// in the gateway.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a pooled connection may stay idle before it is closed; `None` keeps it
    /// until the backend closes it.
    pub fn pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections to keep per backend (scheme, host and port).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Each connection's read buffer: `Some(bytes)` fixes it (at least
    /// [`MIN_READ_BUFFER`]; smaller is raised to it), `None` lets hyper size it (8 KiB,
    /// growing to about 400 KiB for large reads). A fixed buffer is also the largest
    /// status line and headers an answer may have: a backend whose headers do not fit
    /// fails the attempt ("message head is too large"), and the request fails over.
    /// Bodies of any size stream through it, in pieces of at most this size.
    pub fn read_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.read_buffer = bytes.map(|b| b.max(MIN_READ_BUFFER));
        self
    }

    /// The egress proxies: [`ProxyConfig::from_env`] for the process's `HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (what the gateway uses), or one built
    /// from variables you hold with [`ProxyConfig::from_vars`]. The connect timeout
    /// applies to reaching the proxy.
    ///
    /// ```
    /// use nexus_gateway::upstream::{self, ProxyConfig};
    ///
    /// let proxies = ProxyConfig::from_vars(|name| {
    ///     (name == "HTTPS_PROXY").then(|| "http://proxy.internal:3128".to_owned())
    /// })?;
    /// let client = upstream::client_builder().proxy(proxies).build()?;
    /// # drop(client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn proxy(mut self, proxies: ProxyConfig) -> Self {
        self.proxy = proxies;
        self
    }

    /// No proxy: every backend is reached directly (the default).
    pub fn no_proxy(self) -> Self {
        self.proxy(ProxyConfig::none())
    }

    /// The client.
    ///
    /// # Errors
    ///
    /// When TLS cannot be set up: the platform verifier refused the crypto provider.
    pub fn build(self) -> Result<Client, ClientError> {
        install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let mut http = HttpConnector::new();
        // `https` URIs are for the TLS layer above; this one connects for both.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(provider.clone())
            .map_err(ClientError)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let connector =
            connector::Connector::new(&self.proxy, https, &http, &provider).map_err(ClientError)?;
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        if let Some(bytes) = self.read_buffer {
            builder.http1_read_buf_exact_size(bytes);
        }
        Ok(Client {
            inner: builder.build(connector.clone()),
            connector,
        })
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for the upstream client: {0}")]
pub struct ClientError(#[source] std::io::Error);

/// Installs `ring` as rustls' process-wide provider, once. If the embedding program
/// installed another provider first, that one stays. [`client_builder`]'s `build` calls
/// it; call it yourself before building another rustls client (reqwest's, say) that
/// should use the same provider.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
