//! Egress proxies: which backends the upstream client reaches through a proxy, and the
//! connector that does it.
//!
//! The rules are curl's (and reqwest's): `HTTPS_PROXY` serves `https` backends,
//! `HTTP_PROXY` `http` ones, `ALL_PROXY` either when its own is unset, and `NO_PROXY`
//! exempts hosts, domains (and their subdomains; a leading dot or not), IP addresses,
//! CIDR ranges, or everything (`*`). Matching is hyper-util's
//! [`Matcher`](hyper_util::client::proxy::matcher::Matcher); the handshakes are its
//! [`Tunnel`] (`CONNECT`) and [`SocksV5`]. Through an `http` proxy, an `https` backend is
//! reached by a `CONNECT` tunnel, then TLS to the backend inside it (the proxy sees only
//! the host name), and an `http` backend by sending the request to the proxy in absolute
//! form (`POST http://host/v1/... HTTP/1.1`). Through a SOCKS5 proxy both are tunnelled.
//! Credentials in the proxy URL (`http://user:password@proxy:3128`) go as
//! `Proxy-Authorization: Basic`, on the `CONNECT` or on each forwarded request, or as
//! SOCKS5's user and password.
//!
//! The variables are read once, when [`ProxyConfig::from_env`] is called (the gateway
//! does it when it builds its client), never per request. The decision is made per
//! connection, not per request: a pooled connection to a backend is reused as it is.
//! Without a proxy the connector is the direct one, untouched; a request costs one
//! `Option` check more.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Uri};
use futures_util::future::{BoxFuture, Either, FutureExt, MapOk, TryFutureExt};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;

/// An error from connecting, as hyper-util's connectors give it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connection, with TLS for `https` backends.
type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Which egress proxy, if any, serves `http` and `https` backends, and the hosts that
/// bypass it. Build it with [`from_env`](Self::from_env) (what the gateway does),
/// [`from_vars`](Self::from_vars) (the same rules over variables you hold) or
/// [`none`](Self::none); give it to
/// [`ClientBuilder::proxy`](super::ClientBuilder::proxy).
///
/// ```
/// use nexus_gateway::upstream::ProxyConfig;
///
/// let vars = [("HTTPS_PROXY", "http://user:secret@proxy.internal:3128"), ("NO_PROXY", ".corp")];
/// let proxies = ProxyConfig::from_vars(|name| {
///     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
/// })?;
/// // What the start-up log says: no credentials.
/// assert_eq!(
///     proxies.to_string(),
///     "https backends through http://proxy.internal:3128 (HTTPS_PROXY, with credentials); \
///      http backends direct; NO_PROXY: .corp"
/// );
/// # Ok::<(), nexus_gateway::upstream::ProxyError>(())
/// ```
#[derive(Clone, Default)]
pub struct ProxyConfig {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    /// `NO_PROXY` as given (trimmed); empty when unset.
    no_proxy: String,
    /// hyper-util's matcher over the above; `None` when no backend goes through a proxy.
    matcher: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("no_proxy", &self.no_proxy)
            .finish_non_exhaustive()
    }
}

/// One proxy URL, checked.
#[derive(Clone)]
struct ProxyUrl {
    /// The variable it came from.
    var: &'static str,
    /// As given, credentials included: what the matcher parses.
    raw: String,
    /// `scheme://host:port`, without credentials: what logs and errors show.
    shown: String,
    has_credentials: bool,
    /// hyper-util's reading of it: the proxy's URI and its `Proxy-Authorization`.
    intercept: Intercept,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the raw URL: it may carry a password.
        f.debug_struct("ProxyUrl")
            .field("var", &self.var)
            .field("url", &self.shown)
            .field("has_credentials", &self.has_credentials)
            .finish()
    }
}

/// A proxy variable whose value is not a usable proxy URL.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "{var}={shown}: {problem}; set {var} to a proxy URL such as \
     http://proxy.example:3128 or socks5h://proxy.example:1080 (credentials as \
     http://user:password@proxy.example:3128, percent-encoded), or unset it"
)]
pub struct ProxyError {
    var: &'static str,
    /// The value with any credentials masked.
    shown: String,
    problem: String,
}

