//! [`RedbStore`]: settled spend in one file, on [redb](https://www.redb.org).
//!
//! Three things shape it. **One writer per file, any number of readers**: the file is
//! opened in redb's single-writer mode, so a router (or gateway) owns it while dry runs
//! (`nexus check`, `nexus route`) open it read-only, without creating or locking it, and
//! read what the router commits. **One handle per file per process**: a second router in
//! the same process (a reload) must not be refused by the first one's lock, so writable
//! opens share one handle per canonical path. **A handle that heals**: after an I/O error
//! redb refuses every write until the database is reopened, so an operation that fails
//! with one drops the handle and reopens it, now or on the next try.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase};

use super::contain::contain;
use super::format::{self, Fault};
use super::{SpendStore, StoreError, StoreErrorKind};
use crate::Month;

/// The writable handles of this process, by canonical path.
static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A durable store in one file, on [redb](https://www.redb.org): every `add` is a
/// committed, fsynced transaction, so settled spend survives `kill -9` and a restart
/// never resets the month.
///
/// - [`open`](Self::open) opens the file for writing, creating it (not its folder). One
///   process writes a file: a second process gets a [`Busy`](StoreErrorKind::Busy)
///   error. Within a process every `open` of the same file shares one handle, so two
///   routers (the old and the new config of a reload) can both write it.
/// - [`open_read_only`](Self::open_read_only) reads a file without creating, locking
///   out or changing it, while a router writes it.
/// - Each month's record carries a checksum; a damaged file is reported as
///   [`Corrupt`](StoreErrorKind::Corrupt), never read as some other amount, and a
///   writable open verifies the whole file first. A file of the first format is
///   migrated when it is opened for writing.
/// - After an I/O error (a full disk), the handle is reopened, so that writes succeed
///   again once the cause is gone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use nexus_budget::{Month, RedbStore, SpendStore};
/// let dir = std::env::temp_dir().join(format!("nexus-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("spend.redb");
/// let month = Month::new(2026, 11).unwrap();
/// {
///     let store = RedbStore::open(&path).unwrap();
///     store.add(month, 1_500).await.unwrap();
///     // A dry run reads it while the router holds it.
///     let reader = RedbStore::open_read_only(&path).unwrap();
///     assert_eq!(reader.month_total(month).await.unwrap(), 1_500);
/// }
/// let reopened = RedbStore::open(&path).unwrap();
/// assert_eq!(reopened.month_total(month).await.unwrap(), 1_500);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
    /// Refuses writes even when the shared handle could take them.
    read_only: bool,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.shared.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Whether a handle writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Write,
    Read,
}

enum Handle {
    Write(Database),
    Read(ReadOnlyDatabase),
}

impl Handle {
    fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        match self {
            Handle::Write(db) => db.begin_read(),
            Handle::Read(db) => db.begin_read(),
        }
    }
}

/// How a handle is (re)opened: the file at the path, or a test's storage.
enum Opener {
    File,
    #[cfg(test)]
    Backend(Box<dyn Fn() -> io::Result<super::faults::Faulty> + Send + Sync>),
}

/// One open file, shared by every [`RedbStore`] of it in the process.
struct Shared {
    path: PathBuf,
    access: Access,
    opener: Opener,
    /// `None` after a failure that needs a reopen, until it succeeds.
    db: Mutex<Option<Handle>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedbStore {
    /// Opens the store at `path` for writing, creating the file (not its folder) if
    /// needed, verifying it, and migrating a file of the first format. Shares the
    /// handle of this process's other stores of the same file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = canonical(path.as_ref())?;
        let mut writers = lock(&WRITERS);
        if let Some(shared) = writers.get(&path).and_then(Weak::upgrade) {
            return Ok(Self {
                shared,
                read_only: false,
            });
        }
        // A dead entry is a store of this process being dropped right now: its file
        // may still be locked for an instant.
        let closing = writers.remove(&path).is_some();
        writers.retain(|_, shared| shared.strong_count() > 0);
        let shared = Shared::open(path.clone(), Access::Write, Opener::File, closing)?;
        writers.insert(path, Arc::downgrade(&shared));
        Ok(Self {
            shared,
            read_only: false,
        })
    }

