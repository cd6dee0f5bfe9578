//! [`Router`]: a [`Pipeline`] built from configuration, and the [`RouterBuilder`] that
//! registers third-party stages before loading it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nexus_core::{
    clock::{Clock, SystemClock},
    fleet::FleetError,
    pipeline::{Decision, OwnedDecision, PipelineError},
    policy::{PolicyError, PolicySet},
    registry::{BuildContext, DuplicateKind, ReconcilerFactory, Registry, SelectorFactory},
    Fleet, Pipeline, Request,
};

use crate::config::{
    Config, ConfigError, ConfigWarning, RoutingConfig, Seg, Source, EXAMPLE_CONFIG,
    EXAMPLE_CONFIG_NAME, ROUTING_KEYS,
};
use crate::serving::{HealthConfig, ServerConfig};

/// The built-in kinds in their default order: the stages, then the selector
/// (`scheduler`). The default pipeline is those of them compiled into this build.
pub const DEFAULT_PIPELINE: [&str; 6] = [
    "analyzer",
    "privacy",
    "budget",
    "tier",
    "quality",
    "scheduler",
];

/// Adds [`with_builtins`](WithBuiltins::with_builtins) to [`Registry`].
pub trait WithBuiltins {
    /// A registry with every built-in stage and selector compiled into this build.
    fn with_builtins() -> Registry;
}

/// A built-in stage's factory.
type Factory = fn(
    &BuildContext<'_>,
) -> Result<Box<dyn nexus_core::Reconciler>, nexus_core::registry::BuildError>;

/// The stages this build includes, beyond core's `analyzer`.
const BUILTINS: &[(&str, Factory)] = &[
    #[cfg(feature = "privacy")]
    ("privacy", nexus_privacy::PrivacyReconciler::from_context),
    #[cfg(feature = "budget")]
    ("budget", nexus_budget::BudgetReconciler::from_context),
    #[cfg(feature = "tier")]
    ("tier", nexus_tier::TierReconciler::from_context),
    #[cfg(feature = "quality")]
    ("quality", nexus_quality::QualityReconciler::from_context),
];

/// A built-in selector's factory.
type SelectorFn =
    fn(
        &BuildContext<'_>,
    ) -> Result<Box<dyn nexus_core::selector::Selector>, nexus_core::registry::BuildError>;

/// The selectors this build includes.
const BUILTIN_SELECTORS: &[(&str, SelectorFn)] = &[
    #[cfg(feature = "scheduler")]
    ("scheduler", nexus_scheduler::Scheduler::from_context),
];

impl WithBuiltins for Registry {
    fn with_builtins() -> Registry {
        let mut registry = Registry::new();
        for (kind, factory) in BUILTINS {
            registry
                .register(*kind, *factory)
                .expect("built-in kinds are distinct");
        }
        for (kind, factory) in BUILTIN_SELECTORS {
            registry
                .register_selector(*kind, *factory)
                .expect("built-in kinds are distinct");
        }
        registry
    }
}

/// Builds a [`Router`]: registers extra stage kinds, sets the clock, loads config.
///
/// ```
/// use nexus_core::{analyzer::RequestAnalyzer, registry::{BuildContext, BuildError}, Reconciler};
/// use nexus_router::RouterBuilder;
///
/// let router = RouterBuilder::new()
///     .with_reconciler("strict-health", |_: &BuildContext<'_>| {
///         Ok(Box::new(RequestAnalyzer) as Box<dyn Reconciler>)
///     })?
///     .load_str("inline.toml", r#"
///         [[backends]]
///         id = "a"
///         url = "http://127.0.0.1:1"
///         models = [{ name = "m" }]
///         [routing]
///         pipeline = ["strict-health", "scheduler"]
///     "#)?;
/// assert_eq!(router.route(&nexus_core::Request::new("m")).backend().unwrap().name(), "a");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RouterBuilder {
    registry: Registry,
    clock: Arc<dyn Clock>,
    dry_run: bool,
}

