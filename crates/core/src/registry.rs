//! The [`Registry`] of named reconciler factories that configuration draws from.
//!
//! Built-in stages and third-party ones register the same way: under a kind name
//! (`"privacy"`, `"my-geo-fence"`) with a [`ReconcilerFactory`] that builds the stage
//! from a [`BuildContext`]. The registry refuses a second factory for a kind, so a
//! plugin cannot silently replace a built-in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Clock, Fleet, Pipeline, PolicySet, Reconciler, RequestAnalyzer};

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
    /// # use nexus_core::{BuildContext, Clock, Fleet, PolicySet, SystemClock};
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

    /// The settings deserialized into `T`, or `T::default()` when the section is absent.
    ///
    /// An error about one key starts with the key's path (`load_wait_ms: invalid type:
    /// ...`), the convention of [`BuildError::InvalidSettings`], so that it is reported
    /// at that key's line.
    pub fn settings<T: DeserializeOwned + Default>(&self) -> Result<T, BuildError> {
        match self.settings {
            None => Ok(T::default()),
            Some(value) => serde_path_to_error::deserialize(value.clone()).map_err(
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
                        kind: self.kind.to_owned(),
                        message: if path.is_empty() {
                            message.to_owned()
                        } else {
                            format!("{path}: {message}")
                        },
                    }
                },
            ),
        }
    }
}

/// A factory could not build its stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The `[routing.<kind>]` table is invalid.
    #[error("[routing.{kind}]: {message}")]
    InvalidSettings {
        /// The stage kind.
        kind: String,
        /// What is wrong, and how to fix it. When it is about one key, the message starts
        /// with that key's path (`soft_limit_percent is a fraction ...`,
        /// `redis.url: invalid type ...`), so that config errors point at its line.
        message: String,
    },
    /// No factory is registered under the name.
    #[error("unknown reconciler '{kind}'{}; known: {}", .suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default(), .known.join(", "))]
    UnknownKind {
        /// The name asked for.
        kind: String,
        /// The closest registered name.
        suggestion: Option<String>,
        /// Every registered name.
        known: Vec<String>,
    },
    /// Anything else.
    #[error("reconciler '{kind}': {message}")]
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

/// A second factory was registered for a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a reconciler named '{kind}' is already registered; choose another name for yours")]
pub struct DuplicateKind {
    /// The kind.
    pub kind: String,
}

/// Named reconciler factories.
///
/// ```
/// use nexus_core::{BuildContext, BuildError, Reconciler, Registry, RequestAnalyzer};
///
/// let mut registry = Registry::new();
/// assert!(registry.contains("analyzer"));
/// let duplicate = registry.register("analyzer", |_: &BuildContext<'_>| {
///     Ok(Box::new(RequestAnalyzer) as Box<dyn Reconciler>)
/// });
/// assert!(duplicate.is_err());
/// ```
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Arc<dyn ReconcilerFactory>>,
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

    /// Registers `factory` under `kind`; refuses a kind that is already taken.
    pub fn register(
        &mut self,
        kind: impl Into<String>,
        factory: impl ReconcilerFactory + 'static,
    ) -> Result<(), DuplicateKind> {
        let kind = kind.into();
        if self.factories.contains_key(&kind) {
            return Err(DuplicateKind { kind });
        }
        self.factories.insert(kind, Arc::new(factory));
        Ok(())
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.factories.contains_key(kind)
    }

    /// Every registered kind, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds a stage of kind `ctx.kind`.
    pub fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        match self.factories.get(ctx.kind) {
            Some(factory) => factory.build(ctx),
            None => Err(BuildError::UnknownKind {
                kind: ctx.kind.to_owned(),
                suggestion: crate::closest(ctx.kind, self.kinds()).map(str::to_owned),
                known: self.kinds().map(str::to_owned).collect(),
            }),
        }
    }
}
