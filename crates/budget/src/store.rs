//! Where settled spend is kept: the [`SpendStore`] trait, an in-memory store for tests
//! and single-shot use, and [`RedbStore`], a durable embedded store.
//!
//! Stores are asynchronous (`async-trait`) because some are remote (a shared database
//! for several router replicas); the decision path never calls them. The ledger's
//! [`Journal`](crate::Journal) writes to them in the background and the
//! [`ReconciliationLoop`](crate::ReconciliationLoop) reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::Month;

/// A store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("spend store {location}: {message}")]
pub struct StoreError {
    /// Which store (a path, a URL).
    pub location: String,
    /// What failed.
    pub message: String,
}

/// Durable month-by-month settled spend, in nano-dollars.
#[async_trait]
pub trait SpendStore: Send + Sync + fmt::Debug {
    /// Adds settled spend to `month`. When this returns `Ok`, the spend survives a crash.
    async fn add(&self, month: Month, nanos: u64) -> Result<(), StoreError>;

    /// The settled spend of `month` (0 when none).
    async fn month_total(&self, month: Month) -> Result<u64, StoreError>;

    /// Every month with spend, oldest first.
    async fn months(&self) -> Result<Vec<(Month, u64)>, StoreError>;
}

/// A store in memory: lost when the process ends. For tests and one-shot tools.
#[derive(Debug, Default)]
pub struct MemoryStore {
    months: Mutex<BTreeMap<Month, u64>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn months_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Month, u64>> {
        self.months
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SpendStore for MemoryStore {
    async fn add(&self, month: Month, nanos: u64) -> Result<(), StoreError> {
        let mut months = self.months_map();
        let total = months.entry(month).or_default();
        *total = total.saturating_add(nanos);
        Ok(())
    }

    async fn month_total(&self, month: Month) -> Result<u64, StoreError> {
        Ok(self.months_map().get(&month).copied().unwrap_or(0))
    }

    async fn months(&self) -> Result<Vec<(Month, u64)>, StoreError> {
        Ok(self.months_map().iter().map(|(m, n)| (*m, *n)).collect())
    }
}

/// Month key -> settled nano-dollars.
const SPEND: TableDefinition<'static, u32, u64> = TableDefinition::new("spend_by_month");

/// A durable store in one file, on [redb](https://www.redb.org): every `add` is a
/// committed, fsynced transaction, so settled spend survives `kill -9` and a restart
/// never resets the month.
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
/// }
/// let reopened = RedbStore::open(&path).unwrap();
/// assert_eq!(reopened.month_total(month).await.unwrap(), 1_500);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
pub struct RedbStore {
    path: PathBuf,
    db: Database,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file (not its folder) if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let db = Database::create(&path).map_err(|e| StoreError {
            location: path.display().to_string(),
            message: format!("cannot open: {e}; check that the folder exists and is writable and that no other process holds the file"),
        })?;
        Ok(Self { path, db })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl fmt::Display) -> StoreError {
        StoreError {
            location: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn add_blocking(&self, month: Month, nanos: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(SPEND).map_err(|e| self.error(e))?;
            let current = table
                .get(month.key())
                .map_err(|e| self.error(e))?
                .map_or(0, |v| v.value());
            table
                .insert(month.key(), current.saturating_add(nanos))
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    fn read_blocking<T>(
        &self,
        read: impl FnOnce(&redb::ReadOnlyTable<u32, u64>) -> Result<T, redb::StorageError>,
        empty: T,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        match txn.open_table(SPEND) {
            Ok(table) => read(&table).map_err(|e| self.error(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(empty),
            Err(e) => Err(self.error(e)),
        }
    }
}

#[async_trait]
impl SpendStore for RedbStore {
    async fn add(&self, month: Month, nanos: u64) -> Result<(), StoreError> {
        self.add_blocking(month, nanos)
    }

    async fn month_total(&self, month: Month) -> Result<u64, StoreError> {
        self.read_blocking(|t| Ok(t.get(month.key())?.map_or(0, |v| v.value())), 0)
    }

    async fn months(&self) -> Result<Vec<(Month, u64)>, StoreError> {
        self.read_blocking(
            |t| {
                t.iter()?
                    .map(|entry| entry.map(|(k, v)| (Month::from_key(k.value()), v.value())))
                    .collect()
            },
            Vec::new(),
        )
    }
}
