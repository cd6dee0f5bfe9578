//! One monthly budget shared by many replicas through Redis, with no network call on
//! the decision path (the `redis` feature).
//!
//! Each replica holds a **lease**: a slice of what is left of the month's limit,
//! granted by one Lua script that runs atomically in Redis (`sync.lua`). Decisions
//! draw from the lease locally ([`Allowance::try_draw`], one compare-and-swap) on top
//! of the ledger's reservation; a background task ([`LeaseClient`]) tops the lease up
//! before it runs out, sends settled spend in batches, renews the lease's expiry, and
//! gives back what is unused at shutdown. Settled spend plus every lease never passes
//! the limit (a property over the script's Rust twin, `model.rs`, which is tested
//! against the script on a real Redis), so the replicas together never overrun it.
//!
//! - **Integers.** Nano-dollars in Redis, never floats; limits up to 2^53 nano-dollars
//!   (about 9 million USD a month) so that Lua's doubles stay exact.
//! - **One month for all.** The script takes the month from Redis's clock (`TIME`), so
//!   every replica rolls over at the same instant; a replica follows the month the
//!   script reports, and stops drawing from a month's lease when that month ends by
//!   Redis's clock ([`Refusal::RollingOver`] until the new month's lease arrives; under
//!   `fail_open` with Redis unreachable, the new month starts locally with an empty
//!   lease at the next failed call, so that its spend counts in that month).
//! - **Lease size.** `target = clamp((limit - settled) / (2 x live replicas), min_lease,
//!   max_lease)`, raised to fit the largest request refused since the last sync. While
//!   plenty is left a replica holds `max_lease` (one Redis call per `max_lease` of
//!   spend); near the end leases shrink to `min_lease`, and a replica gives back what it
//!   holds above the target at its next sync (heartbeats come every sixth of the
//!   lease lifetime). Budget left unusable at the end of the month is at most what idle
//!   replicas keep: `(replicas - 1) x min_lease`, plus what a request costs more than
//!   the remainder; it comes back when they return it or their lease expires.
//! - **Starting mid-month.** Until the first answer, every draw is refused
//!   ([`Refusal::NotReady`]): nothing paid is routed before the month's spend is known.
//! - **Redis down or slow.** Every call has a time limit and the connection reconnects
//!   by itself. A lease is drawn from for half its lifetime after the last answer (so
//!   a request drawn at the last moment has the other half to finish before Redis could
//!   hand the lease to someone else). Then `fail_closed` refuses paid draws
//!   ([`Refusal::Unavailable`]). `fail_open` does not wait for the lease to expire: from
//!   the first call that fails, draws run as a debt against the local ledger only (a
//!   lease spent before its deadline would otherwise refuse, and no top-up can come).
//!   Settlements are cumulative per replica and month, so whatever was settled while
//!   Redis was away is sent, once, when it is back (even if Redis lost its data: each
//!   replica re-sends its month's total at every call).
//!
//! What it cannot prevent, by design: spend in flight on a replica cut off from Redis
//! for longer than the lease lifetime, or killed before its last batch was sent (at
//! most one `settle_interval_ms` of its spend plus its requests in flight), is counted
//! when it arrives, or never; the lease it was drawn from has meanwhile gone back to the
//! pool. `docs/budget.md` gives the numbers.

mod allowance;
mod client;
mod model;
mod script;
mod settings;
mod state;

/// The integration tests' throwaway Redis, shared with the unit tests.
#[cfg(test)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

pub use allowance::{Allowance, Refusal};
pub use client::{LeaseClient, LeaseError, LeaseStatus};
pub use settings::{OnUnavailable, RedisBudgetSettings, MIN_TTL_SECS};

use nexus_core::stage::{Explanation, Reason, StageReason};

/// The largest monthly limit a shared budget holds, in USD (2^53 nano-dollars, so that
/// Lua's doubles stay exact).
pub const MAX_SHARED_LIMIT_USD: f64 = model::MAX_EXACT_NANOS as f64 / 1e9;

