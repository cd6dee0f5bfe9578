//! The [`Registry`] of named reconciler and selector factories that configuration draws
//! from.
//!
//! Built-in stages and third-party ones register the same way: under a kind name
//! (`"privacy"`, `"my-geo-fence"`) with a [`ReconcilerFactory`] that builds the stage
//! from a [`BuildContext`]. A kind that picks rather than narrows (`"scheduler"`)
//! registers a [`SelectorFactory`] instead ([`Registry::register_selector`]): config
//! lists it in the pipeline like a stage, and the pipeline gets it as its one
//! [`Selector`]. Stages and selectors share one namespace, and the registry refuses a
//! second factory for a kind, so a plugin cannot silently replace a built-in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Clock, Fleet, Pipeline, PolicySet, Reconciler, RequestAnalyzer, Selector};

/// What a factory gets to build its stage from.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The kind being built.
    pub kind: &'a str,
    /// The fleet the pipeline routes over.
    pub fleet: &'a Arc<Fleet>,
    /// The traffic policies.
    pub policies: &'a Arc<PolicySet>,
    /// The stage's settings: the `[routing.<kind>]` table of the config, if present.
    pub settings: Option<&'a toml::Value>,
    /// The clock stages must use for time.
    pub clock: &'a Arc<dyn Clock>,
    /// The folder of the config file, which relative paths in settings are relative to
    /// ([`resolve_path`](Self::resolve_path)); `None` for config that came from no file,
    /// whose relative paths resolve against the working directory.
    pub config_dir: Option<&'a Path>,
    /// A dry run (`nexus check`, `nexus route`): the pipeline is built to be looked at
    /// or to decide once, never to serve. A stage must then open what it persists
    /// read-only, create nothing, lock nothing out, and start no background work.
    pub dry_run: bool,
    /// On a reload, the pipeline being replaced (still serving until the new one is
    /// swapped in, and finishing its requests in flight after). A stage with state that
    /// must outlive a config (spend, quality windows) takes it over from its
    /// predecessor of the same type ([`Pipeline::stage_of`]) instead of starting
    /// afresh; the predecessor's fleet tells which backend index was which id. `None`
    /// on a first load.
    pub previous: Option<&'a Pipeline>,
}