impl ProxyError {
    /// The variable whose value was refused (`HTTPS_PROXY`, `http_proxy`, ...).
    pub fn var(&self) -> &str {
        self.var
    }
}

impl ProxyConfig {
    /// No proxy: every backend is reached directly.
    pub fn none() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// The proxies the process's environment names: [`from_vars`](Self::from_vars) over
    /// [`std::env::var`]. Read once, now.
    ///
    /// # Errors
    ///
    /// A proxy variable that is set to something other than an `http://`, `socks5://`
    /// or `socks5h://` proxy URL.
    pub fn from_env() -> Result<ProxyConfig, ProxyError> {
        ProxyConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxies `var` names, by curl's rules: `HTTPS_PROXY` (or `https_proxy`) for
    /// `https` backends, `HTTP_PROXY` (or `http_proxy`) for `http` ones, `ALL_PROXY` (or
    /// `all_proxy`) for either when its own is unset, and `NO_PROXY` (or `no_proxy`): a
    /// comma-separated list of hosts, domains (`example.com` and `.example.com` both
    /// match the domain and its subdomains), IP addresses and CIDR ranges reached
    /// directly, or `*` for every host. The upper-case name wins when both are set; an
    /// empty value counts as unset. A proxy is `http://host:port` (a URL without a
    /// scheme is `http://`), `socks5://` (names resolved here) or `socks5h://` (names
    /// resolved by the proxy), with optional `user:password@`.
    ///
    /// # Errors
    ///
    /// A set variable whose value is not such a URL (unparseable, no host, or another
    /// scheme: `https://` proxies and SOCKS4 are not supported), naming the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, ProxyError> {
        let first = |names: [&'static str; 2]| -> Option<(&'static str, String)> {
            names.into_iter().find_map(|name| {
                let value = var(name)?;
                let value = value.trim();
                (!value.is_empty()).then(|| (name, value.to_owned()))
            })
        };
        let checked = |found: Option<(&'static str, String)>| {
            found
                .map(|(name, value)| ProxyUrl::parse(name, value))
                .transpose()
        };
        let all = checked(first(["ALL_PROXY", "all_proxy"]))?;
        let http = checked(first(["HTTP_PROXY", "http_proxy"]))?.or_else(|| all.clone());
        let https = checked(first(["HTTPS_PROXY", "https_proxy"]))?.or(all);
        let no_proxy = first(["NO_PROXY", "no_proxy"]).map_or_else(String::new, |(_, v)| v);
        // `NO_PROXY=*` is curl's "every host", IP addresses included (hyper-util's
        // matcher applies `*` to names only).
        let bypass_all = no_proxy.split(',').any(|entry| entry.trim() == "*");
        let matcher = (!bypass_all && (http.is_some() || https.is_some())).then(|| {
            let mut matcher = Matcher::builder().no(no_proxy.as_str());
            if let Some(http) = &http {
                matcher = matcher.http(http.raw.as_str());
            }
            if let Some(https) = &https {
                matcher = matcher.https(https.raw.as_str());
            }
            Arc::new(matcher.build())
        });
        Ok(ProxyConfig {
            http,
            https,
            no_proxy,
            matcher,
        })
    }

    /// Whether no backend goes through a proxy: none is set, or `NO_PROXY` is `*`.
    pub fn is_direct(&self) -> bool {
        self.matcher.is_none()
    }

