//! Per-tenant budgets: each tenant's own ledger and monthly limit, beside the global one.
//!
//! Ledgers live in a concurrent map keyed by tenant id ([`TenantLedgers`]), which can
//! grow at run time (a reload that adds a tenant finds the ledgers of the ones it keeps
//! and adds the new ones). The decision path never touches the map: when the router
//! attaches its tenants ([`BudgetReconciler::attach_tenants`](crate::BudgetReconciler::attach_tenants)),
//! each tenant's ledger is resolved once into a table indexed by
//! [`TenantId`](nexus_core::pipeline::TenantId), read without a lock or a hash.

use std::sync::Arc;

use dashmap::DashMap;
use nexus_core::clock::Clock;

use crate::{check_limit_usd, usd_to_nanos, SpendLedger, SpendSnapshot};

/// One tenant as the budget sees it: its id and optional monthly limit in USD.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantLimit {
    /// The tenant's id, as configured.
    pub id: String,
    /// Its own monthly limit; `None`: only the global limit applies to it.
    pub monthly_limit_usd: Option<f64>,
}

/// Every tenant's ledger, by id; grows when tenants are added, never shrinks (a tenant
/// removed by a reload and added back finds its month's spend).
#[derive(Debug, Default)]
pub struct TenantLedgers {
    ledgers: DashMap<Box<str>, Arc<SpendLedger>>,
    /// Each limited tenant's lease of its own shared scope, by id, kept here (not in a
    /// config's stage) so that a reload keeps drawing from the same lease.
    #[cfg(feature = "redis")]
    leases: DashMap<Box<str>, Arc<crate::lease::LeaseClient>>,
}

impl TenantLedgers {
    /// The ledger of tenant `id`, made (empty, for the current month of `clock`) when it
    /// has none yet.
    pub fn ledger(&self, id: &str, clock: &Arc<dyn Clock>) -> Arc<SpendLedger> {
        if let Some(ledger) = self.ledgers.get(id) {
            return Arc::clone(&ledger);
        }
        Arc::clone(
            &self
                .ledgers
                .entry(id.into())
                .or_insert_with(|| Arc::new(SpendLedger::new(Arc::clone(clock)))),
        )
    }

    /// Tenant `id`'s lease, started by `start` when it has none yet.
    #[cfg(feature = "redis")]
    pub(crate) fn lease(
        &self,
        id: &str,
        start: impl FnOnce() -> Result<crate::lease::LeaseClient, String>,
    ) -> Result<Arc<crate::lease::LeaseClient>, String> {
        if let Some(lease) = self.leases.get(id) {
            return Ok(Arc::clone(&lease));
        }
        match self.leases.entry(id.into()) {
            dashmap::mapref::entry::Entry::Occupied(lease) => Ok(Arc::clone(lease.get())),
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                Ok(Arc::clone(&slot.insert(Arc::new(start()?))))
            }
        }
    }

    /// How many tenants have a ledger.
    pub fn len(&self) -> usize {
        self.ledgers.len()
    }

    /// Whether no tenant has a ledger.
    pub fn is_empty(&self) -> bool {
        self.ledgers.is_empty()
    }
}

/// One tenant's budget on the decision path.
#[derive(Debug)]
pub(crate) struct TenantBudget {
    /// Shared with the journal's entries (no allocation per settlement).
    pub(crate) id: Arc<str>,
    pub(crate) limit_usd: Option<f64>,
    /// The limit in nano-dollars; `u64::MAX` without one.
    pub(crate) limit: u64,
    pub(crate) ledger: Arc<SpendLedger>,
    /// The tenant's lease of its own shared scope (`tenant:<id>`), when the budget is
    /// shared through Redis and the tenant has a limit.
    #[cfg(feature = "redis")]
    pub(crate) lease: Option<Arc<crate::lease::LeaseClient>>,
}

impl TenantBudget {
    pub(crate) fn new(spec: &TenantLimit, ledger: Arc<SpendLedger>) -> Result<Self, String> {
        if let Some(limit) = spec.monthly_limit_usd {
            check_limit_usd("monthly_limit_usd", limit)
                .map_err(|e| format!("tenant '{}': {e}", spec.id))?;
        }
        Ok(Self {
            id: spec.id.as_str().into(),
            limit_usd: spec.monthly_limit_usd,
            limit: spec.monthly_limit_usd.map_or(u64::MAX, usd_to_nanos),
            ledger,
            #[cfg(feature = "redis")]
            lease: None,
        })
    }

    /// Whether the tenant has a limit of its own.
    pub(crate) fn is_limited(&self) -> bool {
        self.limit != u64::MAX
    }
}

/// One tenant's month: what `GET /v1/nexus/budget` shows for it.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantSpend {
    /// The tenant's id.
    pub id: String,
    /// Its monthly limit, if it has one.
    pub limit_usd: Option<f64>,
    /// Its ledger's view of the current month.
    pub snapshot: SpendSnapshot,
}

impl TenantSpend {
    /// What is left of the tenant's own limit (never below 0), `None` without a limit.
    pub fn remaining_usd(&self) -> Option<f64> {
        self.limit_usd
            .map(|limit| (limit - self.snapshot.total_usd).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::clock::FakeClock;

    #[test]
    fn a_tenant_keeps_its_ledger_by_id() {
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::at_secs(1_795_307_670));
        let ledgers = TenantLedgers::default();
        let a = ledgers.ledger("team-a", &clock);
        a.try_reserve(5, None).unwrap();
        let again = ledgers.ledger("team-a", &clock);
        assert!(Arc::ptr_eq(&a, &again), "the same tenant finds its ledger");
        let b = ledgers.ledger("team-b", &clock);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(ledgers.len(), 2);
    }

    #[test]
    fn a_bad_tenant_limit_names_the_tenant() {
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::at_secs(1_795_307_670));
        let spec = TenantLimit {
            id: "team-a".into(),
            monthly_limit_usd: Some(-1.0),
        };
        let err = TenantBudget::new(&spec, Arc::new(SpendLedger::new(clock))).unwrap_err();
        assert!(err.contains("tenant 'team-a'"), "{err}");
        assert!(err.contains("monthly_limit_usd"), "{err}");
    }
}