impl fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("kind", &self.kind)
            .field("backends", &self.fleet.len())
            .field("settings", &self.settings)
            .field("config_dir", &self.config_dir)
            .field("dry_run", &self.dry_run)
            .field("reload", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl BuildContext<'_> {
    /// `path` as a setting means it: relative to the config file's folder when there is
    /// one, so that the same config names the same file from any working directory.
    ///
    /// ```
    /// # use std::path::Path;
    /// # use std::sync::Arc;
    /// # use nexus_core::{clock::{Clock, SystemClock}, policy::PolicySet, registry::BuildContext, Fleet};
    /// # let fleet = Arc::new(Fleet::new(Vec::new()).unwrap());
    /// # let policies = Arc::new(PolicySet::new(Vec::new()).unwrap());
    /// # let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// let ctx = BuildContext {
    ///     kind: "budget",
    ///     fleet: &fleet,
    ///     policies: &policies,
    ///     settings: None,
    ///     clock: &clock,
    ///     config_dir: Some(Path::new("/etc/nexus")),
    ///     dry_run: false,
    ///     previous: None,
    /// };
    /// assert_eq!(ctx.resolve_path(Path::new("spend.redb")), Path::new("/etc/nexus/spend.redb"));
    /// assert_eq!(ctx.resolve_path(Path::new("/var/lib/spend.redb")), Path::new("/var/lib/spend.redb"));
    /// ```
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        match self.config_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// A [`BuildError::InvalidSettings`] for this kind: what a factory returns when its
    /// settings parse but do not make sense (`message` names the key first, then what is
    /// wrong and how to fix it).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use nexus_core::{clock::{Clock, SystemClock}, policy::PolicySet, registry::{BuildContext, BuildError}, Fleet};
    /// # let fleet = Arc::new(Fleet::new(Vec::new()).unwrap());
    /// # let policies = Arc::new(PolicySet::new(Vec::new()).unwrap());
    /// # let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// # let ctx = BuildContext { kind: "geo", fleet: &fleet, policies: &policies,
    /// #     settings: None, clock: &clock, config_dir: None, dry_run: false, previous: None };
    /// let err = ctx.invalid("`regions` is empty; name at least one region");
    /// assert_eq!(
    ///     err,
    ///     BuildError::InvalidSettings {
    ///         kind: "geo".to_owned(),
    ///         message: "`regions` is empty; name at least one region".to_owned(),
    ///     }
    /// );
    /// ```
    pub fn invalid(&self, message: impl Into<String>) -> BuildError {
        BuildError::InvalidSettings {
            kind: self.kind.to_owned(),
            message: message.into(),
        }
    }

    /// The settings deserialized into `T`, then checked by `validate` (whose `Err` is a
    /// message naming the key, turned into [`invalid`](Self::invalid)); `T::default()`
    /// (also validated) when the section is absent. The usual first line of a factory:
    /// `let settings: MySettings = ctx.validated_settings(MySettings::validate)?;`
    pub fn validated_settings<T: DeserializeOwned + Default>(
        &self,
        validate: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, BuildError> {
        let settings: T = self.settings()?;
        validate(&settings).map_err(|message| self.invalid(message))?;
        Ok(settings)
    }

    /// The settings deserialized into `T`, for a stage that cannot run without them:
    /// an absent section is an error that says so (and, for a type with defaults,
    /// [`settings`](Self::settings) is the one to call).
    pub fn required_settings<T: DeserializeOwned>(&self) -> Result<T, BuildError> {
        match self.settings {
            None => Err(self.invalid(
                "this kind needs settings, and they are missing; give them with its required keys",
            )),
            Some(value) => deserialize(self.kind, value),
        }
    }

    /// The settings deserialized into `T`, or `T::default()` when the section is absent.
    ///
    /// An error about one key starts with the key's path (`load_wait_ms: invalid type:
    /// ...`), the convention of [`BuildError::InvalidSettings`], so that it is reported
    /// at that key's line.
    pub fn settings<T: DeserializeOwned + Default>(&self) -> Result<T, BuildError> {
        match self.settings {
            None => Ok(T::default()),
            Some(value) => deserialize(self.kind, value),
        }
    }
}

/// `value` deserialized into `T`; an error about one key starts with the key's path.
fn deserialize<T: DeserializeOwned>(kind: &str, value: &toml::Value) -> Result<T, BuildError> {
    serde_path_to_error::deserialize(value.clone()).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            use serde_path_to_error::Segment;
            let message = e.inner().message().trim();
            let mut segments: Vec<&Segment> = e
                .path()
                .iter()
                .filter(|s| !matches!(s, Segment::Unknown))
                .collect();
            // serde names an unknown field itself: the path is its table's.
            if message.starts_with("unknown field") {
                segments.pop();
            }
            let mut path = String::new();
            for segment in segments {
                match segment {
                    Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                    }
                    Segment::Unknown => {}
                }
            }
            BuildError::InvalidSettings {
                kind: kind.to_owned(),
                message: if path.is_empty() {
                    message.to_owned()
                } else {
                    format!("{path}: {message}")
                },
            }
        },
    )
}

/// Checks a setting that is a fraction in (0, 1]: `Err` names `key`, says what the
/// value is (`what`, e.g. "a fraction of the limit") and, for a value that reads as a
/// percentage (1 < value <= 100), suggests the fraction it probably meant.
///
/// ```
/// use nexus_core::registry::check_fraction;
/// assert_eq!(check_fraction("`max_error_rate`", "a fraction", 0.25), Ok(()));
/// assert_eq!(
///     check_fraction("`max_error_rate`", "a fraction", 25.0),
///     Err("`max_error_rate` is a fraction in (0, 1], got 25; did you mean 0.25?".to_owned())
/// );
/// assert_eq!(
///     check_fraction("`max_error_rate`", "a fraction", 0.0),
///     Err("`max_error_rate` is a fraction in (0, 1], got 0".to_owned())
/// );
/// ```
pub fn check_fraction(key: &str, what: &str, value: f64) -> Result<(), String> {
    if value > 0.0 && value <= 1.0 {
        return Ok(());
    }
    let hint = if value > 1.0 && value <= 100.0 {
        format!("; did you mean {}?", value / 100.0)
    } else {
        String::new()
    };
    Err(format!("{key} is {what} in (0, 1], got {value}{hint}"))
}