/// The scope of the one limit every request counts against, `[routing.budget]
/// monthly_limit_usd`: its keys are `<key_prefix>:{global}:<YYYY-MM>:*`.
///
/// **Adding a scope** (a tenant's own limit, say) is one more [`LeaseClient`]:
/// `LeaseClient::start(&settings, "tenant:acme", limit_nanos, Some(ledger), clock)`
/// gives that scope its own keys (`<key_prefix>:{tenant:acme}:...`), its own leases and
/// its own [`Allowance`]; a request of that tenant then draws from both allowances
/// (the tenant's and the global one) and settles into both, releasing the first draw
/// if the second is refused. Scope names are checked by [`check_scope`].
pub const GLOBAL_SCOPE: &str = "global";

/// Checks a scope name: 1 to 128 characters, none of them whitespace, braces (they
/// delimit the cluster hash tag) or control characters.
pub fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty()
        || scope.len() > 128
        || scope
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err(format!(
            "budget scope {scope:?} must be 1 to 128 characters without spaces, braces or control characters"
        ));
    }
    Ok(())
}

/// Why a shared budget's lease refused a paid backend (the budget stage records it in
/// `on_route`). Amounts are USD; the first three variants record month-to-date spend,
/// the limit and this request's cost, so that a rendered refusal can say where the
/// month stood.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LeaseReason {
    /// The lease expired with Redis unreachable, `on_unavailable = "fail_closed"`.
    Unavailable {
        /// Month-to-date spend, as this replica knows it.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
        /// What this request reserves.
        cost_usd: f64,
    },
    /// No answer from Redis yet since the start: the month's spend is unknown.
    NotReady {
        /// Month-to-date spend, as this replica knows it.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
        /// What this request reserves.
        cost_usd: f64,
    },
    /// The month just changed; its lease has not arrived.
    RollingOver {
        /// Month-to-date spend, as this replica knows it.
        spend_usd: f64,
        /// The monthly limit.
        limit_usd: f64,
        /// What this request reserves.
        cost_usd: f64,
    },
    /// This replica's lease holds less than the request reserves, while its own ledger
    /// still sees room under the limit: the top-up asked of Redis has not arrived yet,
    /// or the rest of the month is leased to other replicas (or spent by them).
    Short {
        /// What the lease had left (negative: a debt).
        left_usd: f64,
        /// What this request reserves.
        cost_usd: f64,
        /// The tenant whose own shared budget it is (its index in the tenant table);
        /// `None`: the global budget.
        tenant: Option<usize>,
    },
}

// Compact codes, after the budget stage's own (1 to 10): `values = [spend, limit, cost]`.
const LEASE_UNAVAILABLE: u16 = 20;
const LEASE_NOT_READY: u16 = 21;
const LEASE_ROLLING_OVER: u16 = 22;
// `values = [left, cost, tenant index or -1]`.
const LEASE_SHORT: u16 = 23;

impl From<LeaseReason> for Reason {
    #[inline]
    fn from(reason: LeaseReason) -> Reason {
        match reason {
            LeaseReason::Unavailable {
                spend_usd,
                limit_usd,
                cost_usd,
            } => Reason::with(LEASE_UNAVAILABLE, [spend_usd, limit_usd, cost_usd]),
            LeaseReason::NotReady {
                spend_usd,
                limit_usd,
                cost_usd,
            } => Reason::with(LEASE_NOT_READY, [spend_usd, limit_usd, cost_usd]),
            LeaseReason::RollingOver {
                spend_usd,
                limit_usd,
                cost_usd,
            } => Reason::with(LEASE_ROLLING_OVER, [spend_usd, limit_usd, cost_usd]),
            LeaseReason::Short {
                left_usd,
                cost_usd,
                tenant,
            } => Reason::with(
                LEASE_SHORT,
                [left_usd, cost_usd, tenant.map_or(-1.0, |t| t as f64)],
            ),
        }
    }
}

impl StageReason for LeaseReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [spend_usd, limit_usd, cost_usd] = reason.values();
        Some(match reason.code() {
            LEASE_UNAVAILABLE => LeaseReason::Unavailable {
                spend_usd,
                limit_usd,
                cost_usd,
            },
            LEASE_NOT_READY => LeaseReason::NotReady {
                spend_usd,
                limit_usd,
                cost_usd,
            },
            LEASE_ROLLING_OVER => LeaseReason::RollingOver {
                spend_usd,
                limit_usd,
                cost_usd,
            },
            LEASE_SHORT => {
                let [left_usd, cost_usd, tenant] = reason.values();
                LeaseReason::Short {
                    left_usd,
                    cost_usd,
                    tenant: (tenant >= 0.0).then_some(tenant as usize),
                }
            }
            _ => return None,
        })
    }
}

