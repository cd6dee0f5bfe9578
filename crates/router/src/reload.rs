//! [`LiveRouter`]: a [`Router`] that a new config replaces while it serves.
//!
//! Decisions load the current router without a lock ([`arc_swap`]) and hold a share of
//! its pipeline until they settle, so a request in flight finishes on the config it
//! started with while new requests see the new one, never half of each. A reload builds
//! the new router completely first (everything `nexus check` checks), carrying over live
//! state ([`RouterBuilder::reload_file`]); a config that fails leaves the running one in
//! place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use nexus_core::{pipeline::OwnedDecision, Request};
use serde::Serialize;

use crate::{ConfigError, HealthConfig, Router, RouterBuilder, ServerConfig};

/// A [`Router`] that can be reloaded while requests are decided and served.
///
/// ```
/// use nexus_router::{LiveRouter, Router};
///
/// let config = |model: &str| format!(r#"
///     [[backends]]
///     id = "gpu"
///     url = "http://127.0.0.1:1"
///     models = [{{ name = "{model}" }}]
/// "#);
/// let live = LiveRouter::new(Router::builder(), Router::from_toml("a.toml", &config("m1"))?, None);
/// let mut first = live.route_owned(&nexus_core::Request::new("m1"));
/// let summary = live.reload_str("a.toml", &config("m2"))?;
/// assert_eq!(summary.backends_kept, ["gpu"]);
/// // The decision made before the reload still holds the old config...
/// assert_eq!(first.model(), Some("m1"));
/// drop(first.take_guard());
/// // ...and new ones see the new one.
/// assert_eq!(live.route_owned(&nexus_core::Request::new("m2")).model(), Some("m2"));
/// // A bad config is refused and the running one stays.
/// assert!(live.reload_str("a.toml", "[[backends]]\nid = 1\n").is_err());
/// assert_eq!(live.current().fleet().models().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LiveRouter {
    current: ArcSwap<Router>,
    /// The `[server]` and `[health]` settings in force: those first loaded (they need a
    /// restart to change).
    server: ServerConfig,
    health: HealthConfig,
    builder: RouterBuilder,
    path: Option<PathBuf>,
    /// One reload at a time, so that each builds on the router it replaces.
    reloading: Mutex<u64>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadSummary {
    /// The config it loaded.
    pub file: String,
    /// How many reloads succeeded since the start, this one included.
    pub generation: u64,
    /// Backends in both configs: they kept their live state.
    pub backends_kept: Vec<String>,
    /// Backends new in this config: they start with their configured status.
    pub backends_added: Vec<String>,
    /// Backends gone from this config: they get no new requests, and their state is
    /// dropped once the requests in flight on them finish.
    pub backends_removed: Vec<String>,
    /// How many models the new config serves.
    pub models: usize,
    /// The kinds of the new pipeline: its stages in order, then its selector.
    pub pipeline: Vec<String>,
    /// `[server]` and `[health]` keys whose new value is not in force: the running
    /// value stays until a restart. Each entry names the key and both values. With the
    /// budget shared through Redis, also `[routing.budget] monthly_limit_usd`, tenants'
    /// `monthly_limit_usd` and `[routing.budget.redis]` keys: the running lease keeps
    /// the values it was started with.
    pub restart_required: Vec<String>,
    /// The new config's warnings, as `nexus check` prints them.
    pub warnings: Vec<String>,
}

impl LiveRouter {
    /// `router`, loaded from `path` (or from no file: then only
    /// [`reload_str`](Self::reload_str) can replace it), reloaded with `builder`'s
    /// stages and clock.
    pub fn new(builder: RouterBuilder, router: Router, path: Option<PathBuf>) -> Self {
        Self {
            server: router.server().clone(),
            health: router.health().clone(),
            current: ArcSwap::new(Arc::new(router)),
            builder,
            path,
            reloading: Mutex::new(0),
        }
    }

    /// Loads the config file at `path` with `builder`, to be reloaded from it.
    pub fn from_file(
        builder: RouterBuilder,
        path: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let path = path.into();
        let router = builder.load_file(&path)?;
        Ok(Self::new(builder, router, Some(path)))
    }

    /// The router deciding now. Holding it keeps its config alive; a reload does not
    /// wait for it.
    pub fn current(&self) -> Arc<Router> {
        self.current.load_full()
    }

    /// The `[server]` settings in force: those first loaded, until a restart (a
    /// reload lists changes to them in [`ReloadSummary::restart_required`]).
    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// The `[health]` settings in force: those first loaded, until a restart.
    pub fn health(&self) -> &HealthConfig {
        &self.health
    }

    /// Decides with the current router (see [`Router::route_owned`]): no lock, no
    /// allocation on the Route path. The decision and its guard keep the config they
    /// were made with.
    #[inline]
    pub fn route_owned(&self, request: &Request<'_>) -> OwnedDecision {
        self.current.load().route_owned(request)
    }