/// A factory could not build its stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The stage's settings are invalid (nexus-router reads them from the
    /// `[routing.<kind>]` table and points at the key the message starts with).
    #[error("settings of stage '{kind}': {message}")]
    InvalidSettings {
        /// The stage kind.
        kind: String,
        /// What is wrong, and how to fix it. When it is about one key, the message starts
        /// with that key's path (`soft_limit_percent is a fraction ...`,
        /// `redis.url: invalid type ...`), so that config errors point at its line.
        message: String,
    },
    /// No factory is registered under the name.
    #[error("no kind '{kind}' is registered{}; registered kinds: {}", .suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default(), .known.join(", "))]
    UnknownKind {
        /// The name asked for.
        kind: String,
        /// The closest registered name.
        suggestion: Option<String>,
        /// Every registered name.
        known: Vec<String>,
    },
    /// Anything else.
    #[error("stage '{kind}': {message}")]
    Other {
        /// The stage kind.
        kind: String,
        /// What went wrong.
        message: String,
    },
}

/// Builds one kind of stage.
///
/// Any `Fn(&BuildContext) -> Result<Box<dyn Reconciler>, BuildError>` is a factory.
pub trait ReconcilerFactory: Send + Sync {
    /// Builds the stage.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError>;
}

impl<F> ReconcilerFactory for F
where
    F: Fn(&BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> + Send + Sync,
{
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        self(ctx)
    }
}

/// Builds one kind of selector.
///
/// Any `Fn(&BuildContext) -> Result<Box<dyn Selector>, BuildError>` is a factory.
pub trait SelectorFactory: Send + Sync {
    /// Builds the selector.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError>;
}