    /// Opens the store at `path` for reading only: never creates, changes or locks out
    /// the file, so it works while a router writes it and sees what that router
    /// commits. A missing file is a [`NotFound`](StoreErrorKind::NotFound) error; when
    /// this process has the file open for writing, reads go through that handle.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = canonical(path.as_ref())?;
        if let Some(shared) = lock(&WRITERS).get(&path).and_then(Weak::upgrade) {
            return Ok(Self {
                shared,
                read_only: true,
            });
        }
        if !path.exists() {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                path.display().to_string(),
                "no such file: no spend has been recorded there yet (a router creates it when it starts)",
            ));
        }
        Ok(Self {
            shared: Shared::open(path, Access::Read, Opener::File, false)?,
            read_only: true,
        })
    }

    /// A store over a test's storage backend, reopened through `backend`.
    #[cfg(test)]
    pub(super) fn with_backend(
        path: PathBuf,
        backend: impl Fn() -> io::Result<super::faults::Faulty> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            shared: Shared::open(
                path,
                Access::Write,
                Opener::Backend(Box::new(backend)),
                false,
            )?,
            read_only: false,
        })
    }

    /// The file (its canonical path).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether this store refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn add_blocking(&self, month: Month, nanos: u64) -> Result<(), StoreError> {
        self.write_blocking(|txn| format::add(txn, month, nanos))
    }

    fn add_tenant_blocking(
        &self,
        tenant: &str,
        month: Month,
        nanos: u64,
    ) -> Result<(), StoreError> {
        self.write_blocking(|txn| format::add_tenant(txn, tenant, month, nanos))
    }

    /// Runs `write` in one write transaction and commits it; refused when read-only.
    fn write_blocking(
        &self,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<(), Fault>,
    ) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::new(
                StoreErrorKind::ReadOnly,
                self.shared.path.display().to_string(),
                "opened read-only (a dry run); open it with RedbStore::open to write",
            ));
        }
        self.shared.with_handle(|handle| match handle {
            Handle::Write(db) => {
                let txn = db.begin_write()?;
                write(&txn)?;
                txn.commit()?;
                Ok(())
            }
            Handle::Read(_) => Err(Fault::Redb(redb::Error::Unsupported)),
        })
    }

    pub(crate) fn months_blocking(&self) -> Result<Vec<(Month, u64)>, StoreError> {
        self.shared
            .with_handle(|handle| format::read_months(&handle.begin_read()?))
    }
}

#[async_trait]
impl SpendStore for RedbStore {
    async fn add(&self, month: Month, nanos: u64) -> Result<(), StoreError> {
        self.add_blocking(month, nanos)
    }

    async fn month_total(&self, month: Month) -> Result<u64, StoreError> {
        Ok(self
            .months_blocking()?
            .into_iter()
            .find_map(|(m, nanos)| (m == month).then_some(nanos))
            .unwrap_or(0))
    }

    async fn months(&self) -> Result<Vec<(Month, u64)>, StoreError> {
        self.months_blocking()
    }

    async fn add_tenant(&self, tenant: &str, month: Month, nanos: u64) -> Result<(), StoreError> {
        self.add_tenant_blocking(tenant, month, nanos)
    }

    async fn tenant_months(&self, month: Month) -> Result<Vec<(String, u64)>, StoreError> {
        self.shared
            .with_handle(|handle| format::read_tenants(&handle.begin_read()?, month))
    }

    fn location(&self) -> String {
        self.shared.path.display().to_string()
    }
}