    /// The config file reloads read, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the config file again and, if it is valid, swaps it in; otherwise the
    /// running config stays and the error says where and how to fix it.
    pub fn reload(&self) -> Result<ReloadSummary, ConfigError> {
        let Some(path) = &self.path else {
            return Err(ConfigError {
                file: crate::EXAMPLE_CONFIG_NAME.to_owned(),
                position: None,
                message: "there is no config file to reload: this router was not loaded from one"
                    .to_owned(),
                help: Some("start nexus serve with --config FILE to reload it later".to_owned()),
            });
        };
        self.swap(|running| self.builder.reload_file(path, running))
    }

    /// Swaps in config text (`name` for messages) if it is valid.
    pub fn reload_str(&self, name: &str, text: &str) -> Result<ReloadSummary, ConfigError> {
        self.swap(|running| self.builder.reload_str(name, text, running))
    }

    fn swap(
        &self,
        build: impl FnOnce(&Router) -> Result<Router, ConfigError>,
    ) -> Result<ReloadSummary, ConfigError> {
        let mut generation = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let running = self.current.load_full();
        let next = Arc::new(build(&running)?);
        self.current.store(Arc::clone(&next));
        // A health change on the old fleet between the build and the swap reached the
        // shared state, maybe not the new fleet's bitset.
        next.fleet().sync_status();
        *generation += 1;
        Ok(self.summary(&running, &next, *generation))
    }

    fn summary(&self, old: &Router, new: &Router, generation: u64) -> ReloadSummary {
        let (old_fleet, new_fleet) = (old.fleet(), new.fleet());
        let names = |fleet: &nexus_core::Fleet, other: &nexus_core::Fleet, present: bool| {
            fleet
                .backends()
                .iter()
                .filter(|b| other.backend_by_name(b.name()).is_some() == present)
                .map(|b| b.name().to_owned())
                .collect::<Vec<_>>()
        };
        ReloadSummary {
            file: self
                .path
                .as_ref()
                .map_or_else(|| "<text>".to_owned(), |p| p.display().to_string()),
            generation,
            backends_kept: names(new_fleet, old_fleet, true),
            backends_added: names(new_fleet, old_fleet, false),
            backends_removed: names(old_fleet, new_fleet, false),
            models: new_fleet.models().len(),
            pipeline: new
                .pipeline()
                .stages()
                .iter()
                .map(|s| s.reconciler().name().to_owned())
                .chain([new.pipeline().selector().name().to_owned()])
                .collect(),
            restart_required: restart_required(&self.server, &self.health, new),
            warnings: new.warnings().iter().map(ToString::to_string).collect(),
        }
    }
}

/// The `[server]` and `[health]` keys that differ between the settings in force and a
/// new config, with both values.
fn restart_required(server: &ServerConfig, health: &HealthConfig, new: &Router) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($table:literal, $old:expr, $new:expr, [$($key:ident),* $(,)?]) => {
            $(
                if $old.$key != $new.$key {
                    changed.push(format!(
                        "[{}] {}: running {:?}, file {:?}",
                        $table,
                        stringify!($key),
                        $old.$key,
                        $new.$key
                    ));
                }
            )*
        };
    }
    // With the budget shared through Redis, the running lease keeps the settings it
    // was started with (the budget stage says which of the new ones are not in force).
    #[cfg(feature = "budget")]
    if let Some(budget) = new.pipeline().stage_of::<crate::budget::BudgetReconciler>() {
        changed.extend(budget.restart_required());
    }
    let (old, next) = (server, new.server());
    // Exhaustive, so that a new key cannot be left out of the comparison.
    let ServerConfig {
        listen: _,
        queue_timeout_ms: _,
        max_queued: _,
        max_attempts: _,
        connect_timeout_ms: _,
        first_byte_timeout_ms: _,
        idle_timeout_ms: _,
        header_read_timeout_ms: _,
        body_read_timeout_ms: _,
        max_body_bytes: _,
        shutdown_grace_secs: _,
        admin_key_env: _,
        log_format: _,
        default_max_tokens: _,
    } = old;
    let HealthConfig {
        interval_secs: _,
        timeout_ms: _,
        unhealthy_after: _,
    } = health;
    compare!(
        "server",
        old,
        next,
        [
            listen,
            queue_timeout_ms,
            max_queued,
            max_attempts,
            connect_timeout_ms,
            first_byte_timeout_ms,
            idle_timeout_ms,
            header_read_timeout_ms,
            body_read_timeout_ms,
            max_body_bytes,
            shutdown_grace_secs,
            admin_key_env,
            log_format,
            default_max_tokens,
        ]
    );
    let (old, next) = (health, new.health());
    compare!(
        "health",
        old,
        next,
        [interval_secs, timeout_ms, unhealthy_after]
    );
    changed
}