impl<F> SelectorFactory for F
where
    F: Fn(&BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError> + Send + Sync,
{
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError> {
        self(ctx)
    }
}

/// A registered factory: of a stage, or of a selector.
#[derive(Clone)]
enum Factory {
    Stage(Arc<dyn ReconcilerFactory>),
    Selector(Arc<dyn SelectorFactory>),
}

/// A second factory was registered for a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kind '{kind}' is already registered; register yours under another kind")]
pub struct DuplicateKind {
    /// The kind.
    pub kind: String,
}

/// Named reconciler and selector factories.
///
/// ```
/// use nexus_core::analyzer::RequestAnalyzer;
/// use nexus_core::registry::{BuildContext, Registry};
/// use nexus_core::selector::{HeaviestCandidate, Selector};
/// use nexus_core::Reconciler;
///
/// let mut registry = Registry::new();
/// assert!(registry.contains("analyzer"));
/// let duplicate = registry.register("analyzer", |_: &BuildContext<'_>| {
///     Ok(Box::new(RequestAnalyzer) as Box<dyn Reconciler>)
/// });
/// assert!(duplicate.is_err());
/// registry.register_selector("heaviest", |_: &BuildContext<'_>| {
///     Ok(Box::new(HeaviestCandidate) as Box<dyn Selector>)
/// })?;
/// assert!(registry.is_selector("heaviest") && !registry.is_selector("analyzer"));
/// # Ok::<(), nexus_core::registry::DuplicateKind>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding core's own stage, `analyzer`.
    pub fn new() -> Self {
        let mut registry = Self::empty();
        registry
            .register("analyzer", |_: &BuildContext<'_>| {
                Ok(Box::new(RequestAnalyzer) as Box<dyn Reconciler>)
            })
            .expect("an empty registry has no duplicates");
        registry
    }

    /// A registry with nothing in it.
    pub fn empty() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }

    /// Registers the stage `factory` under `kind`; refuses a kind that is already taken.
    pub fn register(
        &mut self,
        kind: impl Into<String>,
        factory: impl ReconcilerFactory + 'static,
    ) -> Result<(), DuplicateKind> {
        self.insert(kind.into(), Factory::Stage(Arc::new(factory)))
    }

    /// Registers the selector `factory` under `kind`; refuses a kind that is already
    /// taken (by a stage or a selector).
    pub fn register_selector(
        &mut self,
        kind: impl Into<String>,
        factory: impl SelectorFactory + 'static,
    ) -> Result<(), DuplicateKind> {
        self.insert(kind.into(), Factory::Selector(Arc::new(factory)))
    }

    fn insert(&mut self, kind: String, factory: Factory) -> Result<(), DuplicateKind> {
        if self.factories.contains_key(&kind) {
            return Err(DuplicateKind { kind });
        }
        self.factories.insert(kind, factory);
        Ok(())
    }

    /// Whether `kind` is registered (as a stage or a selector).
    pub fn contains(&self, kind: &str) -> bool {
        self.factories.contains_key(kind)
    }

    /// Whether `kind` is registered as a selector.
    pub fn is_selector(&self, kind: &str) -> bool {
        matches!(self.factories.get(kind), Some(Factory::Selector(_)))
    }

    /// Every registered kind, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds a stage of kind `ctx.kind`; a selector kind is
    /// [`BuildError::Other`] (build it with [`build_selector`](Self::build_selector)).
    pub fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        match self.factories.get(ctx.kind) {
            Some(Factory::Stage(factory)) => factory.build(ctx),
            Some(Factory::Selector(_)) => Err(self.wrong_role(ctx.kind, "a selector", "stage")),
            None => Err(self.unknown(ctx.kind)),
        }
    }

    /// Builds a selector of kind `ctx.kind`; a stage kind is [`BuildError::Other`].
    pub fn build_selector(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Selector>, BuildError> {
        match self.factories.get(ctx.kind) {
            Some(Factory::Selector(factory)) => factory.build(ctx),
            Some(Factory::Stage(_)) => Err(self.wrong_role(ctx.kind, "a stage", "selector")),
            None => Err(self.unknown(ctx.kind)),
        }
    }

    fn wrong_role(&self, kind: &str, is: &str, wanted: &str) -> BuildError {
        BuildError::Other {
            kind: kind.to_owned(),
            message: format!("'{kind}' is {is}, not a {wanted}"),
        }
    }

    fn unknown(&self, kind: &str) -> BuildError {
        BuildError::UnknownKind {
            kind: kind.to_owned(),
            suggestion: crate::closest(kind, self.kinds()).map(str::to_owned),
            known: self.kinds().map(str::to_owned).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemClock;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        share: f64,
    }

    fn with_ctx<R>(settings: Option<&toml::Value>, f: impl FnOnce(&BuildContext<'_>) -> R) -> R {
        let fleet = Arc::new(Fleet::new(Vec::new()).unwrap());
        let policies = Arc::new(PolicySet::new(Vec::new()).unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        f(&BuildContext {
            kind: "geo",
            fleet: &fleet,
            policies: &policies,
            settings,
            clock: &clock,
            config_dir: None,
            dry_run: false,
            previous: None,
        })
    }

    fn check(s: &Settings) -> Result<(), String> {
        check_fraction("`share`", "a fraction", s.share)
    }

    #[test]
    fn required_settings_name_the_missing_section() {
        let err = with_ctx(None, |ctx| ctx.required_settings::<Settings>().unwrap_err());
        let BuildError::InvalidSettings { kind, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(kind, "geo");
        assert!(
            message.contains("needs settings, and they are missing"),
            "{message}"
        );
        let table: toml::Value = toml::from_str("share = 0.5").unwrap();
        let settings = with_ctx(Some(&table), |ctx| ctx.required_settings::<Settings>());
        assert_eq!(settings.unwrap().share, 0.5);
    }

    #[test]
    fn validated_settings_turn_the_check_into_an_error_of_the_kind() {
        let table: toml::Value = toml::from_str("share = 40.0").unwrap();
        let err = with_ctx(Some(&table), |ctx| {
            ctx.validated_settings(check).unwrap_err()
        });
        assert_eq!(
            err.to_string(),
            "settings of stage 'geo': `share` is a fraction in (0, 1], got 40; did you mean 0.4?"
        );
        // Absent: the default is validated too (0 is not a fraction in (0, 1]).
        let err = with_ctx(None, |ctx| ctx.validated_settings(check).unwrap_err());
        assert!(err.to_string().contains("got 0"), "{err}");
        // A key error still names the key.
        let table: toml::Value = toml::from_str("shar = 0.4").unwrap();
        let err = with_ctx(Some(&table), |ctx| {
            ctx.validated_settings(check).unwrap_err()
        });
        assert!(err.to_string().contains("unknown field `shar`"), "{err}");
    }

    #[test]
    fn fractions_outside_the_range_are_refused_with_a_percentage_hint_only_when_it_reads_as_one() {
        assert!(check_fraction("k", "a fraction", 1.0).is_ok());
        assert!(check_fraction("k", "a fraction", f64::NAN).is_err());
        assert_eq!(
            check_fraction("k", "a fraction", 150.0).unwrap_err(),
            "k is a fraction in (0, 1], got 150"
        );
        assert_eq!(
            check_fraction("k", "a fraction", -0.5).unwrap_err(),
            "k is a fraction in (0, 1], got -0.5"
        );
    }
}