    /// The proxy a request to `uri` goes through (`http://host:port`, without
    /// credentials), or `None` when it goes directly: its scheme has no proxy, or its
    /// host is in `NO_PROXY`.
    ///
    /// ```
    /// use nexus_gateway::upstream::ProxyConfig;
    ///
    /// let vars = [("ALL_PROXY", "http://proxy:3128"), ("NO_PROXY", "localhost,10.0.0.0/8,.corp")];
    /// let proxies = ProxyConfig::from_vars(|name| {
    ///     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    /// })?;
    /// let via = |url: &str| proxies.proxy_for(&url.parse().unwrap()).map(str::to_owned);
    /// assert_eq!(via("https://api.openai.com/v1").as_deref(), Some("http://proxy:3128"));
    /// assert_eq!(via("http://localhost:11434"), None);
    /// assert_eq!(via("http://10.1.2.3:8000/v1"), None);
    /// assert_eq!(via("https://llm.eu.corp/v1"), None);
    /// # Ok::<(), nexus_gateway::upstream::ProxyError>(())
    /// ```
    pub fn proxy_for(&self, uri: &Uri) -> Option<&str> {
        self.matcher.as_ref()?.intercept(uri)?;
        let proxy = match uri.scheme_str()? {
            "https" => self.https.as_ref()?,
            "http" => self.http.as_ref()?,
            _ => return None,
        };
        Some(&proxy.shown)
    }

    /// The connector for these proxies over `direct` (the client's plain connector, TLS
    /// for `https`) and `tcp` (its TCP connector, which reaches the proxy).
    pub(super) fn connector(
        &self,
        direct: HttpsConnector<HttpConnector>,
        tcp: &HttpConnector,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> io::Result<Connector> {
        let Some(matcher) = self.matcher.clone() else {
            return Ok(Connector {
                direct,
                routes: None,
            });
        };
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_platform_verifier(provider.clone())
        };
        let route = |proxy: &ProxyUrl, https: bool| -> io::Result<Route> {
            let uri = proxy.intercept.uri().clone();
            let via = match uri.scheme_str() {
                Some(scheme @ ("socks5" | "socks5h")) => {
                    let mut socks = SocksV5::new(uri.clone(), tcp.clone())
                        // socks5: names resolved here; socks5h: by the proxy (curl's).
                        .local_dns(scheme == "socks5");
                    if let Some((user, password)) = proxy.intercept.raw_auth() {
                        socks = socks.with_auth(user.to_owned(), password.to_owned());
                    }
                    Via::Socks(tls()?.https_or_http().enable_http1().wrap_connector(socks))
                }
                _ if https => {
                    let mut tunnel = Tunnel::new(uri, tcp.clone());
                    if let Some(auth) = proxy.intercept.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    Via::Tunnel(tls()?.https_only().enable_http1().wrap_connector(tunnel))
                }
                _ => Via::Forward {
                    proxy: uri,
                    auth: proxy.intercept.basic_auth().cloned(),
                },
            };
            Ok(Route {
                via,
                name: proxy.name(),
            })
        };
        let http = self.http.as_ref().map(|p| route(p, false)).transpose()?;
        let https = self.https.as_ref().map(|p| route(p, true)).transpose()?;
        Ok(Connector {
            direct,
            routes: Some(Arc::new(Routes {
                matcher,
                tcp: tcp.clone(),
                http,
                https,
            })),
        })
    }
}

impl std::fmt::Display for ProxyConfig {
    /// Which proxy serves which scheme and the `NO_PROXY` list, without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (scheme, proxy) in [("https", &self.https), ("http", &self.http)] {
            if scheme == "http" {
                f.write_str("; ")?;
            }
            match proxy {
                None => write!(f, "{scheme} backends direct")?,
                Some(p) => {
                    write!(f, "{scheme} backends through {} ({}", p.shown, p.var)?;
                    if p.has_credentials {
                        f.write_str(", with credentials")?;
                    }
                    f.write_str(")")?;
                }
            }
        }
        if !self.no_proxy.is_empty() {
            write!(f, "; NO_PROXY: {}", self.no_proxy)?;
        }
        Ok(())
    }
}