impl Refusal {
    /// The lease's reason for this refusal of a draw for `tenant`'s shared budget
    /// (`None`: the global one), with the amounts it records.
    #[inline]
    pub fn lease_reason(
        self,
        spend_usd: f64,
        limit_usd: f64,
        cost_usd: f64,
        tenant: Option<usize>,
    ) -> LeaseReason {
        match self {
            Refusal::Insufficient { left } => LeaseReason::Short {
                left_usd: left as f64 / 1e9,
                cost_usd,
                tenant,
            },
            Refusal::Unavailable => LeaseReason::Unavailable {
                spend_usd,
                limit_usd,
                cost_usd,
            },
            Refusal::NotReady => LeaseReason::NotReady {
                spend_usd,
                limit_usd,
                cost_usd,
            },
            Refusal::RollingOver => LeaseReason::RollingOver {
                spend_usd,
                limit_usd,
                cost_usd,
            },
        }
    }
}

/// Renders a lease reason; `None` for codes that are not the lease's. `tenant_id`
/// names a tenant by its index in the tenant table.
pub fn explain(
    reason: &Reason,
    tenant_id: impl Fn(usize) -> Option<String>,
) -> Option<Explanation> {
    let fix = "check that Redis ([routing.budget.redis] url) is reachable from this replica";
    match LeaseReason::from_reason(*reason)? {
        LeaseReason::Unavailable {
            spend_usd: spend,
            limit_usd: limit,
            cost_usd: cost,
        } => Some(Explanation::new(
            format!("the shared budget in Redis has not answered for half a lease lifetime; on_unavailable = \"fail_closed\" counts paid backends as over budget (spend ${spend:.2} of ${limit:.2}, this request ${cost:.4})"),
            format!("{fix}, or set on_unavailable = \"fail_open\" to route on local accounting meanwhile"),
        )),
        LeaseReason::NotReady { cost_usd: cost, .. } => Some(Explanation::new(
            format!("the shared budget in Redis has not answered since this replica started, so the month's spend is unknown (this request ${cost:.4})"),
            fix,
        )),
        LeaseReason::RollingOver { .. } => Some(Explanation::new(
            "the budget month has just changed and the new month's lease has not arrived yet",
            // Redis down across the month's end refuses this way too (under
            // fail_closed) until it answers.
            format!("retry in a second; if refusals go on, {fix}"),
        )),
        LeaseReason::Short {
            left_usd: left,
            cost_usd: cost,
            tenant,
        } => {
            let (budget, limit_key) = match tenant {
                None => ("the shared budget".to_owned(), "monthly_limit_usd in [routing.budget]".to_owned()),
                Some(index) => {
                    let id = tenant_id(index).unwrap_or_else(|| format!("#{index}"));
                    (format!("tenant '{id}''s shared budget"), format!("monthly_limit_usd of tenant '{id}' in [[tenants]]"))
                }
            };
            Some(Explanation::new(
                format!("this replica's lease of {budget} has ${left:.4} left, less than this request's ${cost:.4}: the top-up asked of Redis has not arrived yet, or the rest of the month is leased to other replicas or spent"),
                format!("retry in a second (a top-up is on its way); if refusals go on, {fix} and see GET /v1/nexus/budget: when the month is nearly spent, raise {limit_key}"),
            ))
        }
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;
    use crate::BudgetReason;

    const ALL: [LeaseReason; 5] = [
        LeaseReason::Unavailable {
            spend_usd: 99.5,
            limit_usd: 100.0,
            cost_usd: 0.75,
        },
        LeaseReason::NotReady {
            spend_usd: 0.0,
            limit_usd: 100.0,
            cost_usd: 0.0125,
        },
        LeaseReason::RollingOver {
            spend_usd: 12.0,
            limit_usd: 50.0,
            cost_usd: 0.5,
        },
        LeaseReason::Short {
            left_usd: 0.0003,
            cost_usd: 0.0006,
            tenant: None,
        },
        LeaseReason::Short {
            left_usd: -0.25,
            cost_usd: 0.01,
            tenant: Some(1),
        },
    ];

    fn tenant_id(index: usize) -> Option<String> {
        ["team-a", "team-b"].get(index).map(|id| (*id).to_owned())
    }

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        for typed in ALL {
            let compact: Reason = typed.into();
            assert_eq!(LeaseReason::from_reason(compact), Some(typed));
        }
        assert_eq!(LeaseReason::from_reason(Reason::new(77)), None);
    }

    #[test]
    fn codes_and_values_are_unchanged() {
        let codes: Vec<(u16, [f64; 3])> = ALL
            .iter()
            .map(|&typed| {
                let compact = Reason::from(typed);
                (compact.code(), compact.values())
            })
            .collect();
        assert_eq!(
            codes,
            [
                (20, [99.5, 100.0, 0.75]),
                (21, [0.0, 100.0, 0.0125]),
                (22, [12.0, 50.0, 0.5]),
                (23, [0.0003, 0.0006, -1.0]),
                (23, [-0.25, 0.01, 1.0]),
            ]
        );
    }

    #[test]
    fn lease_codes_do_not_collide_with_the_budget_stage_codes() {
        for typed in ALL {
            assert_eq!(BudgetReason::from_reason(typed.into()), None);
        }
        let over = BudgetReason::OverLimit {
            spend_usd: 1.0,
            limit_usd: 2.0,
            cost_usd: 3.0,
        };
        assert_eq!(LeaseReason::from_reason(over.into()), None);
    }

    #[test]
    fn refusals_map_to_their_reason() {
        let (s, l, c) = (1.0, 2.0, 3.0);
        assert_eq!(
            Refusal::Insufficient { left: -2_500_000 }.lease_reason(s, l, c, Some(3)),
            LeaseReason::Short {
                left_usd: -0.0025,
                cost_usd: c,
                tenant: Some(3)
            }
        );
        assert_eq!(
            Refusal::Unavailable.lease_reason(s, l, c, None),
            LeaseReason::Unavailable {
                spend_usd: s,
                limit_usd: l,
                cost_usd: c
            }
        );
        assert_eq!(
            Refusal::NotReady.lease_reason(s, l, c, None),
            LeaseReason::NotReady {
                spend_usd: s,
                limit_usd: l,
                cost_usd: c
            }
        );
        assert_eq!(
            Refusal::RollingOver.lease_reason(s, l, c, None),
            LeaseReason::RollingOver {
                spend_usd: s,
                limit_usd: l,
                cost_usd: c
            }
        );
    }

    #[test]
    fn texts_are_unchanged() {
        let [unavailable, not_ready, rolling, short, tenant_short] =
            ALL.map(|typed| explain(&typed.into(), tenant_id).unwrap());
        assert_eq!(
            unavailable.reason,
            "the shared budget in Redis has not answered for half a lease lifetime; on_unavailable = \"fail_closed\" counts paid backends as over budget (spend $99.50 of $100.00, this request $0.7500)"
        );
        assert_eq!(
            not_ready.reason,
            "the shared budget in Redis has not answered since this replica started, so the month's spend is unknown (this request $0.0125)"
        );
        assert_eq!(
            rolling.reason,
            "the budget month has just changed and the new month's lease has not arrived yet"
        );
        assert!(unavailable.suggested_action.ends_with(
            "set on_unavailable = \"fail_open\" to route on local accounting meanwhile"
        ));
        assert_eq!(
            rolling.suggested_action,
            "retry in a second; if refusals go on, check that Redis ([routing.budget.redis] url) is reachable from this replica"
        );
        // A short lease says so, not "this request would pass the limit".
        assert_eq!(
            short.reason,
            "this replica's lease of the shared budget has $0.0003 left, less than this request's $0.0006: the top-up asked of Redis has not arrived yet, or the rest of the month is leased to other replicas or spent"
        );
        assert!(short
            .suggested_action
            .ends_with("raise monthly_limit_usd in [routing.budget]"));
        assert!(tenant_short.reason.starts_with(
            "this replica's lease of tenant 'team-b''s shared budget has $-0.2500 left"
        ));
        assert!(tenant_short
            .suggested_action
            .ends_with("raise monthly_limit_usd of tenant 'team-b' in [[tenants]]"));
        let unknown = LeaseReason::Short {
            left_usd: 0.0,
            cost_usd: 0.1,
            tenant: Some(7),
        };
        assert!(explain(&unknown.into(), tenant_id)
            .unwrap()
            .reason
            .contains("tenant '#7''s"));
        assert!(explain(&Reason::new(1), tenant_id).is_none());
    }
}
