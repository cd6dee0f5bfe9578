//! The summary of a loaded configuration that `nexus check` prints: backends, models
//! with their aliases and fallbacks, policies, the pipeline, the budget, the server
//! and health settings.

use crate::Router;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

impl Router {
    /// A summary of what was loaded, for people, headed `"{config_name}: ok"`: each
    /// backend (zone, kind, priority, concurrency, health, models, whether its API key
    /// variable is set, never its value), the aliases and fallbacks, the policies, the
    /// pipeline with each stage's error policy, the budget and its spend, and the
    /// gateway's server and health settings. What `nexus check` prints.
    pub fn summary(&self, config_name: &str) -> String {
        let router = self;
        let mut out = String::new();
        let pipeline = router.pipeline();
        let fleet = pipeline.fleet();
        outln!(out, "{}: ok", config_name);
        outln!(out, "  backends: {}", fleet.len());
        for backend in fleet.backends() {
            let zone = match backend.configured_zone() {
                Some(zone) => zone.to_string(),
                None => "cloud (no zone set)".to_owned(),
            };
            let models: Vec<&str> = backend
                .models()
                .iter()
                .map(|m| fleet.model(*m).name())
                .collect();
            outln!(
                out,
                "    {:<16} {:<20} {}, priority {}, max {} at once, {}; serves {}",
                backend.name(),
                zone,
                backend.kind(),
                backend.priority(),
                backend.max_concurrency(),
                backend.live().status(),
                models.join(", "),
            );
            if let Some(var) = backend.api_key_env() {
                // Whether the variable is set, never its value.
                let state = match std::env::var_os(var) {
                    Some(value) if !value.is_empty() => "set",
                    _ => "not set: requests to it go without a key",
                };
                outln!(out, "    {:<16} api key from ${var} ({state})", "");
            }
        }
        outln!(out, "  models: {}", fleet.models().len());
        let mut names: Vec<&str> = pipeline.routes().names().collect();
        names.sort_unstable();
        for name in names {
            let Some(plan) = pipeline.routes().plan(name) else {
                continue;
            };
            let chain: Vec<&str> = plan.alias_chain().collect();
            let attempts: Vec<&str> = plan
                .attempts()
                .iter()
                .map(|a| fleet.model(a.model).name())
                .collect();
            if chain.len() > 1 || attempts.len() > 1 {
                let fallbacks = match attempts.get(1..) {
                    Some(rest) if !rest.is_empty() => format!(" (fallbacks: {})", rest.join(", ")),
                    _ => String::new(),
                };
                outln!(out, "    {}{fallbacks}", chain.join(" -> "));
            }
        }
        outln!(out, "  policies: {}", pipeline.policies().len());
        for (i, policy) in pipeline.policies().policies().iter().enumerate() {
            let mut parts = vec![policy.privacy.as_str().to_owned()];
            if let Some(tier) = policy.min_tier {
                parts.push(format!("min_tier {tier}"));
            }
            if let Some(cost) = policy.max_cost_per_request {
                parts.push(format!("max ${cost} per request"));
            }
            if !policy.fallback_allowed {
                parts.push("no fallbacks".to_owned());
            }
            outln!(
                out,
                "    #{i} {:<16} {}",
                policy.model_pattern,
                parts.join(", ")
            );
        }
        let stages: Vec<String> = pipeline
            .stages()
            .iter()
            .map(|s| format!("{} ({})", s.reconciler().name(), s.error_policy().as_str()))
            .chain([format!("{} (selector)", pipeline.selector().name())])
            .collect();
        outln!(out, "  pipeline: {}", stages.join(" -> "));
        print_budget(&mut out, router);
        print_tenants(&mut out, router);
        let server = router.server();
        outln!(
            out,
            "  serve: listen {}, queue {} ms (at most {}), {} attempt{} per request, bodies up to {} bytes",
            server.listen,
            server.queue_timeout_ms,
            server.max_queued,
            server.max_attempts,
            if server.max_attempts == 1 { "" } else { "s" },
            server.max_body_bytes,
        );
        outln!(
            out,
            "    timeouts: connect {} ms, first byte {} ms, idle stream {} ms, request head {} ms, request body {} ms; shutdown grace {} s; logs as {}",
            server.connect_timeout_ms,
            server.first_byte_timeout_ms,
            server.idle_timeout_ms,
            server.header_read_timeout_ms,
            server.body_read_timeout_ms,
            server.shutdown_grace_secs,
            server.log_format.as_str(),
        );
        if let Some(tokens) = server.default_max_tokens {
            outln!(
                out,
                "    default_max_tokens {tokens}: set on requests that give no output cap"
            );
        }
        if let Some(var) = &server.admin_key_env {
            // Whether the variable is set, never its value.
            let state = match std::env::var_os(var) {
                Some(value) if !value.is_empty() => "set",
                _ => "not set: admin endpoints refuse every key",
            };
            outln!(out, "    admin key from ${var} ({state})");
        }
        let health = router.health();
        match health.interval() {
            Some(_) => outln!(
                out,
                "  health: every {} s, {} ms timeout, unhealthy after {} failed check{}",
                health.interval_secs,
                health.timeout_ms,
                health.unhealthy_after,
                if health.unhealthy_after == 1 { "" } else { "s" },
            ),
            None => outln!(out, "  health: checks off (interval_secs = 0)"),
        }
        out
    }
}

