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
//!   Redis's clock.
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
//!   ([`Refusal::Unavailable`]) and `fail_open` lets them run as a debt against the
//!   local ledger only. Settlements are cumulative per replica and month, so whatever
//!   was settled while Redis was away is sent, once, when it is back (even if Redis lost
//!   its data: each replica re-sends its month's total).
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

use nexus_core::{Explanation, Reason};

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

/// Reason: the lease expired with Redis unreachable, `fail_closed`.
/// `values = [month-to-date spend, limit, cost]` in USD.
pub const LEASE_UNAVAILABLE: u16 = 20;
/// Reason: no answer from Redis yet since the start. `values` as above.
pub const LEASE_NOT_READY: u16 = 21;
/// Reason: the month just changed; its lease has not arrived. `values` as above.
pub const LEASE_ROLLING_OVER: u16 = 22;

impl Refusal {
    /// The reason a decision records: `over_limit` (the budget stage's code for "this
    /// cost would pass the limit") for a lease too small, a lease code otherwise.
    pub fn reason(self, over_limit: u16, spend_usd: f64, limit_usd: f64, cost_usd: f64) -> Reason {
        let code = match self {
            Refusal::Insufficient { .. } => over_limit,
            Refusal::Unavailable => LEASE_UNAVAILABLE,
            Refusal::NotReady => LEASE_NOT_READY,
            Refusal::RollingOver => LEASE_ROLLING_OVER,
        };
        Reason::with(code, [spend_usd, limit_usd, cost_usd])
    }
}

/// Renders a lease reason; `None` for codes that are not the lease's.
pub fn explain(reason: &Reason) -> Option<Explanation> {
    let [spend, limit, cost] = reason.values();
    let fix = "check that Redis ([routing.budget.redis] url) is reachable from this replica";
    match reason.code() {
        LEASE_UNAVAILABLE => Some(Explanation::new(
            format!("the shared budget in Redis has not answered for half a lease lifetime; on_unavailable = \"fail_closed\" counts paid backends as over budget (spend ${spend:.2} of ${limit:.2}, this request ${cost:.4})"),
            format!("{fix}, or set on_unavailable = \"fail_open\" to route on local accounting meanwhile"),
        )),
        LEASE_NOT_READY => Some(Explanation::new(
            format!("the shared budget in Redis has not answered since this replica started, so the month's spend is unknown (this request ${cost:.4})"),
            fix,
        )),
        LEASE_ROLLING_OVER => Some(Explanation::new(
            "the budget month has just changed and the new month's lease has not arrived yet",
            "retry in a second",
        )),
        _ => None,
    }
}
