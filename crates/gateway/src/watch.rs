//! The reload triggers besides `POST /v1/nexus/reload`: SIGHUP, and a change of the
//! config file.
//!
//! The file is watched through its folder (editors and deploy tools replace a file by
//! renaming another over it, which a watch on the file itself would lose). What counts as
//! a possible change ([`Change::concerns`]): a write to the config's name that ends (the
//! writer closes the file), its removal, and any name that arrives in the folder (created
//! or renamed in: the config itself, or a link its path goes through, as when Kubernetes
//! swaps a ConfigMap's `..data`). A burst of such events is waited out ([`DEBOUNCE`] of
//! quiet) before the file is read, and a file whose bytes did not change since the watcher
//! last read it (a `touch`, an editor saving twice, a sibling created) is not reloaded.
//! Every outcome is logged by [`Gateway::reload`].
//!
//! Other files in the folder cost nothing while they are written: on Linux the watch asks
//! inotify for names and finished writes only, not for every write, open or read, so a log
//! file or the budget's store beside the config (its default place) does not wake the
//! gateway on each line or commit. Elsewhere the watch is the `notify` crate's, which
//! reports every event and filters them here.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
            Ok((watch, events)) => {
                let gateway = gateway.clone();
                let path = path.to_owned();
                tasks.push(tokio::spawn(async move {
                    // The watch stops when dropped: the task keeps it.
                    let _watch = watch;
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

/// An event in the config file's folder, as far as a reload cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change<'a> {
    /// A name was created or renamed into the folder.
    Arrived(&'a OsStr),
    /// A file opened for writing was closed (or, where the watch cannot tell, written).
    Written(&'a OsStr),
    /// A name was removed or renamed away.
    Left(&'a OsStr),
    /// The watch lost events (its queue overflowed): anything may have changed.
    Lost,
}

impl Change<'_> {
    /// Whether the config file (named `config` in the folder) may have changed: a write or
    /// removal of its name, any arrival (the config itself, or a link its path goes
    /// through, such as Kubernetes' `..data`; the bytes are compared before a reload), or
    /// lost events.
    fn concerns(self, config: &OsStr) -> bool {
        match self {
            Change::Arrived(_) | Change::Lost => true,
            Change::Written(name) | Change::Left(name) => name == config,
        }
    }
}

/// What keeps a watch going: dropping it stops the watch.
type Keep = Box<dyn Send>;

/// A watch on `path`'s folder that sends a unit for each event that may have changed the
/// file at `path`.
fn watch(path: &Path) -> io::Result<(Keep, mpsc::Receiver<()>)> {
    let absolute = std::path::absolute(path)?;
    let folder = absolute
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = absolute
        .file_name()
        .map(ToOwned::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let (tx, rx) = mpsc::channel(1);
    Ok((platform::watch(&folder, name, tx)?, rx))
}

#[cfg(target_os = "linux")]
mod platform {
    //! inotify, asked for names and finished writes only.

    use std::ffi::OsString;
    use std::io;
    use std::path::Path;

    use futures_util::StreamExt;
    use inotify::{EventMask, Inotify, WatchMask};
    use tokio::sync::mpsc;

    use super::{Change, Keep};

    /// What the folder's watch asks the kernel for. Not `MODIFY` (every write to any file
    /// in the folder: a log line, a store's commit), `OPEN`, `ACCESS` or `ATTRIB`: a
    /// writer that changes the config closes it (`CLOSE_WRITE`), and a replacement
    /// arrives by name (`MOVED_TO`, `CREATE`).
    pub(super) const FOLDER_EVENTS: WatchMask = WatchMask::CLOSE_WRITE
        .union(WatchMask::CREATE)
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::DELETE)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::ONLYDIR);

    /// Stops the task reading the watch when dropped (the inotify descriptor goes with it).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    pub(super) fn watch(folder: &Path, config: OsString, tx: mpsc::Sender<()>) -> io::Result<Keep> {
        let inotify = Inotify::init()?;
        inotify.watches().add(folder, FOLDER_EVENTS)?;
        // Room for a few dozen events per read; a longer burst takes more reads.
        let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
        let folder = folder.to_owned();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(folder = %folder.display(), %error,
                            "watching the config file failed; reload with SIGHUP or POST /v1/nexus/reload");
                        return;
                    }
                };
                if event.mask.contains(EventMask::IGNORED) {
                    tracing::warn!(folder = %folder.display(),
                        "the config file's folder is gone; no longer watching it (reload with SIGHUP or POST /v1/nexus/reload)");
                    return;
                }
                let Some(change) = change(event.mask, event.name.as_deref()) else {
                    continue;
                };
                if change.concerns(&config) && tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Box::new(AbortOnDrop(task)))
    }

    /// The change an event reports, if it is one [`FOLDER_EVENTS`] asks for.
    pub(super) fn change(mask: EventMask, name: Option<&std::ffi::OsStr>) -> Option<Change<'_>> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            return Some(Change::Lost);
        }
        let name = name?;
        if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            Some(Change::Arrived(name))
        } else if mask.contains(EventMask::CLOSE_WRITE) {
            Some(Change::Written(name))
        } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            Some(Change::Left(name))
        } else {
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    //! The `notify` crate's watcher (FSEvents, kqueue, ReadDirectoryChangesW), which
    //! reports every event; they are filtered here.

    use std::ffi::OsString;
    use std::io;
    use std::path::Path;

    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    use tokio::sync::mpsc;

    use super::{Change, Keep};

    pub(super) fn watch(folder: &Path, config: OsString, tx: mpsc::Sender<()>) -> io::Result<Keep> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let lost = event.need_rescan().then_some(Change::Lost);
                let mut changes = event
                    .paths
                    .iter()
                    .filter_map(|path| path.file_name())
                    .filter_map(|name| change(&event.kind, name))
                    .chain(lost);
                if changes.any(|change| change.concerns(&config)) {
                    // A full channel already holds a pending change: nothing is lost.
                    let _ = tx.try_send(());
                }
            })
            .map_err(io::Error::other)?;
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(io::Error::other)?;
        Ok(Box::new(watcher))
    }

    fn change<'a>(kind: &EventKind, name: &'a std::ffi::OsStr) -> Option<Change<'a>> {
        match kind {
            // Reading the file (the reload does) must not count as a change.
            EventKind::Access(_) => None,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                Some(Change::Arrived(name))
            }
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                Some(Change::Left(name))
            }
            _ => Some(Change::Written(name)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary one, removed when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "nexus-watch-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("a temporary folder");
            Folder(path)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Waits up to five seconds for a unit on `events`.
    async fn changed(events: &mut mpsc::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .is_ok_and(|unit| unit.is_some())
    }

    /// Nothing arrives on `events` within half a second.
    async fn quiet(events: &mut mpsc::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err()
    }

    #[test]
    fn only_the_configs_writes_and_removals_and_any_arrival_concern_it() {
        let config = OsStr::new("nexus.toml");
        let other = OsStr::new("nexus.log");
        assert!(Change::Written(config).concerns(config));
        assert!(Change::Left(config).concerns(config));
        assert!(Change::Arrived(config).concerns(config));
        assert!(Change::Arrived(OsStr::new("..data")).concerns(config));
        assert!(Change::Lost.concerns(config));
        assert!(!Change::Written(other).concerns(config));
        assert!(!Change::Left(other).concerns(config));
    }

    #[tokio::test]
    async fn writing_the_file_in_place_or_renaming_one_over_it_is_a_change() {
        let folder = Folder::new("in-place");
        let path = folder.0.join("nexus.toml");
        std::fs::write(&path, "a").expect("written");
        let (_watch, mut events) = watch(&path).expect("a watch");

        std::fs::write(&path, "b").expect("written");
        assert!(changed(&mut events).await, "no event for a write in place");
        while !quiet(&mut events).await {}

        let next = folder.0.join("nexus.toml.new");
        std::fs::write(&next, "c").expect("written");
        while !quiet(&mut events).await {}
        std::fs::rename(&next, &path).expect("renamed");
        assert!(
            changed(&mut events).await,
            "no event for a rename over the file"
        );
    }

    #[tokio::test]
    async fn a_sibling_written_and_read_is_no_change() {
        let folder = Folder::new("sibling");
        let path = folder.0.join("nexus.toml");
        std::fs::write(&path, "a").expect("written");
        let log = folder.0.join("nexus.log");
        let mut file = std::fs::File::create(&log).expect("created");
        let (_watch, mut events) = watch(&path).expect("a watch");

        use std::io::Write as _;
        for line in 0..100 {
            writeln!(file, "line {line}").expect("written");
        }
        drop(file);
        let _ = std::fs::read(&path).expect("read");
        assert!(quiet(&mut events).await, "an event for a sibling's writes");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_link_swapped_the_way_kubernetes_updates_a_config_map_is_a_change() {
        use std::os::unix::fs::symlink;
        // The layout of a mounted ConfigMap: the file is a link through `..data`, itself
        // a link to a timestamped folder; an update writes a new folder and renames a new
        // `..data` link over the old one. The config's own name never changes.
        let folder = Folder::new("config-map");
        let (v1, v2) = (folder.0.join("..v1"), folder.0.join("..v2"));
        for (version, text) in [(&v1, "a"), (&v2, "b")] {
            std::fs::create_dir(version).expect("a version folder");
            std::fs::write(version.join("nexus.toml"), text).expect("written");
        }
        symlink("..v1", folder.0.join("..data")).expect("linked");
        let path = folder.0.join("nexus.toml");
        symlink("..data/nexus.toml", &path).expect("linked");
        let (_watch, mut events) = watch(&path).expect("a watch");

        symlink("..v2", folder.0.join("..data_tmp")).expect("linked");
        std::fs::rename(folder.0.join("..data_tmp"), folder.0.join("..data")).expect("renamed");
        assert!(changed(&mut events).await, "no event for the swapped link");
        assert_eq!(std::fs::read(&path).expect("read"), b"b");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_folders_watch_asks_for_no_event_while_a_sibling_is_written() {
        // What the kernel queues with the watch's mask: a log file held open and written
        // to (as `nexus serve 2>> nexus.log` does, or the budget's store) raises nothing
        // until it is closed, so it never wakes the gateway per line.
        let folder = Folder::new("mask");
        let mut inotify = inotify::Inotify::init().expect("inotify");
        inotify
            .watches()
            .add(&folder.0, platform::FOLDER_EVENTS)
            .expect("a watch");
        let mut file = std::fs::File::create(folder.0.join("nexus.log")).expect("created");
        let mut buffer = [0u8; 4096];
        let created: Vec<_> = inotify
            .read_events(&mut buffer)
            .expect("the create event")
            .map(|event| platform::change(event.mask, event.name))
            .collect();
        assert_eq!(created, [Some(Change::Arrived(OsStr::new("nexus.log")))]);

        use std::io::Write as _;
        for line in 0..100 {
            writeln!(file, "line {line}").expect("written");
            file.flush().expect("flushed");
        }
        let _ = std::fs::read(folder.0.join("nexus.log")).expect("read");
        match inotify.read_events(&mut buffer) {
            Ok(events) => {
                let events: Vec<_> = events.map(|event| event.mask).collect();
                panic!("events for a sibling's writes and reads: {events:?}");
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
        }
        drop(file);
        let closed: Vec<_> = inotify
            .read_events(&mut buffer)
            .expect("the close event")
            .map(|event| platform::change(event.mask, event.name))
            .collect();
        assert_eq!(closed, [Some(Change::Written(OsStr::new("nexus.log")))]);
        assert!(!closed[0].is_some_and(|change| change.concerns(OsStr::new("nexus.toml"))));
    }
}
