//! [`BudgetReconciler`]: the `budget` stage.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nexus_core::{
    clock::Clock,
    fleet::{BackendSet, Offering},
    registry::{BuildContext, BuildError},
    stage::{
        BudgetStatus, ExplainContext, Explanation, Reason, ReconcileError, RouteTicket, Settlement,
        StageReason, Verdict,
    },
    Fleet, Reconciler, RoutingIntent, Zone,
};
use serde::Deserialize;

use crate::journal::Background;
use crate::tenant::TenantBudget;
use crate::{
    check_limit_usd, nanos_to_usd, usd_to_nanos, Journal, SpendLedger, SpendSource, SpendStore,
    StoreError,
};

/// Why the budget stage excluded (or, in `on_route`, vetoed) a backend, or what it
/// warned about. Amounts are USD. (A shared budget's lease refusals have their own
/// codes: `lease::LeaseReason`, rendered by the lease module.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetReason {
    /// The request's cost would take spend past the limit.
    OverLimit {
        /// Month-to-date spend, reservations of requests in flight included.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
        /// What this request reserves.
        cost_usd: f64,
    },
    /// Hard limit reached, `block_cloud`.
    HardLimitCloud {
        /// Month-to-date spend.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
    },
    /// Hard limit reached, `block_all`.
    HardLimitAll {
        /// Month-to-date spend.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
    },
    /// The estimate exceeds the policy's `max_cost_per_request`.
    CostCap {
        /// The estimated cost.
        cost_usd: f64,
        /// The cap.
        cap_usd: f64,
        /// The traffic policy that set the cap (its index), `None` for the request.
        policy: Option<usize>,
    },
    /// The request's cost would take its tenant's spend past the tenant's own limit.
    TenantOverLimit {
        /// The tenant's spend, reservations included.
        spend_usd: f64,
        /// The tenant's monthly limit.
        limit_usd: f64,
        /// The tenant's index in the tenant table.
        tenant: usize,
    },
    /// A warning, not an exclusion: hard limit reached, `warn`.
    HardLimitWarning {
        /// Month-to-date spend.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
    },
}

// Compact codes: `values = [spend, limit, cost]`, `[spend, limit, 0]`, `[cost, cap,
// policy or -1]`, `[tenant's spend, tenant's limit, tenant index]`.
const OVER_LIMIT: u16 = 1;
const HARD_LIMIT_CLOUD: u16 = 2;
const HARD_LIMIT_ALL: u16 = 3;
const COST_CAP: u16 = 4;
const TENANT_OVER_LIMIT: u16 = 5;
const HARD_LIMIT_WARNING: u16 = 10;

impl From<BudgetReason> for Reason {
    #[inline]
    fn from(reason: BudgetReason) -> Reason {
        match reason {
            BudgetReason::OverLimit {
                spend_usd,
                limit_usd,
                cost_usd,
            } => Reason::with(OVER_LIMIT, [spend_usd, limit_usd, cost_usd]),
            BudgetReason::HardLimitCloud {
                spend_usd,
                limit_usd,
            } => Reason::with(HARD_LIMIT_CLOUD, [spend_usd, limit_usd, 0.0]),
            BudgetReason::HardLimitAll {
                spend_usd,
                limit_usd,
            } => Reason::with(HARD_LIMIT_ALL, [spend_usd, limit_usd, 0.0]),
            BudgetReason::CostCap {
                cost_usd,
                cap_usd,
                policy,
            } => Reason::with(COST_CAP, [cost_usd, cap_usd, Reason::policy_value(policy)]),
            BudgetReason::TenantOverLimit {
                spend_usd,
                limit_usd,
                tenant,
            } => Reason::with(TENANT_OVER_LIMIT, [spend_usd, limit_usd, tenant as f64]),
            BudgetReason::HardLimitWarning {
                spend_usd,
                limit_usd,
            } => Reason::with(HARD_LIMIT_WARNING, [spend_usd, limit_usd, 0.0]),
        }
    }
}

impl StageReason for BudgetReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [a, b, c] = reason.values();
        Some(match reason.code() {
            OVER_LIMIT => BudgetReason::OverLimit {
                spend_usd: a,
                limit_usd: b,
                cost_usd: c,
            },
            HARD_LIMIT_CLOUD => BudgetReason::HardLimitCloud {
                spend_usd: a,
                limit_usd: b,
            },
            HARD_LIMIT_ALL => BudgetReason::HardLimitAll {
                spend_usd: a,
                limit_usd: b,
            },
            COST_CAP => BudgetReason::CostCap {
                cost_usd: a,
                cap_usd: b,
                policy: Reason::policy_index(c),
            },
            TENANT_OVER_LIMIT => BudgetReason::TenantOverLimit {
                spend_usd: a,
                limit_usd: b,
                tenant: c as usize,
            },
            HARD_LIMIT_WARNING => BudgetReason::HardLimitWarning {
                spend_usd: a,
                limit_usd: b,
            },
            _ => return None,
        })
    }
}

/// What happens at or above the monthly limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HardLimitAction {
    /// Route as usual, with a warning in the decision.
    Warn,
    /// Exclude cloud backends (and zone-less ones, which count as cloud).
    #[default]
    BlockCloud,
    /// Exclude every backend.
    BlockAll,
}

impl HardLimitAction {
    /// The action as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            HardLimitAction::Warn => "warn",
            HardLimitAction::BlockCloud => "block_cloud",
            HardLimitAction::BlockAll => "block_all",
        }
    }
}

const fn default_soft_limit() -> f64 {
    0.75
}

const fn default_cloud_weight() -> f64 {
    0.5
}

const fn default_interval() -> u64 {
    60
}

