//! Serving a [`Gateway`] on a listener until a shutdown signal, then draining.
//!
//! The accept loop is written out (hyper's HTTP/1 connection over the axum app) rather
//! than `axum::serve`, because `axum::serve` sets no timer and so no header read
//! timeout: a client that opens a connection and sends nothing, or keeps an idle
//! connection alive, would hold a socket and a task forever, and enough of them run the
//! process out of file descriptors. Here every connection gets
//! `[server] header_read_timeout_ms` to send each request's headers. The proxied
//! endpoints (`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) are
//! handed to their handler straight from the connection, as the app would route them
//! (a handler's panic is still a 500), skipping axum's router and layers on the hot path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::health::Checker;
use crate::Gateway;

/// Serves `gateway` on `listener` until `shutdown` completes, then drains:
///
/// 1. one round of health checks before the first request is accepted (a backend
///    that fails it is unhealthy at once), then a check every `[health] interval_secs`
///    and right after each reload;
/// 2. each connection must send each request's headers within
///    `[server] header_read_timeout_ms` (from when it opens, or from its previous
///    answer when kept alive), or it is closed;
/// 3. reloads on SIGHUP and, for a gateway loaded from a file ([`Gateway::reloadable`]),
///    when the file changes (see [`DEBOUNCE`](crate::DEBOUNCE));
/// 4. on `shutdown`: stop accepting, let requests in flight finish (streams included)
///    for up to `[server] shutdown_grace_secs`, then return. Connections still open
///    then live in their own tasks until the runtime shuts down, which drops them and
///    so settles their route guards (as a client disconnect).
///
/// Dropping the gateway (and so the router) after this returns flushes the budget's
/// spend journal, bounded by its flush deadline. The router's budget store starts its
/// own runtime, so build the router outside of any Tokio runtime, and drop it there too.
///
/// # Errors
///
/// None today: a failed accept (out of file descriptors, say) is logged and retried
/// after a pause rather than ending the server. The `Result` is kept for errors a
/// later listener may have.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut health = None;
    if let Some(interval) = gateway.health().interval() {
        let mut checker = Checker::new(gateway.clone());
        checker.round(true).await;
        health = Some(tokio::spawn(checker.run(interval)));
    }

    let triggers = crate::watch::spawn(&gateway);

    let grace = gateway.server().shutdown_grace();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(gateway.server().header_read_timeout());
    let app = gateway.app();
    // Every connection holds a receiver: `closing` tells them to finish, and the
    // sender's `closed()` says when the last one has.
    let (closing, connections) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Small writes (stream events) go out at once rather than waiting for Nagle.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let request = request.map(axum::body::Body::new);
            // The proxied endpoints, the hot path, go straight to their handler; the
            // rest through the axum app. Either future is boxed: hyper keeps a slot the
            // size of the service's future for as long as the connection is open, streams
            // included, so unboxed it would hold ~750 bytes per open stream for a future
            // that ended with the answer's headers; boxed, the slot is a pointer and the
            // future is freed when it ends.
            let answer: RequestFuture =
                match crate::endpoints::proxied_endpoint(request.method(), request.uri().path()) {
                    Some(endpoint) => Box::pin(crate::endpoints::proxied_direct(
                        gateway.clone(),
                        endpoint,
                        request,
                    )),
                    None => Box::pin(app.clone().oneshot(request)),
                };
            answer
        });
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let mut closing = connections.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                // An error is the client going away or a header timeout: nothing to do.
                _ = connection.as_mut() => return,
                _ = closing.changed() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    drop(connections);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, finishing requests in flight"
    );
    let _ = closing.send(true);
    if tokio::time::timeout(grace, closing.closed()).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still in flight after the shutdown grace; closing them"
        );
    }
    if let Some(health) = health {
        health.abort();
    }
    for trigger in triggers {
        trigger.abort();
    }
    Ok(())
}

/// A connection's request future, boxed (see where `serve` builds its service).
type RequestFuture =
    Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

/// Accept errors about one connection (it was reset before it was accepted): the
/// listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
