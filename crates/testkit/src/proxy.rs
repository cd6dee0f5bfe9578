//! [`MockProxy`]: an HTTP egress proxy on a loopback port, for the gateway's proxy tests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// What reached a [`MockProxy`]: one `CONNECT`, one forwarded request or one SOCKS5
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT`, `POST`, `GET`, ..., or `SOCKS5`.
    pub method: String,
    /// The request target as sent: `host:port` for `CONNECT` and SOCKS5, the absolute
    /// URL for a forwarded request.
    pub target: String,
    /// The credentials: the `Proxy-Authorization` header over HTTP, `user:password`
    /// over SOCKS5; `None` without.
    pub proxy_authorization: Option<String>,
}

/// An HTTP and SOCKS5 proxy on `127.0.0.1` and a port the OS picks, serving until
/// dropped: it opens `CONNECT` tunnels (answering `200`, then copying both ways) and
/// forwards absolute-form requests (`POST http://host:port/path HTTP/1.1`) to the host
/// they name, one request per connection (it asks the upstream to close, so the client
/// does not reuse the connection); a connection that starts with a SOCKS5 greeting gets
/// a SOCKS5 tunnel (no authentication, or user and password when the client offers
/// them). It records every request, with its credentials, and strips
/// `Proxy-Authorization` before forwarding.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let proxy = nexus_testkit::MockProxy::start().await?;
/// assert!(proxy.url().starts_with("http://127.0.0.1:"));
/// assert!(proxy.requests().is_empty());
/// # Ok(())
/// # }
/// ```
pub struct MockProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<ProxyRequest>>,
    /// Answer `CONNECT` with this status instead of opening the tunnel.
    refuse_connect: Mutex<Option<u16>>,
    /// The `Proxy-Authorization` every HTTP request must carry, else 407.
    required_authorization: Mutex<Option<String>>,
}

impl MockProxy {
    /// Starts a proxy on a loopback port.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<MockProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    // A client or upstream that goes away ends this connection only.
                    let _ = serve(client, &shared).await;
                });
            }
        });
        Ok(MockProxy { addr, shared, task })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the value of a proxy variable.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request that reached it, in order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Answers each `CONNECT` with `status` (407, 403, 502, ...) instead of opening the
    /// tunnel; `None` opens tunnels again.
    pub fn refuse_connect(&self, status: Option<u16>) {
        *lock(&self.shared.refuse_connect) = status;
    }

    /// Answers every HTTP request (`CONNECT` or forwarded) whose `Proxy-Authorization`
    /// is not `expected` (e.g. `Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==`) with `407 Proxy
    /// Authentication Required`, as a proxy with access control does; `None` lets
    /// every request through again. The request is still recorded.
    pub fn require_authorization(&self, expected: Option<&str>) {
        *lock(&self.shared.required_authorization) = expected.map(str::to_owned);
    }
}

impl Drop for MockProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// One client connection: one `CONNECT`, one forwarded request or one SOCKS5 tunnel.
async fn serve(client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut client = BufReader::new(client);
    if client.fill_buf().await?.first() == Some(&5) {
        return socks5(client, shared).await;
    }
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = client.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Ok(());
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if head[before..] == *b"\r\n" || head[before..] == *b"\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| invalid("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut proxy_authorization = None;
    let mut content_length = 0usize;
    let mut forwarded_head = String::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "proxy-authorization" => {
                proxy_authorization = Some(value.to_owned());
                continue;
            }
            "connection" | "proxy-connection" => continue,
            "content-length" => {
                content_length = value.parse().map_err(|_| invalid("bad content-length"))?;
            }
            _ => {}
        }
        forwarded_head.push_str(line);
        forwarded_head.push_str("\r\n");
    }
    let required = lock(&shared.required_authorization).clone();
    let authorized = required.is_none() || required == proxy_authorization;
    lock(&shared.requests).push(ProxyRequest {
        method: method.clone(),
        target: target.clone(),
        proxy_authorization,
    });
    if !authorized {
        let mut body = vec![
            0;
            if method == "CONNECT" {
                0
            } else {
                content_length
            }
        ];
        client.read_exact(&mut body).await?;
        let answer = "HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"mock\"\r\ncontent-type: text/html\r\ncontent-length: 16\r\nconnection: close\r\n\r\n<h1>denied</h1>\n";
        client.get_mut().write_all(answer.as_bytes()).await?;
        return client.get_mut().shutdown().await;
    }
    if method == "CONNECT" {
        let refused = *lock(&shared.refuse_connect);
        if let Some(status) = refused {
            let answer = format!("HTTP/1.1 {status} Refused\r\ncontent-length: 0\r\n\r\n");
            return client.get_mut().write_all(answer.as_bytes()).await;
        }
        let mut upstream = match connect(&target).await {
            Ok(upstream) => upstream,
            Err(_) => {
                let answer = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";
                return client.get_mut().write_all(answer.as_bytes()).await;
            }
        };
        client
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Absolute form: `http://host:port/path`.
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| invalid("not an absolute-form http target"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut body = vec![0; content_length];
    client.read_exact(&mut body).await?;
    let mut upstream = match connect(authority).await {
        Ok(upstream) => upstream,
        Err(_) => {
            let answer =
                "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            return client.get_mut().write_all(answer.as_bytes()).await;
        }
    };
    let request = format!("{method} {path} HTTP/1.1\r\n{forwarded_head}connection: close\r\n\r\n");
    upstream.write_all(request.as_bytes()).await?;
    upstream.write_all(&body).await?;
    tokio::io::copy(&mut upstream, client.get_mut()).await?;
    client.get_mut().shutdown().await
}

/// A SOCKS5 tunnel (RFC 1928, with RFC 1929's user and password when offered).
async fn socks5(mut client: BufReader<TcpStream>, shared: &Shared) -> io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    let mut credentials = None;
    if methods.contains(&2) {
        client.get_mut().write_all(&[5, 2]).await?;
        let user = read_short(&mut client, true).await?;
        let password = read_short(&mut client, false).await?;
        credentials = Some(format!("{user}:{password}"));
        client.get_mut().write_all(&[1, 0]).await?;
    } else if methods.contains(&0) {
        client.get_mut().write_all(&[5, 0]).await?;
    } else {
        return client.get_mut().write_all(&[5, 0xff]).await;
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => read_short(&mut client, false).await?,
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return Err(invalid("unknown SOCKS5 address type")),
    };
    let port = client.read_u16().await?;
    let target = format!("{host}:{port}");
    lock(&shared.requests).push(ProxyRequest {
        method: "SOCKS5".to_owned(),
        target: target.clone(),
        proxy_authorization: credentials,
    });
    let Ok(mut upstream) = connect(&target).await else {
        // 5: connection refused.
        return client
            .get_mut()
            .write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])
            .await;
    };
    client
        .get_mut()
        .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A length-prefixed string (after a version byte first when `versioned`).
async fn read_short(client: &mut BufReader<TcpStream>, versioned: bool) -> io::Result<String> {
    if versioned {
        client.read_u8().await?;
    }
    let len = client.read_u8().await?;
    let mut bytes = vec![0u8; usize::from(len)];
    client.read_exact(&mut bytes).await?;
    String::from_utf8(bytes).map_err(|_| invalid("SOCKS5 string is not UTF-8"))
}

/// A TCP connection to `host:port` (the default port 80), bounded in time.
async fn connect(authority: &str) -> io::Result<TcpStream> {
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(authority))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}