impl ProxyUrl {
    fn parse(var: &'static str, raw: String) -> Result<ProxyUrl, ProxyError> {
        let refuse = |problem: String| ProxyError {
            var,
            shown: mask_credentials(&raw),
            problem,
        };
        let uri: Uri = raw
            .parse()
            .map_err(|e| refuse(format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some("https") => {
                return Err(refuse(
                    "an https:// proxy (TLS to the proxy itself) is not supported".to_owned(),
                ))
            }
            Some("socks5" | "socks5h") => {}
            Some(s) if s.starts_with("socks") => {
                return Err(refuse(format!(
                    "{s}:// proxies are not supported (socks5:// and socks5h:// are)"
                )))
            }
            Some(s) => return Err(refuse(format!("{s}:// is not a proxy scheme"))),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| refuse("no proxy host in it".to_owned()))?;
        let has_credentials = authority.as_str().contains('@');
        let host = authority.host();
        if host.is_empty() {
            return Err(refuse("no proxy host in it".to_owned()));
        }
        // hyper-util's matcher must read it the same way, or it would drop it silently.
        let probe = Matcher::builder().all(raw.as_str()).build();
        let intercept = probe
            .intercept(&Uri::from_static("http://probe.invalid/"))
            .ok_or_else(|| refuse("not a proxy URL hyper-util can read".to_owned()))?;
        let shown = format!(
            "{}://{}",
            intercept.uri().scheme_str().unwrap_or("http"),
            intercept.uri().authority().map_or(host, |a| a.as_str())
        );
        Ok(ProxyUrl {
            var,
            raw,
            shown,
            has_credentials,
            intercept,
        })
    }

    /// `http://host:port (VAR)`: how errors name it.
    fn name(&self) -> Arc<str> {
        Arc::from(format!("{} ({})", self.shown, self.var))
    }
}

/// `value` with what comes before an `@` (user and password) masked.
fn mask_credentials(value: &str) -> String {
    match value.rsplit_once('@') {
        None => value.to_owned(),
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or("", |(s, _)| s);
            if scheme.is_empty() {
                format!("***@{after}")
            } else {
                format!("{scheme}://***@{after}")
            }
        }
    }
}

/// The upstream client's connector: direct, or through a proxy for the backends the
/// [`ProxyConfig`] sends through one.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    direct: HttpsConnector<HttpConnector>,
    /// `None` when no backend goes through a proxy: then nothing is matched.
    routes: Option<Arc<Routes>>,
}

struct Routes {
    matcher: Arc<Matcher>,
    /// Reaches an `http` proxy for forwarded requests.
    tcp: HttpConnector,
    /// For `http` backends.
    http: Option<Route>,
    /// For `https` backends.
    https: Option<Route>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("http", &self.http.as_ref().map(|r| &r.name))
            .field("https", &self.https.as_ref().map(|r| &r.name))
            .finish_non_exhaustive()
    }
}

/// How one scheme's backends are reached through its proxy.
struct Route {
    via: Via,
    /// `http://host:port (VAR)`: how errors name the proxy.
    name: Arc<str>,
}

enum Via {
    /// `https` backends through an `http` proxy: a `CONNECT` tunnel, then TLS to the
    /// backend.
    Tunnel(HttpsConnector<Tunnel<HttpConnector>>),
    /// Either scheme through a SOCKS5 proxy: its handshake, then TLS for `https`.
    Socks(HttpsConnector<SocksV5<HttpConnector>>),
    /// `http` backends through an `http` proxy: requests in absolute form to it.
    Forward {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
}

impl Connector {
    /// The `Proxy-Authorization` a request to `uri` must carry: set when `uri` is an
    /// `http` backend forwarded through a proxy with credentials (`https` backends send
    /// them on the `CONNECT`).
    pub(crate) fn forward_auth(&self, uri: &Uri) -> Option<&HeaderValue> {
        let routes = self.routes.as_deref()?;
        let Via::Forward {
            auth: Some(auth), ..
        } = &routes.http.as_ref()?.via
        else {
            return None;
        };
        (uri.scheme_str() == Some("http") && routes.matcher.intercept(uri).is_some())
            .then_some(auth)
    }
}

/// A connection the client can pool: the stream, and whether requests on it go to a
/// proxy (then in absolute form).
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Stream,
    forwarded: bool,
}

impl Conn {
    fn direct(stream: Stream) -> Conn {
        Conn {
            stream,
            forwarded: false,
        }
    }
}

/// A failure to connect through a proxy, naming it.
#[derive(Debug, thiserror::Error)]
#[error("through the proxy {proxy}")]
struct ThroughProxy {
    proxy: Arc<str>,
    #[source]
    source: BoxError,
}