/// The `[routing.budget]` settings.
///
/// Every key is optional: without a monthly limit the stage only enforces policies'
/// `max_cost_per_request` and reports Normal, which is what the default pipeline runs
/// when a config has no `[routing.budget]` table ([`Default`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// The monthly limit in USD, from [`MIN_LIMIT_USD`](crate::MIN_LIMIT_USD) to
    /// [`MAX_LIMIT_USD`](crate::MAX_LIMIT_USD); none: no monthly limit, per-request caps
    /// only.
    #[serde(default)]
    pub monthly_limit_usd: Option<f64>,
    /// Fraction of the limit, in (0, 1], where SoftLimit starts. Default 0.75.
    #[serde(default = "default_soft_limit")]
    pub soft_limit_percent: f64,
    /// What happens at the limit. Default `block_cloud`.
    #[serde(default)]
    pub hard_limit_action: HardLimitAction,
    /// The factor cloud backends' scores are multiplied by at SoftLimit, in (0, 1].
    /// Default 0.5: a cloud backend needs twice a local one's score to win.
    #[serde(default = "default_cloud_weight")]
    pub soft_limit_cloud_weight: f64,
    /// The durable store's file, relative to the config file's folder; in memory when
    /// absent.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Seconds between reconciliation passes. Default 60.
    #[serde(default = "default_interval")]
    pub reconciliation_interval_secs: u64,
    /// `[routing.budget.redis]`: one monthly limit shared by every replica that points
    /// at the same Redis and `key_prefix` (see [`lease`](crate::lease)). Needs
    /// `monthly_limit_usd`.
    #[cfg(feature = "redis")]
    #[serde(default)]
    pub redis: Option<crate::lease::RedisBudgetSettings>,
    /// `[routing.budget.redis]` in a build without the `redis` feature: refused by
    /// [`validate`](Self::validate) with a clear error rather than "unknown field".
    #[cfg(not(feature = "redis"))]
    #[serde(default)]
    pub redis: Option<serde::de::IgnoredAny>,
}

impl BudgetSettings {
    /// Settings with a limit and every default.
    pub fn new(monthly_limit_usd: f64) -> Self {
        Self {
            monthly_limit_usd: Some(monthly_limit_usd),
            ..Self::default()
        }
    }
}

impl Default for BudgetSettings {
    /// No monthly limit (only per-request caps are enforced) and every other default.
    fn default() -> Self {
        Self {
            monthly_limit_usd: None,
            soft_limit_percent: default_soft_limit(),
            hard_limit_action: HardLimitAction::default(),
            soft_limit_cloud_weight: default_cloud_weight(),
            store: None,
            reconciliation_interval_secs: default_interval(),
            redis: None,
        }
    }
}

impl BudgetSettings {
    /// Checks the values; the error names the key and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(limit) = self.monthly_limit_usd {
            check_limit_usd("monthly_limit_usd", limit)?;
        }
        nexus_core::registry::check_fraction(
            "soft_limit_percent",
            "a fraction of the limit",
            self.soft_limit_percent,
        )?;
        let weight = self.soft_limit_cloud_weight;
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(format!(
                "soft_limit_cloud_weight is a factor in (0, 1], got {weight}"
            ));
        }
        if self.reconciliation_interval_secs == 0 {
            return Err("reconciliation_interval_secs must be at least 1".to_owned());
        }
        self.validate_redis()
    }

    #[cfg(feature = "redis")]
    fn validate_redis(&self) -> Result<(), String> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        if self.monthly_limit_usd.is_none() {
            return Err("redis: a shared budget needs a limit to share; set monthly_limit_usd in [routing.budget], or remove [routing.budget.redis]".to_owned());
        }
        let max_usd = crate::lease::MAX_SHARED_LIMIT_USD;
        if self.monthly_limit_usd.is_some_and(|limit| limit >= max_usd) {
            return Err(format!("monthly_limit_usd: a shared budget ([routing.budget.redis]) holds less than {max_usd} USD a month, so that amounts stay exact in Redis's Lua numbers; lower the limit"));
        }
        // Every message of `validate` leads with the key it is about: prefix the table
        // so that the error is reported at that key's line.
        redis.validate().map_err(|e| format!("redis.{e}"))
    }

    #[cfg(not(feature = "redis"))]
    fn validate_redis(&self) -> Result<(), String> {
        match self.redis {
            None => Ok(()),
            Some(_) => Err("redis: this build of nexus has no shared-budget support; rebuild with the `redis` feature (nexus-cli enables it by default), or remove [routing.budget.redis]".to_owned()),
        }
    }
}