impl Shared {
    fn open(
        path: PathBuf,
        access: Access,
        opener: Opener,
        closing: bool,
    ) -> Result<Arc<Self>, StoreError> {
        let shared = Self {
            path,
            access,
            opener,
            db: Mutex::new(None),
        };
        let mut attempts = if closing { 200 } else { 1 };
        let handle = loop {
            attempts -= 1;
            match shared.open_handle() {
                Err(Fault::Redb(redb::Error::DatabaseAlreadyOpen)) if attempts > 0 => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other.map_err(|fault| shared.error(fault))?,
            }
        };
        *lock(&shared.db) = Some(handle);
        Ok(Arc::new(shared))
    }

    fn builder() -> redb::Builder {
        let mut builder = Database::builder();
        builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
        builder
    }

    fn open_handle(&self) -> Result<Handle, Fault> {
        if self.access == Access::Read {
            return contain(|| Ok(Handle::Read(Self::builder().open_read_only(&self.path)?)));
        }
        let db = contain(|| {
            let mut builder = Self::builder();
            // Verifies every page's checksum: a damaged file fails here, with an error,
            // instead of panicking or misreading later. The file is small.
            builder.set_check_integrity_on_open(true);
            let db = match &self.opener {
                Opener::File => builder.create(&self.path)?,
                #[cfg(test)]
                Opener::Backend(backend) => {
                    builder.create_with_backend(backend().map_err(redb::Error::Io)?)?
                }
            };
            Ok::<_, Fault>(db)
        })?;
        let migrated = contain(|| {
            let txn = db.begin_write()?;
            let migrated = format::prepare(&txn)?;
            txn.commit()?;
            Ok::<_, Fault>(migrated)
        })?;
        if migrated > 0 {
            tracing::info!(
                path = %self.path.display(),
                months = migrated,
                "migrated the spend store to format {}",
                format::FORMAT
            );
        }
        Ok(Handle::Write(db))
    }

    /// Runs `op` on the open handle, reopening it first if an earlier failure closed it,
    /// and closing it (to reopen) after a failure that leaves it unusable.
    fn with_handle<T>(
        &self,
        op: impl FnOnce(&Handle) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        let mut slot = lock(&self.db);
        let handle = match slot.take() {
            Some(handle) => handle,
            None => self.open_handle().map_err(|fault| self.error(fault))?,
        };
        let result = contain(|| op(&handle));
        match result {
            Ok(value) => {
                *slot = Some(handle);
                Ok(value)
            }
            Err(fault) if needs_reopen(&fault) => {
                // redb refuses every write after an I/O error until the database is
                // reopened; after a contained panic its state is unknown. Close it (which
                // releases the file's locks) and reopen, now or on the next try.
                let _ = contain(move || {
                    drop(handle);
                    Ok::<_, Fault>(())
                });
                match self.open_handle() {
                    Ok(reopened) => *slot = Some(reopened),
                    Err(reopen) => tracing::debug!(
                        path = %self.path.display(),
                        error = ?reopen,
                        "reopening the spend store failed; retrying on the next write"
                    ),
                }
                Err(self.error(fault))
            }
            Err(fault) => {
                *slot = Some(handle);
                Err(self.error(fault))
            }
        }
    }