type Direct =
    MapOk<<HttpsConnector<HttpConnector> as tower::Service<Uri>>::Future, fn(Stream) -> Conn>;

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Either<Direct, BoxFuture<'static, Result<Conn, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(routes) = self.routes.as_deref() else {
            return Either::Left(self.direct.call(dst).map_ok(Conn::direct as fn(_) -> _));
        };
        if routes.matcher.intercept(&dst).is_none() {
            return Either::Left(self.direct.call(dst).map_ok(Conn::direct as fn(_) -> _));
        }
        let route = match dst.scheme_str() {
            Some("https") => routes.https.as_ref(),
            Some("http") => routes.http.as_ref(),
            _ => None,
        };
        // The matcher intercepts only schemes it has a proxy for.
        let Some(route) = route else {
            return Either::Left(self.direct.call(dst).map_ok(Conn::direct as fn(_) -> _));
        };
        let proxy = route.name.clone();
        let connecting = match &route.via {
            Via::Tunnel(tunnel) => {
                let mut tunnel = tunnel.clone();
                async move {
                    std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
                    tunnel.call(dst).await.map(Conn::direct)
                }
                .boxed()
            }
            Via::Socks(socks) => {
                let mut socks = socks.clone();
                async move {
                    // The handshake names the port; hyper-util's SOCKS takes 443 when the
                    // URI has none, which is right for https only.
                    let dst = with_port(dst)?;
                    std::future::poll_fn(|cx| socks.poll_ready(cx)).await?;
                    socks.call(dst).await.map(Conn::direct)
                }
                .boxed()
            }
            Via::Forward { proxy, .. } => {
                let mut tcp = routes.tcp.clone();
                let to = proxy.clone();
                async move {
                    let stream = tcp.call(to).await?;
                    Ok(Conn {
                        stream: MaybeHttpsStream::Http(stream),
                        forwarded: true,
                    })
                }
                .boxed()
            }
        };
        Either::Right(
            connecting
                .map_err(move |source: BoxError| ThroughProxy { proxy, source }.into())
                .boxed(),
        )
    }
}