/// The tenants, their limits and overrides, for `check`: never a key, only where it
/// comes from.
fn print_tenants(out: &mut String, router: &Router) {
    let tenants = router.tenants();
    if tenants.is_empty() {
        return;
    }
    outln!(
        out,
        "  tenants: {} (every request needs a tenant's key)",
        tenants.len()
    );
    for (_, tenant) in tenants.iter() {
        let mut parts = vec![match tenant.key_source() {
            crate::KeySource::Sha256 => "key by sha256".to_owned(),
            crate::KeySource::Env(var) => format!("key from ${var}"),
        }];
        match tenant.monthly_limit_usd() {
            Some(limit) => parts.push(format!("${limit} a month")),
            None => parts.push("global limit only".to_owned()),
        }
        let c = tenant.constraints();
        if c.privacy == crate::core::policy::Privacy::Restricted {
            parts.push("restricted".to_owned());
        }
        if c.min_tier > 0 {
            parts.push(format!("min_tier {}", c.min_tier));
        }
        if let Some(cap) = c.max_cost_per_request {
            parts.push(format!("max ${cap} per request"));
        }
        if let Some(models) = tenant.models() {
            parts.push(format!("models {}", models.join(", ")));
        }
        outln!(out, "    {:<16} {}", tenant.id(), parts.join(", "));
    }
}

/// The budget's settings and where its spend stands, for `check`.
#[cfg(feature = "budget")]
fn print_budget(out: &mut String, router: &Router) {
    let Some(budget) = router
        .pipeline()
        .stage_of::<crate::budget::BudgetReconciler>()
    else {
        return;
    };
    let settings = budget.settings();
    let store = budget
        .store_status()
        .map_or_else(|| "in memory".to_owned(), ToString::to_string);
    let snapshot = budget.ledger().snapshot();
    let limit = match settings.monthly_limit_usd {
        Some(limit) => format!(
            "${limit} a month, soft limit at {}%, {} at the limit",
            settings.soft_limit_percent * 100.0,
            settings.hard_limit_action.as_str(),
        ),
        None => "no monthly limit (per-request caps only)".to_owned(),
    };
    outln!(
        out,
        "  budget: {limit}; {} spent in {} ({store})",
        format_args!("${:.2}", snapshot.total_usd),
        snapshot.month,
    );
    print_shared_budget(out, settings);
}

/// `[routing.budget.redis]`, for `check` (which never contacts Redis). The URL is not
/// shown: it may hold a password.
#[cfg(feature = "redis")]
fn print_shared_budget(out: &mut String, settings: &crate::budget::BudgetSettings) {
    let Some(redis) = &settings.redis else {
        return;
    };
    let server = match &redis.url_env {
        Some(name) => format!("the URL in ${name}"),
        None => "url".to_owned(),
    };
    outln!(
        out,
        "  shared budget: Redis ({server}), keys {}:{{{}}}:*; leases ${} to ${}, expiring after {} s; on_unavailable = \"{}\" (not contacted by check)",
        redis.key_prefix,
        crate::budget::lease::GLOBAL_SCOPE,
        redis.min_lease_usd,
        redis.max_lease_usd,
        redis.lease_ttl_secs,
        redis.on_unavailable.as_str(),
    );
}

/// Without the redis feature a `[routing.budget.redis]` table is refused at load.
#[cfg(all(feature = "budget", not(feature = "redis")))]
fn print_shared_budget(_out: &mut String, _settings: &crate::budget::BudgetSettings) {}

/// Without the budget feature there is nothing to print.
#[cfg(not(feature = "budget"))]
fn print_budget(_out: &mut String, _router: &Router) {}
