//! The upstream client's connector: each new connection goes directly, or through the
//! proxy the [`ProxyConfig`] names for its backend. Through an `http` proxy, an `https`
//! backend gets hyper-util's `CONNECT` [`Tunnel`] with TLS to the backend inside it, an
//! `http` backend a plain connection to the proxy marked as proxied, so that hyper-util's
//! client writes requests in absolute form on it; through a SOCKS5 proxy, hyper-util's
//! [`SocksV5`] tunnel for both, with TLS inside for `https`. A failure through a proxy
//! stays a connect failure, and names the proxy.

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
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

use super::proxy::{ProxyConfig, ProxyUrl};

/// An error from connecting, as hyper-util's connectors give it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connection, with TLS for `https` backends.
type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

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
    /// The connector for `proxies` over `direct` (the client's plain connector, TLS for
    /// `https`) and `tcp` (its TCP connector, which reaches the proxy).
    pub(super) fn new(
        proxies: &ProxyConfig,
        direct: HttpsConnector<HttpConnector>,
        tcp: &HttpConnector,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> io::Result<Connector> {
        let Some(matcher) = proxies.matcher.clone() else {
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
            let uri = proxy.uri.clone();
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
        let http = proxies.http.as_ref().map(|p| route(p, false)).transpose()?;
        let https = proxies.https.as_ref().map(|p| route(p, true)).transpose()?;
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

    /// The `Proxy-Authorization` a request to `uri` must carry: set when `uri` is an
    /// `http` backend forwarded through a proxy with credentials (`https` backends send
    /// them on the `CONNECT`).
    pub(crate) fn forward_auth(&self, uri: &Uri) -> Option<&HeaderValue> {
        match &self.route_for(uri)?.1.via {
            Via::Forward {
                auth: Some(auth), ..
            } => Some(auth),
            _ => None,
        }
    }

    /// The proxy route a connection to `uri` takes, with the routes it is one of;
    /// `None` to go directly (no proxy, `NO_PROXY`, or none for its scheme).
    fn route_for(&self, uri: &Uri) -> Option<(&Routes, &Route)> {
        let routes = self.routes.as_deref()?;
        routes.matcher.intercept(uri)?;
        let route = match uri.scheme_str() {
            Some("https") => routes.https.as_ref(),
            Some("http") => routes.http.as_ref(),
            _ => None,
        }?;
        Some((routes, route))
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
        let Some((routes, route)) = self.route_for(&dst) else {
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

    fn vars(pairs: &[(&str, &str)]) -> ProxyConfig {
        ProxyConfig::from_vars(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("valid proxy variables")
    }

    #[test]
    fn only_forwarded_http_requests_carry_proxy_authorization() {
        let config = vars(&[
            ("ALL_PROXY", "http://ops:pw@proxy:3128"),
            ("NO_PROXY", "localhost"),
        ]);
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
