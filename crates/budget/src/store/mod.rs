//! Where settled spend is kept: the [`SpendStore`] trait, an in-memory store for tests
//! and single-shot use, and [`RedbStore`], a durable embedded store.
//!
//! Stores are asynchronous (`async-trait`) because some are remote (a shared database
//! for several router replicas); the decision path never calls them. The ledger's
//! [`Journal`](crate::Journal) writes to them in the background and the
//! [`ReconciliationLoop`](crate::ReconciliationLoop) reads them.
//!
//! A [`StoreError`] carries a [`StoreErrorKind`], so that a caller can tell a store
//! that is busy or absent (a dry run reports it and goes on) from one that is damaged
//! (nothing should route on it), and a message that says what to do.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::Month;

mod contain;
#[cfg(test)]
mod faults;
mod file;
mod format;
mod status;

pub use file::RedbStore;
pub(crate) use status::read_for_dry_run;
pub use status::StoreStatus;

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The file, or its folder, does not exist.
    NotFound,
    /// Another process holds the file (a running router, or one of another version).
    Busy,
    /// The file was not closed cleanly and a read-only open cannot recover it; the next
    /// router to open it for writing does.
    NeedsRecovery,
    /// The file is damaged: it is not a store, or what it holds fails its checksums or
    /// is not a plausible amount.
    Corrupt,
    /// The file was written by a newer Nexus, or an older redb file format.
    Incompatible,
    /// Reading or writing failed (a full disk, a permission, a failing device).
    Io,
    /// The store was opened read-only and cannot take writes.
    ReadOnly,
    /// Anything else.
    Other,
}

/// A store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("spend store {location}: {message}")]
pub struct StoreError {
    /// What kind of failure it is.
    pub kind: StoreErrorKind,
    /// Which store (a path, a URL).
    pub location: String,
    /// What failed, and what to do about it.
    pub message: String,
}

impl StoreError {
    /// An error of `kind` at `location`.
    pub fn new(
        kind: StoreErrorKind,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            location: location.into(),
            message: message.into(),
        }
    }
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

    /// Adds settled spend of tenant `tenant` (its configured id) to `month`. When this
    /// returns `Ok`, the spend survives a crash. A store that keeps no tenants refuses it
    /// (the default).
    async fn add_tenant(&self, tenant: &str, month: Month, nanos: u64) -> Result<(), StoreError> {
        let _ = (month, nanos);
        Err(StoreError::new(
            StoreErrorKind::Other,
            self.location(),
            format!("this store keeps no tenant spend (tenant '{tenant}'); use a `store` file"),
        ))
    }

    /// Every tenant's settled spend in `month`, by id (none by default).
    async fn tenant_months(&self, month: Month) -> Result<Vec<(String, u64)>, StoreError> {
        let _ = month;
        Ok(Vec::new())
    }

    /// A name for logs and reports: the file, the URL.
    fn location(&self) -> String {
        format!("{self:?}")
    }
}

/// A store in memory: lost when the process ends. For tests and one-shot tools.
#[derive(Debug, Default)]
pub struct MemoryStore {
    months: Mutex<BTreeMap<Month, u64>>,
    tenants: Mutex<BTreeMap<(String, Month), u64>>,
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

    async fn add_tenant(&self, tenant: &str, month: Month, nanos: u64) -> Result<(), StoreError> {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = tenants.entry((tenant.to_owned(), month)).or_default();
        *total = total.saturating_add(nanos);
        Ok(())
    }

    async fn tenant_months(&self, month: Month) -> Result<Vec<(String, u64)>, StoreError> {
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(tenants
            .iter()
            .filter(|((_, m), _)| *m == month)
            .map(|((id, _), nanos)| (id.clone(), *nanos))
            .collect())
    }

    fn location(&self) -> String {
        "memory".to_owned()
    }
}
