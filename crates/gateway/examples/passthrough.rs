//! `passthrough`: the floor the gateway's HTTP stack sets, for the load benches.
//!
//! The same HTTP/1.1 server set-up as `nexus serve` (hyper's connection builder,
//! `TCP_NODELAY`, a connection task each, a boxed request future) and the same upstream
//! client ([`nexus_gateway::upstream`], built as the gateway builds it), with nothing in
//! between: no routing decision, no body parsing or rewriting, no log line, no metrics, no
//! settling. Each request's body is read whole (as the gateway reads it), sent to the one
//! upstream at the same path, and the answer's head and body are passed back as they come.
//!
//! What the gateway adds over this binary is what Nexus itself costs; what this binary adds
//! over the upstream called directly is what any proxy on hyper's HTTP/1.1 pays.
//! `benches/load/run.sh --floor` measures it beside the gateway in every repeat.
//!
//! ```sh
//! cargo run --release -p nexus-gateway --example passthrough -- \
//!     --listen 127.0.0.1:9100 --upstream http://127.0.0.1:9000
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use nexus_gateway::upstream::{self, OutgoingBody};
use tokio::net::TcpListener;

/// The answer's body: the upstream's as it comes, or a short error of our own.
type Body = Either<Incoming, Full<Bytes>>;

/// A connection's request future, boxed as `nexus serve` boxes it.
type RequestFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

const USAGE: &str = "usage: passthrough --listen ADDR --upstream http://HOST:PORT";

fn main() -> ExitCode {
    let (listen, upstream) = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("passthrough: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // `nexus serve`'s runtime: multi-thread, one worker per CPU the process may use.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("passthrough: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(listen, upstream))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, Uri), String> {
    let (mut listen, mut upstream) = (None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value:?}: {e}"))?,
                );
            }
            "--upstream" => {
                let uri = value
                    .trim_end_matches('/')
                    .parse::<Uri>()
                    .map_err(|e| format!("--upstream {value:?}: {e}"))?;
                if uri.scheme().is_none() || uri.authority().is_none() {
                    return Err(format!(
                        "--upstream {value:?} is not an absolute URL (http://host:port)"
                    ));
                }
                upstream = Some(uri);
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok((
        listen.ok_or("--listen is missing")?,
        upstream.ok_or("--upstream is missing")?,
    ))
}

async fn serve(listen: SocketAddr, upstream: Uri) -> ExitCode {
    let client = match upstream::client_builder()
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("passthrough: cannot build the upstream client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("passthrough: cannot listen on {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    println!("passthrough listening on {listen}, forwarding to {upstream}");
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return ExitCode::SUCCESS,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    eprintln!("passthrough: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let answer: RequestFuture =
                Box::pin(forward(client.clone(), upstream.clone(), request));
            answer
        });
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Sends `request` to the same path on `upstream`, with its body read whole and its
/// `content-type`, and passes the answer back; a 502 when the upstream cannot be reached.
async fn forward(
    client: upstream::Client,
    upstream: Uri,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {e}"),
            ))
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut target = upstream.into_parts();
    target.path_and_query = path.parse().ok();
    let Ok(uri) = Uri::from_parts(target) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "the request's path is not valid",
        ));
    };
    let mut outgoing = Request::new(OutgoingBody::new(body));
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        outgoing
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    match client.send(outgoing).await {
        Ok(answer) => Ok(answer.map(Either::Left)),
        Err(e) => Ok(error(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message.to_owned()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