/// `dst` with its scheme's default port written out when it has none.
fn with_port(dst: Uri) -> Result<Uri, BoxError> {
    if dst.port().is_some() {
        return Ok(dst);
    }
    let port = if dst.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let host = dst.host().ok_or("the backend's URL has no host")?;
    let mut parts = dst.clone().into_parts();
    parts.authority = Some(format!("{host}:{port}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.stream.connected().proxy(self.forwarded)
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Adds `Proxy-Authorization` to a request forwarded through a proxy with credentials,
/// unless it has one.
pub(crate) fn authorize(
    connector: &Connector,
    request: &mut axum::http::Request<super::OutgoingBody>,
) {
    if let Some(auth) = connector.forward_auth(request.uri()) {
        let auth = auth.clone();
        request
            .headers_mut()
            .entry(header::PROXY_AUTHORIZATION)
            .or_insert(auth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<ProxyConfig, ProxyError> {
        ProxyConfig::from_vars(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn via<'a>(config: &'a ProxyConfig, url: &str) -> Option<&'a str> {
        config.proxy_for(&url.parse().expect("a test URL"))
    }

    #[test]
    fn each_scheme_takes_its_own_variable_then_all_proxy() {
        let config = vars(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("https_proxy", "http://lower:2"),
            ("all_proxy", "http://all:3"),
        ])
        .unwrap();
        assert_eq!(
            via(&config, "https://api.openai.com/v1"),
            Some("http://secure:1")
        );
        assert_eq!(via(&config, "http://gpu-box:8000/v1"), Some("http://all:3"));

        // An empty upper-case variable counts as unset.
        let config = vars(&[("HTTP_PROXY", ""), ("http_proxy", "plain:8080")]).unwrap();
        assert_eq!(
            via(&config, "http://gpu-box:8000"),
            Some("http://plain:8080")
        );
        assert_eq!(via(&config, "https://api.openai.com"), None);

        assert!(vars(&[]).unwrap().is_direct());
        assert_eq!(via(&vars(&[]).unwrap(), "https://api.openai.com"), None);
    }

    #[test]
    fn no_proxy_takes_names_domains_addresses_ranges_and_a_star() {
        let config = vars(&[
            ("ALL_PROXY", "http://proxy:3128"),
            (
                "NO_PROXY",
                "localhost, .corp,example.org,192.168.1.7,10.0.0.0/8,::1",
            ),
        ])
        .unwrap();
        for direct in [
            "http://localhost:11434",
            "https://llm.eu.corp/v1",
            "https://example.org/v1",
            "https://api.example.org/v1",
            "http://192.168.1.7:8000",
            "http://10.20.30.40:8000",
            "http://[::1]:8000",
        ] {
            assert_eq!(via(&config, direct), None, "{direct}");
        }
        for proxied in [
            "https://api.openai.com/v1",
            "https://notexample.org/v1",
            "http://192.168.1.8:8000",
            "http://127.0.0.1:8000",
        ] {
            assert_eq!(
                via(&config, proxied),
                Some("http://proxy:3128"),
                "{proxied}"
            );
        }
        // `*` is every host, addresses included.
        let star = vars(&[("ALL_PROXY", "http://proxy:3128"), ("no_proxy", "*")]).unwrap();
        assert!(star.is_direct());
        assert_eq!(via(&star, "http://127.0.0.1:8000"), None);
        assert_eq!(via(&star, "https://api.openai.com"), None);
    }

    #[test]
    fn credentials_are_sent_but_never_shown() {
        let config = vars(&[
            ("HTTPS_PROXY", "http://ops:s%3Acret@proxy:3128"),
            ("NO_PROXY", "localhost"),
        ])
        .unwrap();
        let shown = format!("{config} {config:?}");
        assert!(
            !shown.contains("s%3Acret") && !shown.contains("s:cret"),
            "{shown}"
        );
        assert_eq!(
            config.to_string(),
            "https backends through http://proxy:3128 (HTTPS_PROXY, with credentials); \
             http backends direct; NO_PROXY: localhost"
        );
        let https = config.https.as_ref().unwrap();
        // base64("ops:s:cret")
        assert_eq!(
            https.intercept.basic_auth().unwrap(),
            "Basic b3BzOnM6Y3JldA=="
        );
        assert_eq!(mask_credentials("http://u:p@h:1"), "http://***@h:1");
        assert_eq!(mask_credentials("u:p@h:1"), "***@h:1");
        assert_eq!(mask_credentials("http://h:1"), "http://h:1");
    }

    #[test]
    fn only_forwarded_http_requests_carry_proxy_authorization() {
        let config = vars(&[
            ("ALL_PROXY", "http://ops:pw@proxy:3128"),
            ("NO_PROXY", "localhost"),
        ])
        .unwrap();
        let client = super::super::client_builder()
            .proxy(config)
            .build()
            .unwrap();
        let auth = |url: &str| {
            client
                .connector
                .forward_auth(&url.parse().unwrap())
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            auth("http://gpu-box:8000/v1").as_deref(),
            Some("Basic b3BzOnB3")
        );
        // https: on the CONNECT, not on the request; NO_PROXY: not at all.
        assert_eq!(auth("https://api.openai.com/v1"), None);
        assert_eq!(auth("http://localhost:8000/v1"), None);

        let direct = super::super::client_builder().build().unwrap();
        assert!(direct.connector.routes.is_none());
    }

    #[test]
    fn a_socks_destination_always_names_its_port() {
        let port = |url: &str| with_port(url.parse().unwrap()).unwrap().to_string();
        assert_eq!(port("http://gpu-box/v1/chat"), "http://gpu-box:80/v1/chat");
        assert_eq!(
            port("https://api.openai.com/v1"),
            "https://api.openai.com:443/v1"
        );
        assert_eq!(port("http://[::1]/v1"), "http://[::1]:80/v1");
        assert_eq!(port("http://gpu-box:8000/v1"), "http://gpu-box:8000/v1");
    }
}
