//! # nexus-budget
//!
//! The `budget` stage and everything behind it: a cost model (prices per model per
//! backend, in USD per million input and output tokens), a [`SpendLedger`] whose
//! reservations never let concurrent requests pass the monthly limit (exactly so when
//! they bound their cost: see [`BudgetReconciler`]), durable [`SpendStore`]s, and a
//! [`ReconciliationLoop`] that folds stored and external spend into the ledger.
//!
//! ## The money flow
//! 1. A decision reads the ledger's month-to-date total (settled + external + reserved)
//!    and sets the budget status; under a block action it excludes every backend whose
//!    reservation would pass the limit.
//! 2. When a backend is chosen, the request's cost bound is **reserved** with one
//!    compare-and-swap that fails if the total would pass the limit; the scheduler then
//!    picks again. No lock, no I/O.
//! 3. Finishing the route guard **settles**: the reservation is replaced by the cost of
//!    the actual token usage, and the amount is queued to the [`Journal`] under the
//!    month the ledger counted it in; the journal writes it to the store in batches.
//!    Dropping the guard releases the reservation.
//! 4. Every `reconciliation_interval_secs` the loop reads the store (spend settled by
//!    other routers of the process that share it) and the [`SpendSource`]s (e.g. a
//!    provider's billing API) into the ledger.
//!
//! A store file has one writing process; dry runs read it beside that process, and a
//! write that fails (a full disk) stays queued until the store takes it: see
//! [`RedbStore`] and [`Journal`].
//!
//! The month is the UTC calendar month of the [`Clock`](nexus_core::clock::Clock); at rollover
//! spend starts from zero, requests in flight keep their reservations, and the closed
//! month stays readable ([`SpendLedger::month_spend`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod amount;
mod journal;
#[cfg(feature = "redis")]
pub mod lease;
mod ledger;
mod month;
mod reconciler;
mod store;
mod tenant;

pub use amount::{
    check_limit_usd, nanos_to_usd, usd_to_nanos, MAX_LIMIT_USD, MIN_LIMIT_USD, NANOS_PER_USD,
};
pub use journal::{Journal, JournalLag, ReconciliationLoop, SpendSource, DEFAULT_FLUSH_DEADLINE};
pub use ledger::{SpendLedger, SpendSnapshot};
pub use month::Month;
pub use reconciler::{BudgetReason, BudgetReconciler, BudgetSettings, HardLimitAction};
pub use store::{MemoryStore, RedbStore, SpendStore, StoreError, StoreErrorKind, StoreStatus};
pub use tenant::{TenantLedgers, TenantLimit, TenantSpend};
