//! Serving a [`Gateway`] on a listener until a shutdown signal, then draining.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;

use crate::health::Checker;
use crate::Gateway;

/// Serves `gateway` on `listener` until `shutdown` completes, then drains:
///
/// 1. one round of health checks before the first request is accepted (a backend
///    that fails it is unhealthy at once), then a check every `[health] interval_secs`
///    and right after each reload;
/// 2. reloads on SIGHUP and, for a gateway loaded from a file ([`Gateway::reloadable`]),
///    when the file changes (see [`DEBOUNCE`](crate::DEBOUNCE));
/// 3. on `shutdown`: stop accepting, let requests in flight finish (streams included)
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
/// When accepting connections fails for good.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;

    let mut health = None;
    if let Some(interval) = gateway.health().interval() {
        let mut checker = Checker::new(gateway.clone());
        checker.round(true).await;
        health = Some(tokio::spawn(checker.run(interval)));
    }

    let triggers = crate::watch::spawn(&gateway);

    let grace = gateway.server().shutdown_grace();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, finishing requests in flight"
        );
        let _ = stopping_tx.send(());
    };
    // Small writes (stream events) go out at once rather than waiting for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, gateway.app()).with_graceful_shutdown(signal);
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after the shutdown grace; closing them");
            Ok(())
        }
    };
    if let Some(health) = health {
        health.abort();
    }
    for trigger in triggers {
        trigger.abort();
    }
    result
}