/// The `budget` stage.
///
/// - **Status.** Month-to-date spend, including the reserved cost of requests in flight,
///   is Normal below `soft_limit_percent` of the limit, SoftLimit from there (cloud
///   scores are multiplied by `soft_limit_cloud_weight`), HardLimit at the limit.
/// - **Hard limit.** `warn` routes with a warning; `block_cloud` excludes cloud
///   backends; `block_all` excludes every backend.
/// - **Never overrun.** Under a block action, a backend whose estimated cost for this
///   request would take spend past the limit is excluded before the limit is reached;
///   and the chosen backend's cost is reserved in [`on_route`](Reconciler::on_route)
///   with a compare-and-swap that fails if concurrent requests got there first, in
///   which case the scheduler picks again.
/// - **Cost cap.** A backend whose estimate exceeds the policy's `max_cost_per_request`
///   is excluded, with or without a monthly limit.
/// - **No monthly limit** (`monthly_limit_usd` unset): the status stays Normal, nothing
///   is blocked for spend, and spend is still counted.
/// - **Settlement.** Finishing the route guard replaces the reservation with the cost of
///   the actual token usage and records it in the store, under the month the ledger
///   counted it in; dropping it releases it.
///
/// # What the limit guarantees
///
/// A request reserves the cost of its input bound
/// ([`Request::max_input_tokens`](nexus_core::Request::max_input_tokens), else its
/// `input_tokens`) and its estimated output (`max_output_tokens`, else half the input),
/// and at least one nano-dollar on a priced backend. The true cost of a served request
/// is always recorded, even when it is more than was reserved. Under a block action
/// (`block_cloud`, `block_all`), with spend counted as settled + external + reserved:
///
/// 1. A request on a priced backend is admitted only if its reservation fits under the
///    limit at that moment (one compare-and-swap): so once spend is at or over the
///    limit, no request on a priced backend is admitted.
/// 2. **Exact:** when every request's reservation is at least its actual cost (its
///    input bound is at least the real input and it sets `max_output_tokens`, which
///    the backend honours), spend never passes the limit.
/// 3. **Otherwise** spend passes the limit by at most the sum of (actual − reserved)
///    over the requests that were in flight the last time spend was at or under the
///    limit: no request admitted after that point can add to the excess.
///
/// Spend this router does not reserve (external sources, other replicas' spend read
/// from a shared store) can pass the limit too, and then stops admissions by rule 1.
/// Under `warn` nothing is refused.
#[derive(Debug)]
pub struct BudgetReconciler {
    settings: BudgetSettings,
    limit: u64,
    soft: u64,
    fleet: Arc<Fleet>,
    ledger: Arc<SpendLedger>,
    cloud: BackendSet,
    /// Shared with the stage a reload replaces or replaced: one journal and store.
    background: Option<Arc<Background>>,
    store_status: Option<crate::StoreStatus>,
    clock: Arc<dyn Clock>,
    /// Every tenant's ledger by id (to share with the stage of the next config on
    /// reload), and this config's tenants by [`TenantId`](nexus_core::pipeline::TenantId), once
    /// attached.
    tenants: OnceLock<(Arc<crate::TenantLedgers>, Box<[TenantBudget]>)>,
    /// This replica's lease of the shared budget (scope `global`), when
    /// `[routing.budget.redis]` is configured.
    #[cfg(feature = "redis")]
    lease: Option<Arc<crate::lease::LeaseClient>>,
    /// Settings of this (reloaded) config that are not in force because the running
    /// lease was started with other values; see [`restart_required`](Self::restart_required).
    restart_required: std::sync::Mutex<Vec<String>>,
}

