//! Name resolution: from the name a client asked for to the models that may serve it.
//!
//! [`ModelRoutes`] resolves, once at load time, every name a request can use: the alias
//! chain (at most three names, no cycles), the resolved model, its fallbacks, and the
//! policy constraints combined over every name on the way. A decision then does one
//! hash lookup to get its [`RoutePlan`]. The per-decision part of request analysis is
//! the [`RequestAnalyzer`](crate::analyzer::RequestAnalyzer) stage.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use crate::{Constraints, Fleet, ModelId, PolicySet};

/// The longest alias chain, counting the requested name and the resolved model.
pub(crate) const MAX_ALIAS_NAMES: usize = 3;

/// One model a request may be served by, with the constraints in force for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attempt {
    /// The model.
    pub model: ModelId,
    /// Constraints combined over the requested name, its aliases, the resolved model and
    /// every fallback up to and including this one.
    pub constraints: Constraints,
}

/// Everything a decision needs to know about one requested name, precomputed.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    chain: Box<[Box<str>]>,
    attempts: Box<[Attempt]>,
}

impl RoutePlan {
    /// The names from the requested one to the resolved model (1 to 3 names).
    pub fn alias_chain(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().map(|s| &**s)
    }

    /// The resolved model first, then each allowed fallback in order.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// The constraints in force when deciding for `model` (none if it is not tried).
    pub fn constraints_for(&self, model: ModelId) -> Constraints {
        self.attempts
            .iter()
            .find(|a| a.model == model)
            .map_or(Constraints::NONE, |a| a.constraints)
    }
}

/// A problem with `[routing.aliases]` or `[routing.fallbacks]`, found at load time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutesError {
    /// An alias chain longer than three names.
    #[error("alias chain {} has {} names, at most {MAX_ALIAS_NAMES} are allowed (A -> B -> C); point '{alias}' straight at the model", .chain.join(" -> "), .chain.len())]
    ChainTooLong {
        /// The alias whose chain is too long.
        alias: String,
        /// The chain, as far as it was followed.
        chain: Vec<String>,
    },
    /// Aliases that lead back to themselves.
    #[error("aliases form a cycle: {}; make one of them name a model", .cycle.join(" -> "))]
    Cycle {
        /// The alias where the cycle was found.
        alias: String,
        /// The names of the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// An alias whose chain ends at a name no backend serves.
    #[error("alias '{alias}' resolves to '{target}', which no backend serves{}", suggestion_text(.suggestion))]
    UnknownTarget {
        /// The alias.
        alias: String,
        /// The name it ends at.
        target: String,
        /// The closest served model name.
        suggestion: Option<String>,
    },
    /// An alias with the same name as a served model would hide that model.
    #[error("alias '{alias}' has the name of a model that backends serve, so that model could never be requested; rename the alias")]
    AliasHidesModel {
        /// The alias.
        alias: String,
    },
    /// Fallbacks listed for a name that is not a served model.
    #[error("fallbacks are listed for '{model}', which no backend serves{}; key fallbacks by the model that serves", suggestion_text(.suggestion))]
    UnknownFallbackKey {
        /// The key.
        model: String,
        /// The closest served model name (or the model an alias resolves to).
        suggestion: Option<String>,
    },
    /// A fallback that resolves to no served model.
    #[error("fallback '{target}' of '{model}' is not served by any backend{}", suggestion_text(.suggestion))]
    UnknownFallback {
        /// The model whose fallback it is.
        model: String,
        /// The fallback.
        target: String,
        /// The closest served model name.
        suggestion: Option<String>,
    },
    /// An empty list of fallbacks, which would do nothing.
    #[error(
        "the fallbacks of '{model}' are an empty list; list at least one model, or remove the line"
    )]
    EmptyFallbacks {
        /// The model.
        model: String,
    },
    /// A fallback that is (or resolves to) the model it is a fallback of.
    #[error("'{model}' lists '{target}' as a fallback, which {}; remove it", if .model == .target { "is itself".to_owned() } else { format!("resolves to '{}' itself", .model) })]
    SelfFallback {
        /// The model.
        model: String,
        /// The fallback.
        target: String,
    },
    /// Two fallbacks of one model that are (or resolve to) the same model.
    #[error("fallback '{target}' of '{model}' {} as '{first}' before it, so it is never tried; list each fallback once", if .target == .first { "is listed twice, the same" } else { "resolves to the same model" })]
    DuplicateFallback {
        /// The model whose fallbacks they are.
        model: String,
        /// The later fallback.
        target: String,
        /// The earlier one.
        first: String,
    },
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