impl Default for RouterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RouterBuilder {
    /// A builder with every built-in stage and the system clock.
    pub fn new() -> Self {
        Self {
            registry: Registry::with_builtins(),
            clock: Arc::new(SystemClock),
            dry_run: false,
        }
    }

    /// Builds a router to look at or to decide with once, never to serve (what `nexus
    /// check` and `nexus route` do): stages read what they persist without creating,
    /// changing or locking it (the budget reads its store read-only, so a running
    /// router keeps it), and start no background work. See
    /// [`BuildContext::dry_run`](nexus_core::registry::BuildContext::dry_run).
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Registers a stage kind that config can then name in `[routing] pipeline`, with
    /// its settings in `[routing.<kind>]`. Refuses a kind that exists.
    pub fn with_reconciler(
        mut self,
        kind: impl Into<String>,
        factory: impl ReconcilerFactory + 'static,
    ) -> Result<Self, DuplicateKind> {
        self.registry.register(kind, factory)?;
        Ok(self)
    }

    /// Registers a selector kind: config names it in `[routing] pipeline` in place of
    /// `"scheduler"` (a pipeline lists at most one selector), with its settings in
    /// `[routing.<kind>]`. Refuses a kind that exists.
    pub fn with_selector(
        mut self,
        kind: impl Into<String>,
        factory: impl SelectorFactory + 'static,
    ) -> Result<Self, DuplicateKind> {
        self.registry.register_selector(kind, factory)?;
        Ok(self)
    }