impl BudgetReconciler {
    /// A budget over `fleet` with an in-memory ledger and no store.
    pub fn new(
        fleet: Arc<Fleet>,
        settings: BudgetSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        settings.validate()?;
        let mut cloud = BackendSet::with_capacity(fleet.len());
        for backend in fleet.backends() {
            if backend.zone() == Zone::Cloud {
                cloud.insert(backend.id());
            }
        }
        // Without a monthly limit, thresholds no total reaches (totals fit in an i64).
        let (limit, soft) = match settings.monthly_limit_usd {
            Some(limit) => (
                usd_to_nanos(limit),
                usd_to_nanos(limit * settings.soft_limit_percent),
            ),
            None => (u64::MAX, u64::MAX),
        };
        Ok(Self {
            limit,
            soft,
            settings,
            fleet,
            ledger: Arc::new(SpendLedger::new(Arc::clone(&clock))),
            cloud,
            background: None,
            store_status: None,
            clock,
            tenants: OnceLock::new(),
            #[cfg(feature = "redis")]
            lease: None,
            restart_required: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Gives this stage its tenants, in [`TenantId`](nexus_core::pipeline::TenantId) order: a
    /// request made for a tenant counts against the tenant's own limit as well as the
    /// global one. Each tenant's ledger is found by id in `ledgers` (pass the previous
    /// stage's [`tenant_ledgers`](Self::tenant_ledgers) on a reload to keep the month's
    /// spend; a new map otherwise), or added to it.
    ///
    /// # Errors
    /// A limit out of range (naming the tenant), or tenants attached twice.
    pub fn attach_tenants(
        &self,
        tenants: &[crate::TenantLimit],
        ledgers: Arc<crate::TenantLedgers>,
    ) -> Result<(), String> {
        let table = tenants
            .iter()
            .map(|spec| {
                let ledger = ledgers.ledger(&spec.id, &self.clock);
                if let Some(background) = &self.background {
                    background.fold_tenant(&spec.id, &ledger);
                }
                let budget = TenantBudget::new(spec, ledger)?;
                self.with_tenant_lease(budget, &ledgers)
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.tenants
            .set((ledgers, table.into_boxed_slice()))
            .map_err(|_| "the budget's tenants are already attached".to_owned())
    }

    /// With the budget shared through Redis (a global lease running), a tenant with a
    /// limit of its own gets a lease of its own scope, `tenant:<id>`: its spend then
    /// counts, across every replica, against its limit as well as the global one.
    #[cfg(feature = "redis")]
    ///
    /// A tenant's lease is kept in `ledgers` beside its ledger, so that the stage of a
    /// reloaded config draws from the same one (started with the limit it had then).
    fn with_tenant_lease(
        &self,
        mut budget: TenantBudget,
        ledgers: &crate::TenantLedgers,
    ) -> Result<TenantBudget, String> {
        let (Some(_), Some(settings), true) =
            (&self.lease, &self.settings.redis, budget.is_limited())
        else {
            return Ok(budget);
        };
        let lease = ledgers.lease(&budget.id, || {
            crate::lease::LeaseClient::start(
                settings,
                &format!("tenant:{}", budget.id),
                budget.limit,
                Some(Arc::clone(&budget.ledger)),
                Arc::clone(&self.clock),
            )
            .map_err(|e| format!("tenant '{}': its shared budget: {e}", budget.id))
        })?;
        let running = lease.status().limit_nanos;
        if running != budget.limit {
            self.note_restart_required(vec![format!(
                "[[tenants]] '{}' monthly_limit_usd: running {}, file {} (running value kept by its shared budget's lease until a restart)",
                budget.id,
                nanos_to_usd(running),
                budget.limit_usd.unwrap_or(0.0)
            )]);
        }
        budget.lease = Some(lease);
        Ok(budget)
    }

    #[cfg(not(feature = "redis"))]
    fn with_tenant_lease(
        &self,
        budget: TenantBudget,
        _ledgers: &crate::TenantLedgers,
    ) -> Result<TenantBudget, String> {
        Ok(budget)
    }

    /// Draws a tenant's reservation from its own scope's lease, if it has one.
    #[cfg(feature = "redis")]
    fn draw_tenant_lease(
        &self,
        tenant: &TenantBudget,
        ticket: &RouteTicket,
        reserved: u64,
    ) -> Result<(), Reason> {
        let Some(lease) = &tenant.lease else {
            return Ok(());
        };
        lease
            .allowance()
            .try_draw(reserved, ticket.decided_at_secs)
            .map_err(|refusal| {
                let spend_usd = nanos_to_usd(tenant.ledger.total_nanos_at(ticket.decided_at_secs));
                let limit_usd = tenant.limit_usd.unwrap_or(0.0);
                refusal
                    .lease_reason(
                        spend_usd,
                        limit_usd,
                        nanos_to_usd(reserved),
                        Some(ticket.tenant.map_or(0, |id| id.index())),
                    )
                    .into()
            })
    }

    #[cfg(not(feature = "redis"))]
    fn draw_tenant_lease(
        &self,
        _tenant: &TenantBudget,
        _ticket: &RouteTicket,
        _reserved: u64,
    ) -> Result<(), Reason> {
        Ok(())
    }

    /// Replaces a tenant's drawn reservation with the actual cost in its lease.
    #[cfg(feature = "redis")]
    fn settle_tenant_lease(
        &self,
        tenant: &TenantBudget,
        ticket: &RouteTicket,
        drawn: u64,
        actual: u64,
    ) {
        if let Some(lease) = &tenant.lease {
            lease
                .allowance()
                .settle(drawn, actual, ticket.decided_at_secs);
        }
    }

    #[cfg(not(feature = "redis"))]
    fn settle_tenant_lease(
        &self,
        _tenant: &TenantBudget,
        _ticket: &RouteTicket,
        _drawn: u64,
        _actual: u64,
    ) {
    }

    /// Every tenant's ledger, by id, once tenants are attached.
    pub fn tenant_ledgers(&self) -> Option<&Arc<crate::TenantLedgers>> {
        self.tenants.get().map(|(ledgers, _)| ledgers)
    }

    /// Each attached tenant's month, in [`TenantId`](nexus_core::pipeline::TenantId) order.
    pub fn tenant_spend(&self) -> Vec<crate::TenantSpend> {
        self.tenant_table()
            .iter()
            .map(|t| crate::TenantSpend {
                id: t.id.to_string(),
                limit_usd: t.limit_usd,
                snapshot: t.ledger.snapshot(),
            })
            .collect()
    }

    fn tenant_table(&self) -> &[TenantBudget] {
        self.tenants.get().map_or(&[], |(_, table)| table)
    }

    fn tenant(&self, tenant: Option<nexus_core::pipeline::TenantId>) -> Option<&TenantBudget> {
        tenant.and_then(|t| self.tenant_table().get(t.index()))
    }

    /// Persists settled spend in `store`, loading the current month from it first, and
    /// runs the reconciliation loop over it and `sources` in the background.
    pub fn with_store(
        mut self,
        store: Arc<dyn SpendStore>,
        sources: Vec<Arc<dyn SpendSource>>,
    ) -> Result<Self, StoreError> {
        let interval = Duration::from_secs(self.settings.reconciliation_interval_secs);
        self.background = Some(Arc::new(Background::start(
            &self.ledger,
            store,
            sources,
            Some(interval),
        )?));
        Ok(self)
    }

    /// Builds the stage from `[routing.budget]`; the factory registered as `"budget"`.
    /// Without the table, the stage enforces per-request caps only.
    /// With `store = "path"`, spend is kept in a [`RedbStore`](crate::RedbStore) there.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        let invalid = |message: String| ctx.invalid(message);
        let settings: BudgetSettings = ctx.settings()?;
        let store = settings.store.as_deref().map(|p| ctx.resolve_path(p));
        let stage =
            Self::new(Arc::clone(ctx.fleet), settings, Arc::clone(ctx.clock)).map_err(invalid)?;
        let stage = match ctx.previous.and_then(|p| p.stage_of::<BudgetReconciler>()) {
            Some(old) => stage.take_over(old, store)?,
            None => match store {
                Some(path) => stage
                    .attach_store_file(&path, ctx.dry_run)
                    .map_err(|e| invalid(format!("`store`: {e}")))?,
                None => stage,
            },
        };
        // A dry run (`nexus check`, `nexus route`) never contacts Redis: it shows the
        // settings and decides on local accounting.
        #[cfg(feature = "redis")]
        let stage = match stage.settings.redis.clone() {
            Some(redis) if !ctx.dry_run && stage.lease.is_none() => stage
                .with_lease(&redis, Arc::clone(ctx.clock))
                .map_err(|e| {
                    invalid(match e {
                        // `url...` / `url_env...`: reported at that key.
                        crate::lease::LeaseError::Settings(m) if m.starts_with("url") => {
                            format!("redis.{m}")
                        }
                        crate::lease::LeaseError::Settings(m) => format!("redis: {m}"),
                        other => format!("redis: {other}"),
                    })
                })?,
            _ => stage,
        };
        Ok(Box::new(stage))
    }

    /// The stage a reload builds to replace `old`: new limits and actions, the same
    /// ledger (settled spend and reservations of requests in flight), journal and store,
    /// so that a reload never resets spend. `store` (resolved) must be the file `old`
    /// keeps spend in: moving spend to another file while serving is refused.
    fn take_over(
        mut self,
        old: &BudgetReconciler,
        store: Option<PathBuf>,
    ) -> Result<Self, BuildError> {
        let old_store = old.store_path();
        let store = store.map(|p| p.canonicalize().unwrap_or(p));
        if store.as_deref() != old_store {
            let shown = |p: Option<&std::path::Path>| {
                p.map_or("none (in memory)".to_owned(), |p| {
                    format!("\"{}\"", p.display())
                })
            };
            return Err(BuildError::InvalidSettings {
                kind: "budget".to_owned(),
                message: format!(
                    "`store`: the spend store cannot change while serving (running: {}, new: {}); put the running value back and reload, or restart nexus serve to use the new one",
                    shown(old_store),
                    shown(store.as_deref())
                ),
            });
        }
        self.ledger = Arc::clone(&old.ledger);
        self.background = old.background.clone();
        // The lease of the shared budget is this replica's, whatever the config: the
        // stage of the new config draws from the same one (a second lease of the same
        // replica would count its slice twice). It was started with the running limit
        // and `[routing.budget.redis]`; changes to those need a restart.
        #[cfg(feature = "redis")]
        if let Some(lease) = &old.lease {
            let changed = shared_changes(lease.status().limit_nanos, &old.settings, &self.settings);
            self.lease = old.lease.clone();
            self.settings.redis = old.settings.redis.clone();
            self.note_restart_required(changed);
        }
        self.store_status = old_store.map(|path| crate::StoreStatus::Durable {
            path: path.to_owned(),
        });
        Ok(self)
    }

    /// Settings of this config that a reload could not put in force, one line each
    /// naming the key and both values (the way a reload lists `[server]` keys that need
    /// a restart): with the budget shared through Redis, the running lease (global and
    /// each tenant's) was started with the running `monthly_limit_usd`, the tenants'
    /// limits and `[routing.budget.redis]`, and keeps them until a restart. Empty for a
    /// config that was not a reload, or that changed none of those.
    pub fn restart_required(&self) -> Vec<String> {
        self.restart_required
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn note_restart_required(&self, changes: Vec<String>) {
        self.restart_required
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(changes);
    }

    /// The file settled spend is kept in, when there is one.
    fn store_path(&self) -> Option<&std::path::Path> {
        match self.store_status.as_ref()? {
            crate::StoreStatus::Durable { path } => Some(path),
            _ => None,
        }
    }

    /// Shares the monthly limit with every replica on the same Redis and `key_prefix`:
    /// starts this replica's lease of scope [`GLOBAL_SCOPE`](crate::lease::GLOBAL_SCOPE)
    /// (its background thread connects, and until Redis first answers nothing paid is
    /// routed). From then on a paid reservation also draws from the lease, settlements
    /// go to Redis, and the month's settled spend of every replica is folded into the
    /// ledger. Dropping the stage gives the lease back.
    ///
    /// Needs a monthly limit; under `hard_limit_action = "warn"` spend is still shared
    /// but nothing is refused.
    #[cfg(feature = "redis")]
    pub fn with_lease(
        mut self,
        settings: &crate::lease::RedisBudgetSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, crate::lease::LeaseError> {
        if self.settings.monthly_limit_usd.is_none() {
            return Err(crate::lease::LeaseError::Settings(
                "a shared budget needs monthly_limit_usd in [routing.budget]".to_owned(),
            ));
        }
        let lease = crate::lease::LeaseClient::start(
            settings,
            crate::lease::GLOBAL_SCOPE,
            self.limit,
            Some(Arc::clone(&self.ledger)),
            clock,
        )?;
        self.settings.redis = Some(settings.clone());
        self.lease = Some(Arc::new(lease));
        Ok(self)
    }

    /// This replica's lease of the shared budget, when one was started.
    #[cfg(feature = "redis")]
    pub fn lease(&self) -> Option<&crate::lease::LeaseClient> {
        self.lease.as_deref()
    }

    /// Draws a paid reservation from the lease (one compare-and-swap, no I/O).
    #[cfg(feature = "redis")]
    #[inline]
    fn draw_lease(&self, ticket: &RouteTicket, reserved: u64) -> Result<(), Reason> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        lease
            .allowance()
            .try_draw(reserved, ticket.decided_at_secs)
            .map_err(|refusal| {
                let (spend_usd, limit_usd, cost_usd) = (
                    nanos_to_usd(self.ledger.total_nanos_at(ticket.decided_at_secs)),
                    self.limit_usd(),
                    nanos_to_usd(reserved),
                );
                refusal
                    .lease_reason(spend_usd, limit_usd, cost_usd, None)
                    .into()
            })
    }

    #[cfg(not(feature = "redis"))]
    #[inline]
    fn draw_lease(&self, _ticket: &RouteTicket, _reserved: u64) -> Result<(), Reason> {
        Ok(())
    }

    /// Replaces a drawn reservation with the actual cost in the lease (and queues the
    /// cost for Redis); `actual = 0` releases it.
    #[cfg(feature = "redis")]
    fn settle_lease(&self, ticket: &RouteTicket, drawn: u64, actual: u64) {
        if let Some(lease) = &self.lease {
            lease
                .allowance()
                .settle(drawn, actual, ticket.decided_at_secs);
        }
    }

    #[cfg(not(feature = "redis"))]
    fn settle_lease(&self, _ticket: &RouteTicket, _drawn: u64, _actual: u64) {}

    /// What a route drew from the lease: its reservation under a block action, nothing
    /// under `warn` (which refuses nothing, so draws nothing).
    fn drawn_for(&self, reserved: u64) -> u64 {
        if self.blocks() {
            reserved
        } else {
            0
        }
    }

    /// The ledger decisions read.
    pub fn ledger(&self) -> &Arc<SpendLedger> {
        &self.ledger
    }

    /// Persists settled spend in the [`RedbStore`](crate::RedbStore) file at `path`; in a
    /// dry run, only reads the month's spend from it (see
    /// [`read_for_dry_run`](crate::store::read_for_dry_run)).
    fn attach_store_file(
        mut self,
        path: &std::path::Path,
        dry_run: bool,
    ) -> Result<Self, StoreError> {
        if dry_run {
            let month = self.ledger.month();
            let (status, settled) = crate::store::read_for_dry_run(path, month)?;
            self.ledger.fold_settled(month, settled);
            self.store_status = Some(status);
            return Ok(self);
        }
        let store = crate::RedbStore::open(path)?;
        let status = crate::StoreStatus::Durable {
            path: store.path().to_owned(),
        };
        let mut stage = self.with_store(Arc::new(store), Vec::new())?;
        stage.store_status = Some(status);
        Ok(stage)
    }

    /// Where settled spend is kept and, after a dry run, whether it could be read; `None`
    /// without a `store` file.
    pub fn store_status(&self) -> Option<&crate::StoreStatus> {
        self.store_status.as_ref()
    }

    /// The journal that persists settled spend, when a store is configured.
    pub fn journal(&self) -> Option<&Journal> {
        self.background.as_ref().map(|b| &b.journal)
    }

    /// The settings.
    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    /// The status for a month-to-date total in nano-dollars.
    pub fn status_of(&self, total: u64) -> BudgetStatus {
        if total >= self.limit {
            BudgetStatus::HardLimit
        } else if total >= self.soft {
            BudgetStatus::SoftLimit
        } else {
            BudgetStatus::Normal
        }
    }

    /// Whether spend can exclude backends: there is a limit and its action blocks.
    fn blocks(&self) -> bool {
        self.settings.monthly_limit_usd.is_some()
            && self.settings.hard_limit_action != HardLimitAction::Warn
    }

    /// The monthly limit in USD for reasons (infinite without one; never reported then).
    fn limit_usd(&self) -> f64 {
        self.settings.monthly_limit_usd.unwrap_or(f64::INFINITY)
    }

    /// What a route reserved: see [`reservation`].
    fn reserved_for(&self, ticket: &RouteTicket) -> u64 {
        let estimate = &ticket.cost_estimate;
        match self.fleet.model(ticket.model).offer(ticket.backend) {
            Some(offer) => reservation(
                offer,
                estimate.max_input_tokens,
                estimate.estimated_output_tokens,
            ),
            None => usd_to_nanos(estimate.cost_usd),
        }
    }

    /// The actual cost of a finished route: its token usage at the backend's prices,
    /// with the estimate standing in for usage the backend did not report.
    fn actual_cost(&self, ticket: &RouteTicket, input: Option<u32>, output: Option<u32>) -> u64 {
        let estimate = ticket.cost_estimate;
        let Some(offer) = self.fleet.model(ticket.model).offer(ticket.backend) else {
            return usd_to_nanos(estimate.cost_usd);
        };
        usd_to_nanos(offer.cost_usd(
            input.unwrap_or(estimate.input_tokens),
            output.unwrap_or(estimate.estimated_output_tokens),
        ))
    }
}

/// What a request reserves on a backend, in nano-dollars: the cost of its input bound
/// and estimated output, and at least one nano-dollar on a priced backend, so that a
/// request whose estimate rounds to nothing is still refused once spend is at the limit.
fn reservation(offer: &Offering, max_input_tokens: u32, output_tokens: u32) -> u64 {
    if offer.is_free() {
        0
    } else {
        usd_to_nanos(offer.cost_usd(max_input_tokens, output_tokens)).max(1)
    }
}

impl Reconciler for BudgetReconciler {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let total = self.ledger.total_nanos_at(intent.now_secs());
        let status = self.status_of(total);
        intent.raise_budget_status(status);
        let requirements = *intent.requirements();
        let constraints = *intent.constraints();
        let (input, max_input, output) = (
            requirements.input_tokens,
            requirements.max_input_tokens,
            requirements.estimated_output_tokens,
        );
        let spend = nanos_to_usd(total);
        let limit = self.limit_usd();
        let action = self.settings.hard_limit_action;
        let hard = status == BudgetStatus::HardLimit;
        if hard && action == HardLimitAction::Warn && !intent.is_explaining() {
            intent.warn(
                None,
                BudgetReason::HardLimitWarning {
                    spend_usd: spend,
                    limit_usd: limit,
                }
                .into(),
            );
        }
        // The usual case: below the soft limit, and even the dearest server of the model
        // fits under the limit and the policy's cap. Nothing to visit. (Below the soft
        // limit the total is below the limit, so the one nano-dollar a priced request
        // reserves at least always fits.)
        let tenant = self.tenant(intent.tenant());
        let tenant_total = tenant.map_or(0, |t| t.ledger.total_nanos_at(intent.now_secs()));
        let summary = intent.model_entry().summary();
        if status == BudgetStatus::Normal
            && tenant.is_none_or(|t| {
                !t.is_limited()
                    || tenant_total.saturating_add(
                        usd_to_nanos(summary.max_cost_usd(max_input, output)).max(1),
                    ) <= t.limit
            })
            && constraints
                .max_cost_per_request
                .is_none_or(|cap| summary.max_cost_usd(input, output) <= cap)
            && (!self.blocks()
                || total.saturating_add(usd_to_nanos(summary.max_cost_usd(max_input, output)))
                    <= self.limit)
        {
            return Ok(());
        }
        let blocks = self.blocks();
        let cloud = &self.cloud;
        let cloud_weight = self.settings.soft_limit_cloud_weight;
        let cap_policy = constraints.max_cost_policy;
        let tenant_limit = tenant.filter(|t| t.is_limited()).map(|t| {
            (
                t.limit,
                BudgetReason::TenantOverLimit {
                    spend_usd: nanos_to_usd(tenant_total),
                    limit_usd: t.limit_usd.unwrap_or(0.0),
                    tenant: intent.tenant().map_or(0, |id| id.index()),
                },
            )
        });
        intent.visit_candidates(|candidate| {
            let cost_usd = candidate.offer().cost_usd(input, output);
            let reserved = reservation(candidate.offer(), max_input, output);
            let is_cloud = cloud.contains(candidate.backend);
            if let Some(cap) = constraints
                .max_cost_per_request
                .filter(|cap| cost_usd > *cap)
            {
                Verdict::Exclude(
                    BudgetReason::CostCap {
                        cost_usd,
                        cap_usd: cap,
                        policy: cap_policy,
                    }
                    .into(),
                )
            } else if hard && action == HardLimitAction::BlockAll {
                Verdict::Exclude(
                    BudgetReason::HardLimitAll {
                        spend_usd: spend,
                        limit_usd: limit,
                    }
                    .into(),
                )
            } else if hard && action == HardLimitAction::BlockCloud && is_cloud {
                Verdict::Exclude(
                    BudgetReason::HardLimitCloud {
                        spend_usd: spend,
                        limit_usd: limit,
                    }
                    .into(),
                )
            } else if blocks && reserved > 0 && total.saturating_add(reserved) > self.limit {
                Verdict::Exclude(
                    BudgetReason::OverLimit {
                        spend_usd: spend,
                        limit_usd: limit,
                        cost_usd: nanos_to_usd(reserved),
                    }
                    .into(),
                )
            } else if let Some((_, reason)) = tenant_limit
                .filter(|(limit, _)| reserved > 0 && tenant_total.saturating_add(reserved) > *limit)
            {
                Verdict::Exclude(reason.into())
            } else if status == BudgetStatus::SoftLimit && is_cloud {
                Verdict::Scale(cloud_weight)
            } else {
                Verdict::Keep
            }
        });
        Ok(())
    }

    fn on_route(&self, ticket: &RouteTicket) -> Result<(), Reason> {
        let reserved = self.reserved_for(ticket);
        if reserved == 0 {
            return Ok(());
        }
        // The tenant's limit first: a refusal there takes nothing from the global one.
        let tenant = self.tenant(ticket.tenant);
        if let Some(t) = tenant {
            let limit = t.is_limited().then_some(t.limit);
            t.ledger.try_reserve(reserved, limit).map_err(|total| {
                Reason::from(BudgetReason::TenantOverLimit {
                    spend_usd: nanos_to_usd(total),
                    limit_usd: t.limit_usd.unwrap_or(0.0),
                    tenant: ticket.tenant.map_or(0, |id| id.index()),
                })
            })?;
        }
        let limit = self.blocks().then_some(self.limit);
        self.ledger.try_reserve(reserved, limit).map_err(|total| {
            if let Some(t) = tenant {
                t.ledger.release(reserved);
            }
            Reason::from(BudgetReason::OverLimit {
                spend_usd: nanos_to_usd(total),
                limit_usd: self.limit_usd(),
                cost_usd: nanos_to_usd(reserved),
            })
        })?;
        // Then the shared scopes, the tenant's first; a refusal undoes what was taken.
        let undo_ledgers = || {
            self.ledger.release(reserved);
            if let Some(t) = tenant {
                t.ledger.release(reserved);
            }
        };
        if let Some(t) = tenant {
            if let Err(reason) = self.draw_tenant_lease(t, ticket, reserved) {
                undo_ledgers();
                return Err(reason);
            }
        }
        if self.blocks() {
            if let Err(reason) = self.draw_lease(ticket, reserved) {
                undo_ledgers();
                if let Some(t) = tenant {
                    self.settle_tenant_lease(t, ticket, reserved, 0);
                }
                return Err(reason);
            }
        }
        Ok(())
    }

    fn on_settle(&self, ticket: &RouteTicket, settlement: Settlement<'_>) {
        let reserved = self.reserved_for(ticket);
        match settlement {
            Settlement::Finished { outcome, at_secs } => {
                let actual = self.actual_cost(ticket, outcome.input_tokens, outcome.output_tokens);
                if reserved == 0 && actual == 0 {
                    return;
                }
                self.settle_lease(ticket, self.drawn_for(reserved), actual);
                // The journal files the cost under the month the ledger counted it in,
                // so that a restart loads what the ledger showed.
                let month = self.ledger.settle_at(reserved, actual, at_secs);
                let tenant = self.tenant(ticket.tenant).map(|t| {
                    let month = t.ledger.settle_at(reserved, actual, at_secs);
                    self.settle_tenant_lease(t, ticket, reserved, actual);
                    (t, month)
                });
                if let (Some(journal), true) = (self.journal(), actual > 0) {
                    journal.record(month, actual);
                    if let Some((t, month)) = tenant {
                        journal.record_tenant(&t.id, month, actual);
                    }
                }
            }
            Settlement::Abandoned { .. } | Settlement::Cancelled => {
                if reserved > 0 {
                    self.ledger.release(reserved);
                    if let Some(t) = self.tenant(ticket.tenant) {
                        t.ledger.release(reserved);
                        self.settle_tenant_lease(t, ticket, reserved, 0);
                    }
                    self.settle_lease(ticket, self.drawn_for(reserved), 0);
                }
            }
        }
    }

    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        #[cfg(feature = "redis")]
        if let Some(explanation) = crate::lease::explain(reason, |index| {
            self.tenant_table().get(index).map(|t| t.id.to_string())
        }) {
            return explanation;
        }
        let model = ctx.fleet.model(ctx.model).name();
        let local_exists = ctx
            .fleet
            .model(ctx.model)
            .offers()
            .iter()
            .any(|(backend, offer)| !self.cloud.contains(*backend) && offer.is_free());
        let local_hint = if local_exists {
            format!("route '{model}' to one of its local backends")
        } else {
            format!("add a local backend for '{model}'")
        };
        let Some(typed) = BudgetReason::from_reason(*reason) else {
            return Explanation::new(
                format!("excluded by budget (code {})", reason.code()),
                "see nexus-budget's documentation",
            );
        };
        match typed {
            BudgetReason::OverLimit {
                spend_usd: a,
                limit_usd: b,
                cost_usd: c,
            } => Explanation::new(
                format!("global limit: spend ${a:.2} (with requests in flight) of the ${b:.2} monthly limit; this request would cost ${c:.4} and pass it"),
                format!("raise monthly_limit_usd in [routing.budget], or {local_hint}"),
            ),
            BudgetReason::TenantOverLimit {
                spend_usd: a,
                limit_usd: b,
                tenant,
            } => {
                let tenant = self
                    .tenant_table()
                    .get(tenant)
                    .map_or("?", |t| &*t.id);
                Explanation::new(
                    format!("tenant '{tenant}' limit: its spend ${a:.2} (with requests in flight) of its ${b:.2} monthly limit; this request would pass it"),
                    format!("raise monthly_limit_usd of tenant '{tenant}' in [[tenants]], or {local_hint}"),
                )
            }
            BudgetReason::HardLimitCloud {
                spend_usd: a,
                limit_usd: b,
            } => Explanation::new(
                format!("monthly budget reached: spend ${a:.2} of ${b:.2}; hard_limit_action block_cloud excludes cloud backends"),
                format!("raise monthly_limit_usd in [routing.budget], or {local_hint}"),
            ),
            BudgetReason::HardLimitAll {
                spend_usd: a,
                limit_usd: b,
            } => Explanation::new(
                format!("monthly budget reached: spend ${a:.2} of ${b:.2}; hard_limit_action block_all excludes every backend"),
                "raise monthly_limit_usd, or set hard_limit_action = \"block_cloud\" to keep local backends serving",
            ),
            BudgetReason::CostCap {
                cost_usd: a,
                cap_usd: b,
                policy,
            } => Explanation::new(
                format!("estimated cost ${a:.4} exceeds the ${b:.4} per request of {}", ctx.policy_label(policy)),
                "send fewer tokens or a lower max output, use a cheaper backend, or raise max_cost_per_request",
            ),
            BudgetReason::HardLimitWarning {
                spend_usd: a,
                limit_usd: b,
            } => Explanation::new(
                format!("monthly budget reached: spend ${a:.2} of ${b:.2}; routing anyway (hard_limit_action = \"warn\")"),
                "raise monthly_limit_usd or switch hard_limit_action to block_cloud",
            ),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn default_error_policy(&self) -> nexus_core::stage::ErrorPolicy {
        nexus_core::stage::ErrorPolicy::FailClosed
    }
}

/// With a lease running, what a reloaded config changes in the settings the lease was
/// started with (the global limit and `[routing.budget.redis]`): those stay as they are
/// until a restart. A URL is never shown, only that it changed.
#[cfg(feature = "redis")]
fn shared_changes(running_limit: u64, old: &BudgetSettings, new: &BudgetSettings) -> Vec<String> {
    const KEPT: &str = "running value kept by the shared budget's lease until a restart";
    let mut changed = Vec::new();
    let file_limit = new.monthly_limit_usd.map_or(u64::MAX, usd_to_nanos);
    if file_limit != running_limit {
        changed.push(format!(
            "[routing.budget] monthly_limit_usd: running {}, file {} ({KEPT}; the file's value applies to this replica's own accounting only)",
            nanos_to_usd(running_limit),
            new.monthly_limit_usd.map_or_else(|| "none".to_owned(), |l| l.to_string())
        ));
    }
    let (Some(old), new) = (&old.redis, &new.redis) else {
        return changed;
    };
    let Some(new) = new else {
        changed.push(format!(
            "[routing.budget.redis]: removed from the file; this replica keeps sharing the budget through Redis ({KEPT})"
        ));
        return changed;
    };
    // Exhaustive, so that a new key cannot be left out of the comparison.
    let crate::lease::RedisBudgetSettings {
        url: _,
        url_env: _,
        key_prefix: _,
        min_lease_usd: _,
        max_lease_usd: _,
        lease_ttl_secs: _,
        renew_below: _,
        on_unavailable: _,
        timeout_ms: _,
        connect_timeout_ms: _,
        settle_interval_ms: _,
    } = old;
    if old.url != new.url {
        changed.push(format!(
            "[routing.budget.redis] url: changed, not shown as it may hold a password ({KEPT})"
        ));
    }
    macro_rules! compare {
        ($($key:ident),*) => {$(
            if old.$key != new.$key {
                changed.push(format!(
                    "[routing.budget.redis] {}: running {:?}, file {:?} ({KEPT})",
                    stringify!($key), old.$key, new.$key
                ));
            }
        )*};
    }
    compare!(
        url_env,
        key_prefix,
        min_lease_usd,
        max_lease_usd,
        lease_ttl_secs,
        renew_below,
        on_unavailable,
        timeout_ms,
        connect_timeout_ms,
        settle_interval_ms
    );
    changed
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        let all = [
            BudgetReason::OverLimit {
                spend_usd: 99.5,
                limit_usd: 100.0,
                cost_usd: 0.75,
            },
            BudgetReason::HardLimitCloud {
                spend_usd: 100.0,
                limit_usd: 100.0,
            },
            BudgetReason::HardLimitAll {
                spend_usd: 120.0,
                limit_usd: 100.0,
            },
            BudgetReason::CostCap {
                cost_usd: 0.5,
                cap_usd: 0.25,
                policy: Some(2),
            },
            BudgetReason::CostCap {
                cost_usd: 0.5,
                cap_usd: 0.25,
                policy: None,
            },
            BudgetReason::TenantOverLimit {
                spend_usd: 9.0,
                limit_usd: 10.0,
                tenant: 3,
            },
            BudgetReason::HardLimitWarning {
                spend_usd: 101.0,
                limit_usd: 100.0,
            },
        ];
        for typed in all {
            let compact: Reason = typed.into();
            assert_eq!(BudgetReason::from_reason(compact), Some(typed));
        }
        assert_eq!(BudgetReason::from_reason(Reason::new(77)), None);
    }
}