    /// A [`StoreError`] for `fault`, of the right kind, saying what to do.
    fn error(&self, fault: Fault) -> StoreError {
        let path = self.path.display().to_string();
        let damaged = |what: &dyn fmt::Display| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                &path,
                format!(
                    "the file is damaged ({what}), so nothing was read from it; move it aside \
                     (mv {path} {path}.damaged) and restore a backup, or let the router start \
                     a new one (this month's spend then restarts from $0)"
                ),
            )
        };
        let error = match fault {
            Fault::Damaged(what) => return damaged(&what),
            Fault::Newer(found) => {
                return StoreError::new(
                    StoreErrorKind::Incompatible,
                    path,
                    format!(
                        "written by a newer Nexus (store format {found}; this one reads up to {}); use that version, or move the file aside",
                        format::FORMAT
                    ),
                )
            }
            Fault::Redb(error) => error,
        };
        match error {
            redb::Error::Corrupted(what) => damaged(&what),
            redb::Error::TableTypeMismatch { .. }
            | redb::Error::TypeDefinitionChanged { .. }
            | redb::Error::TableIsMultimap(_) => damaged(&error),
            redb::Error::Io(io) => io_error(&path, self.access, &io).unwrap_or_else(|| damaged(&io)),
            redb::Error::PreviousIo => StoreError::new(
                StoreErrorKind::Io,
                path,
                "an earlier write failed; the store is being reopened",
            ),
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::new(
                    StoreErrorKind::Busy,
                    path,
                    "another process has the file open (a router or gateway: one process writes a store file, or a nexus of another version); stop it, or give this router its own `store` file",
                )
            }
            redb::Error::RepairAborted => StoreError::new(
                StoreErrorKind::NeedsRecovery,
                path,
                "the file was not closed cleanly (a router stopped abruptly) and only a router opening it for writing recovers it",
            ),
            redb::Error::UpgradeRequired(version) => StoreError::new(
                StoreErrorKind::Incompatible,
                path,
                format!("written in redb file format {version}, which this build cannot read; move the file aside"),
            ),
            other => StoreError::new(StoreErrorKind::Other, path, other.to_string()),
        }
    }
}

/// The error for an I/O failure, or `None` when the "I/O error" is redb finding a file
/// that is not a database (a damaged file).
fn io_error(path: &str, access: Access, io: &io::Error) -> Option<StoreError> {
    use io::ErrorKind;
    let (kind, message) = match io.kind() {
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof => return None,
        ErrorKind::NotFound => (StoreErrorKind::NotFound, format!("{io}")),
        ErrorKind::PermissionDenied if access == Access::Read => (
            StoreErrorKind::Io,
            format!("{io}: this user cannot read the file"),
        ),
        ErrorKind::PermissionDenied => (
            StoreErrorKind::Io,
            format!("{io}: the user running the router must be able to write the file and its folder"),
        ),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => (
            StoreErrorKind::Io,
            format!("{io}: the disk is full; settled spend stays queued in memory and is written once there is space"),
        ),
        _ => (
            StoreErrorKind::Io,
            format!("I/O error: {io}; check the disk and the file's permissions"),
        ),
    };
    Some(StoreError::new(kind, path, message))
}

/// Whether `fault` leaves the handle unusable until it is reopened.
fn needs_reopen(fault: &Fault) -> bool {
    matches!(
        fault,
        Fault::Redb(
            redb::Error::Io(_)
                | redb::Error::PreviousIo
                | redb::Error::Corrupted(_)
                | redb::Error::DatabaseClosed
        )
    )
}

/// The path a file is known by in this process: absolute, with symbolic links resolved
/// (of the folder, when the file does not exist yet).
fn canonical(path: &Path) -> Result<PathBuf, StoreError> {
    let io = |e: io::Error| {
        StoreError::new(
            StoreErrorKind::Io,
            path.display().to_string(),
            e.to_string(),
        )
    };
    let absolute = std::path::absolute(path).map_err(io)?;
    let shown = absolute.display().to_string();
    if let Ok(file) = absolute.canonicalize() {
        return Ok(file);
    }
    let (Some(folder), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(StoreError::new(
            StoreErrorKind::Other,
            shown,
            "not a file path; set `store` to a file, e.g. \"spend.redb\"",
        ));
    };
    match folder.canonicalize() {
        Ok(folder) => Ok(folder.join(name)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::new(
            StoreErrorKind::NotFound,
            shown,
            format!(
                "the folder {} does not exist; create it (mkdir -p {}) or change `store`",
                folder.display(),
                folder.display()
            ),
        )),
        Err(e) => Err(io(e)),
    }
}