    /// Sets the clock stages use (a fake one in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The registry, for listing kinds.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Loads the config file at `path`: a regular file of at most
    /// [`MAX_CONFIG_BYTES`](crate::MAX_CONFIG_BYTES), in UTF-8. Relative paths in it
    /// (the budget's `store`) are relative to the file's folder.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Router, ConfigError> {
        self.load_file_after(path.as_ref(), None)
    }

    /// Loads the config file at `path` as the successor of `running`, validated like
    /// [`load_file`](Self::load_file), for a reload: every backend whose id `running`
    /// has too keeps its live state (in flight, latency average, health; the quality
    /// stage's windows and circuit), and stages with state take it over (the budget's
    /// ledger, reservations, journal and store). `running` is left as it was and can
    /// keep serving: swap the result in ([`LiveRouter`](crate::LiveRouter) does).
    pub fn reload_file(
        &self,
        path: impl AsRef<Path>,
        running: &Router,
    ) -> Result<Router, ConfigError> {
        self.load_file_after(path.as_ref(), Some(running))
    }

    /// Loads config text as the successor of `running`; see
    /// [`reload_file`](Self::reload_file).
    pub fn reload_str(
        &self,
        name: &str,
        text: &str,
        running: &Router,
    ) -> Result<Router, ConfigError> {
        let source = Source::new(name, text);
        let config = source.parse()?;
        self.build(&source, config, None, Some(running))
    }

    fn load_file_after(
        &self,
        path: &Path,
        running: Option<&Router>,
    ) -> Result<Router, ConfigError> {
        let name = path.display().to_string();
        let text = crate::config::read_config_file(path)?;
        // Absolute, so that a later change of working directory changes nothing.
        let dir: Option<PathBuf> = path
            .canonicalize()
            .or_else(|_| std::path::absolute(path))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let source = Source::new(&name, &text);
        let config = source.parse()?;
        self.build(&source, config, dir.as_deref(), running)
    }

    /// Loads the built-in example config.
    pub fn load_example(&self) -> Result<Router, ConfigError> {
        self.load_str(EXAMPLE_CONFIG_NAME, EXAMPLE_CONFIG)
    }

    /// Loads config text; `name` is used in error messages. The text has no folder:
    /// relative paths in it resolve against the working directory.
    pub fn load_str(&self, name: &str, text: &str) -> Result<Router, ConfigError> {
        let source = Source::new(name, text);
        let config = source.parse()?;
        self.build(&source, config, None, None)
    }

    /// Checks and builds, step by step: the whole config's shape, the fleet, the
    /// policies, the `[routing]` stage tables, the pipeline's kinds, then the stages.
    fn build(
        &self,
        source: &Source<'_>,
        config: Config,
        config_dir: Option<&Path>,
        running: Option<&Router>,
    ) -> Result<Router, ConfigError> {
        let mut warnings = Vec::new();
        crate::validate::check(source, &config)?;
        crate::serving::check(source, &config)?;
        let mut routing = config.routing;
        let (server, health) = (config.server, config.health);
        let tenant_path = |index: usize, key: &'static str| {
            [Seg::Key("tenants"), Seg::Index(index), Seg::Key(key)]
        };
        let mut tenant_warnings = Vec::new();
        let tenants = crate::Tenants::build(
            &config.tenants,
            |var| std::env::var(var).ok(),
            self.dry_run,
            &mut tenant_warnings,
        )
        .map_err(|e| source.error(&tenant_path(e.index, e.key), e.message, Some(e.help)))?;
        for w in tenant_warnings {
            warnings.push(source.warning(&tenant_path(w.index, w.key), w.message));
        }

        let fleet = build_fleet(source, config.backends, running, &mut warnings)?;
        let policies =
            build_policies(source, std::mem::take(&mut routing.policies), &mut warnings)?;
        self.check_stage_tables(source, &routing.stages)?;
        let kinds =
            self.pipeline_kinds(source, &routing, &policies, &config.tenants, &mut warnings)?;
        let prior = Prior {
            config_dir,
            running,
            tenants: &tenants,
        };
        let pipeline = self.build_pipeline(source, &kinds, fleet, policies, routing, prior)?;
        Ok(Router {
            pipeline: Arc::new(pipeline),
            warnings,
            server,
            health,
            tenants: Arc::new(tenants),
        })
    }

    /// Stage settings tables must name a known kind; anything else is a typo.
    fn check_stage_tables(
        &self,
        source: &Source<'_>,
        stages: &BTreeMap<String, toml::Value>,
    ) -> Result<(), ConfigError> {
        for key in stages.keys() {
            if !self.registry.contains(key) {
                let known = ROUTING_KEYS.iter().copied().chain(self.registry.kinds());
                let help = match nexus_core::routes::closest(key, known) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!(
                        "[routing] takes {} and the settings of a stage kind ({})",
                        ROUTING_KEYS.join(", "),
                        self.registry.kinds().collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(source.error(
                    &[Seg::Key("routing"), Seg::Key(key)],
                    format!("unknown key `{key}` in [routing]"),
                    Some(help),
                ));
            }
        }
        Ok(())
    }

    /// The pipeline's kinds (`[routing] pipeline`, else the default), checked: each
    /// once, at most one selector, `[routing.on_error]` naming only them, every policy
    /// enforceable; and warnings for a missing analyzer, a missing selector, and an
    /// error policy set for the selector (which cannot fail).
    fn pipeline_kinds(
        &self,
        source: &Source<'_>,
        routing: &RoutingConfig,
        policies: &PolicySet,
        tenants: &[crate::TenantConfig],
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<Vec<String>, ConfigError> {
        let kinds: Vec<String> = match &routing.pipeline {
            Some(kinds) => kinds.clone(),
            None => DEFAULT_PIPELINE
                .iter()
                .filter(|k| self.registry.contains(k))
                .map(|k| (*k).to_owned())
                .collect(),
        };
        for (i, kind) in kinds.iter().enumerate() {
            if kinds[..i].contains(kind) {
                return Err(source.error(
                    &pipeline_path(i),
                    format!("stage '{kind}' appears twice in the pipeline"),
                    Some("list each stage once".to_owned()),
                ));
            }
        }
        let mut selectors = kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| self.registry.is_selector(k));
        let selector = selectors.next();
        if let (Some((_, first)), Some((i, second))) = (selector, selectors.next()) {
            return Err(source.error(
                &pipeline_path(i),
                format!(
                    "the pipeline lists two selectors, '{first}' and '{second}': one selector picks the backend"
                ),
                Some(format!("keep one of '{first}' and '{second}'")),
            ));
        }
        for kind in routing.on_error.keys() {
            if self.registry.is_selector(kind) && kinds.contains(kind) {
                warnings.push(source.warning(
                    &[Seg::Key("routing"), Seg::Key("on_error"), Seg::Key(kind)],
                    format!("'{kind}' is the pipeline's selector, which picks and cannot fail, so an error policy has nothing to apply to; remove this line"),
                ));
            }
            if !kinds.contains(kind) {
                return Err(source.error(
                    &[Seg::Key("routing"), Seg::Key("on_error"), Seg::Key(kind)],
                    format!("[routing.on_error] names '{kind}', which is not in the pipeline"),
                    nexus_core::routes::closest(kind, kinds.iter().map(String::as_str))
                        .map(|k| format!("did you mean `{k}`?")),
                ));
            }
        }
        crate::enforcement::check(
            source,
            &self.registry,
            &kinds,
            policies.policies(),
            routing.stages.keys(),
        )?;
        // A tenant's override or limit is enforced by a stage, like a policy's key.
        for (index, tenant) in tenants.iter().enumerate() {
            let demands = [
                (tenant.privacy.is_some(), "privacy", "privacy"),
                (tenant.min_tier.is_some(), "min_tier", "tier"),
                (
                    tenant.max_cost_per_request.is_some(),
                    "max_cost_per_request",
                    "budget",
                ),
                (
                    tenant.monthly_limit_usd.is_some(),
                    "monthly_limit_usd",
                    "budget",
                ),
            ];
            for (set, key, stage) in demands {
                if set && !kinds.iter().any(|k| k == stage) {
                    return Err(source.error(
                        &[Seg::Key("tenants"), Seg::Index(index), Seg::Key(key)],
                        format!(
                            "tenant '{}': {key} needs the '{stage}' stage, which the pipeline leaves out, so it would be ignored",
                            tenant.id
                        ),
                        Some(crate::enforcement::way_out(&self.registry, stage, key)),
                    ));
                }
            }
        }
        if !kinds.iter().any(|k| k == "analyzer") {
            warnings.push(source.warning(
                &[Seg::Key("routing"), Seg::Key("pipeline")],
                "the pipeline has no 'analyzer': unhealthy backends will be admitted; put \"analyzer\" first",
            ));
        }
        if selector.is_none() {
            warnings.push(source.warning(
                &[Seg::Key("routing"), Seg::Key("pipeline")],
                "the pipeline lists no selector: the candidate with the largest weight is chosen, whatever its load and latency; end the pipeline with \"scheduler\"",
            ));
        }
        Ok(kinds)
    }

    /// Builds each stage of `kinds` from its settings, then the pipeline (which
    /// resolves `routing`'s aliases and fallbacks).
    fn build_pipeline(
        &self,
        source: &Source<'_>,
        kinds: &[String],
        fleet: Arc<Fleet>,
        policies: Arc<PolicySet>,
        routing: RoutingConfig,
        prior: Prior<'_>,
    ) -> Result<Pipeline, ConfigError> {
        let Prior {
            config_dir,
            running,
            tenants,
        } = prior;
        let RoutingConfig {
            aliases,
            fallbacks,
            stages: settings,
            on_error,
            ..
        } = routing;
        let mut builder = Pipeline::builder(Arc::clone(&fleet))
            .clock(Arc::clone(&self.clock))
            .policies(Arc::clone(&policies))
            .aliases(aliases)
            .fallbacks(fallbacks)
            .tenant_constraints(tenants.constraints())
            .fix_texts(crate::wording::FIX_TEXTS);
        for (i, kind) in kinds.iter().enumerate() {
            let ctx = BuildContext {
                kind,
                fleet: &fleet,
                policies: &policies,
                settings: settings.get(kind),
                clock: &self.clock,
                config_dir,
                dry_run: self.dry_run,
                previous: running.map(|r| &**r.pipeline()),
            };
            let build_error = |e: nexus_core::registry::BuildError| match &e {
                nexus_core::registry::BuildError::UnknownKind { suggestion, .. } => source.error(
                    &pipeline_path(i),
                    format!("unknown stage '{kind}' in the pipeline"),
                    Some(match suggestion {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "known stages: {}",
                            self.registry.kinds().collect::<Vec<_>>().join(", ")
                        ),
                    }),
                ),
                nexus_core::registry::BuildError::InvalidSettings { message, .. } => {
                    source.settings_error(kind, message)
                }
                _ => source.error(&[Seg::Key("routing"), Seg::Key(kind)], e.to_string(), None),
            };
            if self.registry.is_selector(kind) {
                let selector = self.registry.build_selector(&ctx).map_err(build_error)?;
                builder = builder.boxed_selector(selector);
                continue;
            }
            let stage = self.registry.build(&ctx).map_err(build_error)?;
            #[cfg(feature = "budget")]
            if let Some(budget) = stage
                .as_any()
                .and_then(|a| a.downcast_ref::<nexus_budget::BudgetReconciler>())
            {
                let limits: Vec<nexus_budget::TenantLimit> = tenants
                    .iter()
                    .map(|(_, t)| nexus_budget::TenantLimit {
                        id: t.id().to_owned(),
                        monthly_limit_usd: t.monthly_limit_usd(),
                    })
                    .collect();
                // A reload keeps every tenant's month (and lease) by id.
                let ledgers = running
                    .and_then(|r| r.pipeline().stage_of::<nexus_budget::BudgetReconciler>())
                    .and_then(|old| old.tenant_ledgers().cloned())
                    .unwrap_or_default();
                budget
                    .attach_tenants(&limits, ledgers)
                    .map_err(|e| source.error(&[Seg::Key("tenants")], e, None))?;
            }
            builder = builder.boxed_stage(stage, on_error.get(kind).copied());
        }
        builder.build().map_err(|e| match e {
            PipelineError::Routes(e) => {
                let table = if e.is_fallback() {
                    "fallbacks"
                } else {
                    "aliases"
                };
                source.error(
                    &[Seg::Key("routing"), Seg::Key(table), Seg::Key(e.key())],
                    e.to_string(),
                    None,
                )
            }
            other => source.error(
                &[Seg::Key("routing"), Seg::Key("pipeline")],
                other.to_string(),
                None,
            ),
        })
    }
}