impl RoutesError {
    /// The alias or fallback key the error is about, for locating it in a file.
    pub fn key(&self) -> &str {
        match self {
            RoutesError::ChainTooLong { alias, .. }
            | RoutesError::Cycle { alias, .. }
            | RoutesError::UnknownTarget { alias, .. }
            | RoutesError::AliasHidesModel { alias } => alias,
            RoutesError::UnknownFallbackKey { model, .. }
            | RoutesError::UnknownFallback { model, .. }
            | RoutesError::EmptyFallbacks { model }
            | RoutesError::SelfFallback { model, .. }
            | RoutesError::DuplicateFallback { model, .. } => model,
        }
    }

    /// Whether the key is in `[routing.fallbacks]` (else `[routing.aliases]`).
    pub fn is_fallback(&self) -> bool {
        matches!(
            self,
            RoutesError::UnknownFallbackKey { .. }
                | RoutesError::UnknownFallback { .. }
                | RoutesError::EmptyFallbacks { .. }
                | RoutesError::SelfFallback { .. }
                | RoutesError::DuplicateFallback { .. }
        )
    }
}

/// The closest of `candidates` to `name` (edit distance at most a third of its length,
/// or a case-insensitive match), for "did you mean" hints.
pub fn closest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| {
            let distance = if c.eq_ignore_ascii_case(name) {
                0
            } else {
                strsim::levenshtein(name, c)
            };
            (distance, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// Every requested name the router knows, resolved to its [`RoutePlan`].
///
/// ```
/// use std::collections::BTreeMap;
/// use nexus_core::{policy::PolicySet, routes::ModelRoutes, BackendSpec, Fleet, ModelSpec};
///
/// let fleet = Fleet::new(vec![BackendSpec::new("gpu", "http://127.0.0.1:1")
///     .with_model(ModelSpec::new("llama3:70b"))
///     .with_model(ModelSpec::new("mistral:7b"))])?;
/// let aliases = BTreeMap::from([("gpt-4".to_owned(), "llama3:70b".to_owned())]);
/// let fallbacks = BTreeMap::from([("llama3:70b".to_owned(), vec!["mistral:7b".to_owned()])]);
/// let routes = ModelRoutes::new(&fleet, &PolicySet::default(), &aliases, &fallbacks)?;
/// let plan = routes.plan("gpt-4").unwrap();
/// assert_eq!(plan.alias_chain().collect::<Vec<_>>(), ["gpt-4", "llama3:70b"]);
/// assert_eq!(plan.attempts().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ModelRoutes {
    /// Every plan, addressed by index so that a decision can refer to its plan without
    /// borrowing the routes (an owned decision outlives any borrow).
    plans: Vec<RoutePlan>,
    index: HashMap<Box<str>, u32>,
}

impl ModelRoutes {
    /// Resolves every alias and every served model name, with their fallbacks.
    pub fn new(
        fleet: &Fleet,
        policies: &PolicySet,
        aliases: &BTreeMap<String, String>,
        fallbacks: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, RoutesError> {
        let served = |name: &str| fleet.model_id(name);
        let model_names = || fleet.models().iter().map(|m| m.name());

        for alias in aliases.keys() {
            if served(alias).is_some() {
                return Err(RoutesError::AliasHidesModel {
                    alias: alias.clone(),
                });
            }
        }
        // Resolve every alias's chain once; errors are reported for the first alias in
        // name order, so the same config always gives the same message.
        let mut chains: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for alias in aliases.keys() {
            let mut chain: Vec<&str> = vec![alias];
            let mut current = alias.as_str();
            while let Some(next) = aliases.get(current) {
                if let Some(start) = chain.iter().position(|n| *n == next) {
                    let mut cycle: Vec<String> =
                        chain[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push(next.clone());
                    return Err(RoutesError::Cycle {
                        alias: alias.clone(),
                        cycle,
                    });
                }
                chain.push(next);
                if chain.len() > MAX_ALIAS_NAMES {
                    return Err(RoutesError::ChainTooLong {
                        alias: alias.clone(),
                        chain: chain.iter().map(|s| (*s).to_owned()).collect(),
                    });
                }
                current = next;
            }
            if served(current).is_none() {
                return Err(RoutesError::UnknownTarget {
                    alias: alias.clone(),
                    target: current.to_owned(),
                    suggestion: closest(current, model_names()).map(str::to_owned),
                });
            }
            chains.insert(alias, chain);
        }

        let resolve = |name: &str| -> Option<Vec<&str>> {
            match chains.get(name) {
                Some(chain) => Some(chain.clone()),
                None => fleet.model_id(name).map(|m| vec![fleet.model(m).name()]),
            }
        };

        let mut resolved_fallbacks: HashMap<ModelId, Vec<Vec<&str>>> = HashMap::default();
        for (model, targets) in fallbacks {
            let Some(model_id) = served(model) else {
                let suggestion = chains
                    .get(model.as_str())
                    .and_then(|c| c.last().map(|s| (*s).to_owned()))
                    .or_else(|| closest(model, model_names()).map(str::to_owned));
                return Err(RoutesError::UnknownFallbackKey {
                    model: model.clone(),
                    suggestion,
                });
            };
            if targets.is_empty() {
                return Err(RoutesError::EmptyFallbacks {
                    model: model.clone(),
                });
            }
            let mut list = Vec::with_capacity(targets.len());
            let mut seen: Vec<(ModelId, &str)> = Vec::with_capacity(targets.len());
            for target in targets {
                let chain = resolve(target).ok_or_else(|| RoutesError::UnknownFallback {
                    model: model.clone(),
                    target: target.clone(),
                    suggestion: closest(target, model_names()).map(str::to_owned),
                })?;
                // A fallback the plan would skip is a mistake in the config: say so.
                if let Some(resolved) = chain.last().and_then(|last| served(last)) {
                    if resolved == model_id {
                        return Err(RoutesError::SelfFallback {
                            model: model.clone(),
                            target: target.clone(),
                        });
                    }
                    if let Some((_, first)) = seen.iter().find(|(m, _)| *m == resolved) {
                        return Err(RoutesError::DuplicateFallback {
                            model: model.clone(),
                            target: target.clone(),
                            first: (*first).to_owned(),
                        });
                    }
                    seen.push((resolved, target));
                }
                list.push(chain);
            }
            resolved_fallbacks.insert(model_id, list);
        }

        let constraints_of = |chain: &[&str], start: Constraints| {
            let mut c = start;
            for name in chain {
                policies.tighten_for(&mut c, name);
            }
            c
        };

        let mut plans = Vec::new();
        let mut index: HashMap<Box<str>, u32> = HashMap::default();
        let names = aliases.keys().map(String::as_str).chain(model_names());
        for name in names {
            let chain = resolve(name).unwrap_or_else(|| vec![name]);
            let Some(resolved) = chain.last().and_then(|last| served(last)) else {
                continue;
            };
            let primary = constraints_of(&chain, Constraints::NONE);
            let mut attempts = vec![Attempt {
                model: resolved,
                constraints: primary,
            }];
            let mut running = primary;
            for fallback_chain in resolved_fallbacks.get(&resolved).into_iter().flatten() {
                running = constraints_of(fallback_chain, running);
                if !running.fallback_allowed {
                    break;
                }
                let Some(model) = fallback_chain.last().and_then(|n| served(n)) else {
                    continue;
                };
                if attempts.iter().any(|a| a.model == model) {
                    continue;
                }
                attempts.push(Attempt {
                    model,
                    constraints: running,
                });
            }
            index.insert(name.into(), plans.len() as u32);
            plans.push(RoutePlan {
                chain: chain.iter().map(|s| (*s).into()).collect(),
                attempts: attempts.into(),
            });
        }
        Ok(Self { plans, index })
    }

    /// The plan for a requested name, or `None` when no backend serves it and it is no
    /// alias.
    #[inline]
    pub fn plan(&self, requested: &str) -> Option<&RoutePlan> {
        self.plan_index(requested).map(|i| self.plan_at(i))
    }

    /// The index of the plan for a requested name.
    #[inline]
    pub(crate) fn plan_index(&self, requested: &str) -> Option<u32> {
        self.index.get(requested).copied()
    }

    /// The plan at `index` (from [`plan_index`](Self::plan_index)).
    #[inline]
    pub(crate) fn plan_at(&self, index: u32) -> &RoutePlan {
        &self.plans[index as usize]
    }

    /// Every name requests may use.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|k| &**k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendSpec, ModelSpec, Privacy, TrafficPolicy};

    fn fleet() -> Fleet {
        Fleet::new(vec![BackendSpec::new("b", "u")
            .with_model(ModelSpec::new("llama3:70b"))
            .with_model(ModelSpec::new("qwen2:72b"))
            .with_model(ModelSpec::new("mistral:7b"))])
        .unwrap()
    }

    fn aliases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn three_names_resolve_four_fail() {
        let f = fleet();
        let ok = aliases(&[("a", "b"), ("b", "llama3:70b")]);
        let routes = ModelRoutes::new(&f, &PolicySet::default(), &ok, &BTreeMap::new()).unwrap();
        assert_eq!(
            routes.plan("a").unwrap().alias_chain().collect::<Vec<_>>(),
            ["a", "b", "llama3:70b"]
        );
        let long = aliases(&[("a", "b"), ("b", "c"), ("c", "llama3:70b")]);
        let err = ModelRoutes::new(&f, &PolicySet::default(), &long, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, RoutesError::ChainTooLong { .. }), "{err}");
        assert_eq!(err.key(), "a");
    }

    #[test]
    fn cycles_fail() {
        let err = ModelRoutes::new(
            &fleet(),
            &PolicySet::default(),
            &aliases(&[("a", "b"), ("b", "a")]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "aliases form a cycle: a -> b -> a; make one of them name a model"
        );
    }

    #[test]
    fn typos_get_suggestions() {
        let err = ModelRoutes::new(
            &fleet(),
            &PolicySet::default(),
            &aliases(&[("gpt-4", "llama3:7b")]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("did you mean 'llama3:70b'"),
            "{err}"
        );
    }

    #[test]
    fn fallbacks_never_loosen_and_stop_when_forbidden() {
        let f = fleet();
        let policies = PolicySet::new(vec![
            TrafficPolicy::new("llama3*").privacy(Privacy::Restricted),
            TrafficPolicy::new("mistral*")
                .min_tier(2)
                .fallback_allowed(false),
        ])
        .unwrap();
        let fallbacks = BTreeMap::from([(
            "llama3:70b".to_owned(),
            vec!["qwen2:72b".to_owned(), "mistral:7b".to_owned()],
        )]);
        let routes = ModelRoutes::new(&f, &policies, &BTreeMap::new(), &fallbacks).unwrap();
        let plan = routes.plan("llama3:70b").unwrap();
        assert_eq!(
            plan.attempts().len(),
            2,
            "mistral forbids fallbacks: {plan:?}"
        );
        assert_eq!(plan.attempts()[1].constraints.privacy, Privacy::Restricted);
    }

    #[test]
    fn fallbacks_that_would_be_skipped_are_errors() {
        let f = fleet();
        let routes = |aliases: &[(&str, &str)], list: &[&str]| {
            let fallbacks = BTreeMap::from([(
                "llama3:70b".to_owned(),
                list.iter().map(|s| (*s).to_owned()).collect(),
            )]);
            ModelRoutes::new(
                &f,
                &PolicySet::default(),
                &super::tests::aliases(aliases),
                &fallbacks,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            routes(&[], &[]),
            Err("the fallbacks of 'llama3:70b' are an empty list; list at least one model, or remove the line".to_owned())
        );
        assert_eq!(
            routes(&[], &["llama3:70b"]),
            Err(
                "'llama3:70b' lists 'llama3:70b' as a fallback, which is itself; remove it"
                    .to_owned()
            )
        );
        assert_eq!(
            routes(&[("big", "llama3:70b")], &["big"]),
            Err("'llama3:70b' lists 'big' as a fallback, which resolves to 'llama3:70b' itself; remove it".to_owned())
        );
        assert_eq!(
            routes(&[], &["qwen2:72b", "mistral:7b", "qwen2:72b"]),
            Err("fallback 'qwen2:72b' of 'llama3:70b' is listed twice, the same as 'qwen2:72b' before it, so it is never tried; list each fallback once".to_owned())
        );
        assert!(routes(&[("q", "qwen2:72b")], &["qwen2:72b", "q"])
            .unwrap_err()
            .contains("resolves to the same model as 'qwen2:72b'"));
        assert_eq!(routes(&[], &["qwen2:72b", "mistral:7b"]), Ok(()));
    }

    #[test]
    fn closest_finds_near_names_only() {
        let names = ["llama3:70b", "mistral:7b"];
        assert_eq!(closest("llama3:7b", names), Some("llama3:70b"));
        assert_eq!(closest("gpt-4", names), None);
    }
}
