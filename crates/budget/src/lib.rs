//! # nexus-budget
//!
//! The `budget` stage and everything behind it: a cost model (prices per model per
//! backend, in USD per million input and output tokens), a [`SpendLedger`] that never
//! lets concurrent requests overrun the monthly limit, durable [`SpendStore`]s, and a
//! [`ReconciliationLoop`] that folds stored and external spend into the ledger.
//!
//! ## The money flow
//! 1. A decision reads the ledger's month-to-date total (settled + external + reserved)
//!    and sets the budget status; under a block action it excludes every backend whose
//!    estimate would pass the limit.
//! 2. When a backend is chosen, its estimated cost is **reserved** with one
//!    compare-and-swap that fails if the total would pass the limit; the scheduler then
//!    picks again. No lock, no I/O.
//! 3. Finishing the route guard **settles**: the reservation is replaced by the cost of
//!    the actual token usage, and the amount is queued to the [`Journal`], which writes
//!    it to the store in batches. Dropping the guard releases the reservation.
//! 4. Every `reconciliation_interval_secs` the loop reads the store (spend settled by
//!    other replicas that share it) and the [`SpendSource`]s (e.g. a provider's billing
//!    API) into the ledger.
//!
//! The month is the UTC calendar month of the [`Clock`](nexus_core::Clock); at rollover
//! spend starts from zero, requests in flight keep their reservations, and the closed
//! month stays readable ([`SpendLedger::month_spend`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod journal;
#[cfg(feature = "redis")]
pub mod lease;
mod ledger;
mod month;
mod reconciler;
mod store;

pub use journal::{Journal, ReconciliationLoop, SpendSource};
pub use ledger::{nanos_to_usd, usd_to_nanos, SpendLedger, SpendSnapshot, NANOS_PER_USD};
pub use month::Month;
pub use reconciler::{
    BudgetReconciler, BudgetSettings, HardLimitAction, COST_CAP, HARD_LIMIT_ALL, HARD_LIMIT_CLOUD,
    HARD_LIMIT_WARNING, OVER_LIMIT,
};
pub use store::{MemoryStore, RedbStore, SpendStore, StoreError};
