//! [`StoreStatus`]: what a budget stage did with its store, for reports, and how a dry
//! run reads a store without getting in a running router's way.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{RedbStore, StoreError, StoreErrorKind};
use crate::{nanos_to_usd, Month};

/// Where a budget stage's settled spend comes from, for reports (`nexus check`).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreStatus {
    /// Settled spend is persisted to this file, and was loaded from it.
    Durable {
        /// The file (canonical).
        path: PathBuf,
    },
    /// A dry run read the month's spend from this file, without changing or locking it.
    Read {
        /// The file (canonical).
        path: PathBuf,
    },
    /// A dry run found no file there: no spend recorded yet.
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A dry run could not read the file; the spend shown leaves out what it holds.
    Unread {
        /// The file.
        path: PathBuf,
        /// Why.
        error: StoreError,
    },
}

impl StoreStatus {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            StoreStatus::Durable { path }
            | StoreStatus::Read { path }
            | StoreStatus::Missing { path }
            | StoreStatus::Unread { path, .. } => path,
        }
    }

    /// A warning for the operator when the spend shown may be less than what was spent.
    pub fn warning(&self) -> Option<String> {
        match self {
            StoreStatus::Unread { error, .. } => Some(format!(
                "the budget's spend so far could not be read, so it counts as $0.00 here: {error}"
            )),
            _ => None,
        }
    }
}

impl fmt::Display for StoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreStatus::Durable { path } => write!(f, "kept in {}", path.display()),
            StoreStatus::Read { path } => write!(f, "read from {}", path.display()),
            StoreStatus::Missing { path } => {
                write!(f, "{} does not exist yet: nothing recorded", path.display())
            }
            StoreStatus::Unread { path, .. } => write!(f, "not read from {}", path.display()),
        }
    }
}

/// Reads `month`'s settled spend from the store at `path` for a dry run: read-only,
/// never creating the file. A missing, busy or unreadable store is reported in the
/// status, not as an error: the config is still valid. A damaged or incompatible store
/// is an error, since a router could not serve on it either.
pub(crate) fn read_for_dry_run(
    path: &Path,
    month: Month,
) -> Result<(StoreStatus, u64), StoreError> {
    let read = RedbStore::open_read_only(path).and_then(|store| {
        let months = store.months_blocking()?;
        let settled = months
            .iter()
            .find_map(|(m, nanos)| (*m == month).then_some(*nanos))
            .unwrap_or(0);
        Ok((store.path().to_owned(), settled))
    });
    match read {
        Ok((path, settled)) => {
            tracing::debug!(path = %path.display(), usd = nanos_to_usd(settled), "dry run read the spend store");
            Ok((StoreStatus::Read { path }, settled))
        }
        Err(error) => match error.kind {
            StoreErrorKind::Corrupt | StoreErrorKind::Incompatible => Err(error),
            // The file is missing but its folder is there: nothing recorded yet. A missing
            // folder is worth a warning: a router would not start.
            StoreErrorKind::NotFound
                if Path::new(&error.location)
                    .parent()
                    .is_some_and(Path::is_dir) =>
            {
                Ok((
                    StoreStatus::Missing {
                        path: PathBuf::from(&error.location),
                    },
                    0,
                ))
            }
            _ => Ok((
                StoreStatus::Unread {
                    path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
                    error,
                },
                0,
            )),
        },
    }
}