/// Where the `i`-th kind of `[routing] pipeline` is.
fn pipeline_path(i: usize) -> [Seg<'static>; 3] {
    [Seg::Key("routing"), Seg::Key("pipeline"), Seg::Index(i)]
}

/// What building a pipeline needs besides the config: where relative paths resolve,
/// the router a reload replaces (whose stages hand their state over) and the tenants.
struct Prior<'a> {
    config_dir: Option<&'a Path>,
    running: Option<&'a Router>,
    tenants: &'a crate::Tenants,
}

/// The fleet of `[[backends]]`, with warnings for an empty fleet and backends that
/// serve no models.
fn build_fleet(
    source: &Source<'_>,
    backends: Vec<nexus_core::BackendSpec>,
    running: Option<&Router>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Arc<Fleet>, ConfigError> {
    let mut fleet = Fleet::new(backends).map_err(|e| fleet_error(source, &e))?;
    if let Some(running) = running {
        fleet.adopt_live_state(running.fleet());
    }
    if fleet.is_empty() {
        warnings.push(source.warning(
            &[],
            "no [[backends]]: every request will be rejected; add a backend with the models it serves",
        ));
    }
    for backend in fleet.backends().iter().filter(|b| b.models().is_empty()) {
        warnings.push(source.warning(
            &[Seg::Key("backends"), Seg::Index(backend.id().index())],
            format!(
                "backend '{}' serves no models, so it never receives traffic; add [[backends.models]] entries",
                backend.name()
            ),
        ));
    }
    Ok(Arc::new(fleet))
}

/// The `[[routing.policies]]`, with a warning for each policy an earlier one shadows.
fn build_policies(
    source: &Source<'_>,
    policies: Vec<nexus_core::policy::TrafficPolicy>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Arc<PolicySet>, ConfigError> {
    let policies = PolicySet::new(policies).map_err(|e| {
        let index = e.index();
        let key = match e {
            PolicyError::InvalidCost { .. } => "max_cost_per_request",
            _ => "model_pattern",
        };
        source.error(
            &[
                Seg::Key("routing"),
                Seg::Key("policies"),
                Seg::Index(index),
                Seg::Key(key),
            ],
            e.to_string(),
            None,
        )
    })?;
    for shadowed in policies.shadowed() {
        warnings.push(source.warning(
            &[
                Seg::Key("routing"),
                Seg::Key("policies"),
                Seg::Index(shadowed.policy),
                Seg::Key("model_pattern"),
            ],
            format!(
                "policy {} ('{}') never matches: policy {} ('{}') before it matches every name it does; move it up or remove it",
                shadowed.policy,
                policies.policy(shadowed.policy).model_pattern,
                shadowed.by,
                policies.policy(shadowed.by).model_pattern,
            ),
        ));
    }
    Ok(Arc::new(policies))
}

fn fleet_error(source: &Source<'_>, e: &FleetError) -> ConfigError {
    let index = e.backend_index().unwrap_or(0);
    let mut path = vec![Seg::Key("backends"), Seg::Index(index)];
    match e {
        FleetError::DuplicateId { .. } | FleetError::EmptyId { .. } => path.push(Seg::Key("id")),
        FleetError::ZeroPriority { .. } => path.push(Seg::Key("priority")),
        FleetError::ZeroConcurrency { .. } => path.push(Seg::Key("max_concurrency")),
        FleetError::InvalidModel { model_index, .. } => {
            path.extend([Seg::Key("models"), Seg::Index(*model_index)]);
        }
        FleetError::InvalidPrice {
            model_index, key, ..
        } => {
            path.extend([Seg::Key("models"), Seg::Index(*model_index), Seg::Key(key)]);
        }
        _ => {}
    }
    if let FleetError::EmptyId { index } = e {
        // Core names the fix in its terms; the config's is a line to copy.
        return source.error(
            &path,
            format!("backend {index} has an empty id"),
            Some("set id = \"some-name\"".to_owned()),
        );
    }
    source.error(&path, e.to_string(), None)
}

/// A routing pipeline built from configuration.
#[derive(Debug)]
pub struct Router {
    pipeline: Arc<Pipeline>,
    warnings: Vec<ConfigWarning>,
    server: ServerConfig,
    health: HealthConfig,
    tenants: Arc<crate::Tenants>,
}

impl Router {
    /// A builder, to register third-party stages or set the clock first.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::new()
    }

    /// Loads the config file at `path` with the built-in stages.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Router, ConfigError> {
        RouterBuilder::new().load_file(path)
    }

    /// Loads config text with the built-in stages.
    pub fn from_toml(name: &str, text: &str) -> Result<Router, ConfigError> {
        RouterBuilder::new().load_str(name, text)
    }

    /// The router of the built-in example config.
    pub fn example() -> Result<Router, ConfigError> {
        RouterBuilder::new().load_example()
    }

    /// Decides where `request` goes; the decision borrows the router.
    #[inline]
    pub fn route(&self, request: &Request<'_>) -> Decision<&Pipeline> {
        self.pipeline.decide(request)
    }

    /// Decides where `request` goes, with a decision and route guard that hold a share
    /// of the pipeline: `Send + 'static`, for a server that finishes the guard in
    /// another task (a streamed answer) or after the router moved on to a new config.
    /// Still no allocation on the Route path.
    #[inline]
    pub fn route_owned(&self, request: &Request<'_>) -> OwnedDecision {
        self.pipeline.decide_owned(request)
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The fleet.
    pub fn fleet(&self) -> &Arc<Fleet> {
        self.pipeline.fleet()
    }

    /// The `[server]` settings, for a gateway.
    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// The `[health]` settings, for a gateway.
    pub fn health(&self) -> &HealthConfig {
        &self.health
    }

    /// The `[[tenants]]`: empty when none are configured.
    pub fn tenants(&self) -> &Arc<crate::Tenants> {
        &self.tenants
    }

    /// What looked wrong in the config but did not stop it loading.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }
}
