//! The reload triggers besides `POST /v1/nexus/reload`: SIGHUP, and a change of the
//! config file.
//!
//! The file is watched through its folder (editors and deploy tools replace a file by
//! renaming another over it, which a watch on the file itself would lose), events for
//! other names are ignored, and a burst of events is waited out
//! ([`DEBOUNCE`] of quiet) before the file is read. A file whose bytes did not change
//! since the watcher last read it (a `touch`, an editor saving twice) is not reloaded.
//! Every outcome is logged by [`Gateway::reload`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Gateway;

/// How long the config file must be quiet after a change before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts the triggers that apply: SIGHUP always (on Unix), the file watch when the
/// gateway was loaded from a file. The tasks run until aborted.
pub(crate) fn spawn(gateway: &Gateway) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => {
                let gateway = gateway.clone();
                tasks.push(tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the config");
                        reload(&gateway).await;
                    }
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reload with POST /v1/nexus/reload")
            }
        }
    }
    if let Some(path) = gateway.live_router().path() {
        match watch(path) {
            Ok((watcher, events)) => {
                let gateway = gateway.clone();
                let path = path.to_owned();
                tasks.push(tokio::spawn(async move {
                    // The watcher stops when dropped: the task keeps it.
                    let _watcher = watcher;
                    follow(gateway, path, events).await;
                }));
            }
            Err(error) => tracing::warn!(
                file = %path.display(),
                %error,
                "cannot watch the config file; reload with SIGHUP or POST /v1/nexus/reload"
            ),
        }
    }
    tasks
}

/// Reloads on a blocking thread (reading and building block); the outcome is logged.
async fn reload(gateway: &Gateway) {
    let worker = gateway.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || worker.reload()).await {
        tracing::error!(%error, "the reload failed; the running config stays");
    }
}

/// A watcher on `path`'s folder that sends a unit for each change of a file named like
/// `path`.
fn watch(path: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let absolute = std::path::absolute(path)?;
    let folder = absolute
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = absolute.file_name().map(ToOwned::to_owned);
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (the reload does) must not count as a change.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            // A full channel already holds a pending change: nothing is lost.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Reloads after each burst of changes, when the bytes changed.
async fn follow(gateway: Gateway, path: PathBuf, mut events: mpsc::Receiver<()>) {
    let mut last = tokio::fs::read(&path).await.ok();
    while events.recv().await.is_some() {
        // Wait until the file has been quiet for DEBOUNCE.
        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
        let now = tokio::fs::read(&path).await.ok();
        if now.is_some() && now == last {
            continue;
        }
        if now.is_none() {
            // Removed (maybe about to be replaced): the next event brings it back. The
            // reload would only say the file is missing.
            tracing::warn!(file = %path.display(), "the config file is gone; the running config stays");
            last = None;
            continue;
        }
        last = now;
        tracing::info!(file = %path.display(), "the config file changed: reloading");
        reload(&gateway).await;
    }
}
