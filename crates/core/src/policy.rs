//! Traffic policies: which constraints apply to which model names.
//!
//! A [`PolicySet`] compiles every `model_pattern` glob once. Matching is first match
//! wins, in declaration order. A request is matched against every name it passes
//! through (requested model, alias steps, resolved model, fallbacks); the
//! [`Constraints`] of those matches combine by taking the strictest, so a name further
//! down the chain can never loosen what the requested name demanded.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// Whether a request's data may leave the operator's infrastructure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Any zone may serve it (the default).
    #[default]
    Unrestricted,
    /// Only `local` and `private` backends may serve it.
    Restricted,
}

impl Privacy {
    /// The value as written in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Privacy::Unrestricted => "unrestricted",
            Privacy::Restricted => "restricted",
        }
    }
}

const fn default_true() -> bool {
    true
}

/// One `[[routing.policies]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Glob over model names, e.g. `gpt-4-*`.
    pub model_pattern: String,
    /// Privacy requirement; default unrestricted.
    #[serde(default)]
    pub privacy: Privacy,
    /// Lowest capability tier allowed to serve.
    #[serde(default)]
    pub min_tier: Option<u8>,
    /// Highest estimated cost in USD for one request.
    #[serde(default)]
    pub max_cost_per_request: Option<f64>,
    /// Whether fallbacks (and flexible tier downgrades) are allowed; default true.
    #[serde(default = "default_true")]
    pub fallback_allowed: bool,
}

impl TrafficPolicy {
    /// A policy for `pattern` that constrains nothing yet.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            model_pattern: pattern.into(),
            privacy: Privacy::Unrestricted,
            min_tier: None,
            max_cost_per_request: None,
            fallback_allowed: true,
        }
    }

    /// Sets the privacy requirement.
    pub fn privacy(mut self, privacy: Privacy) -> Self {
        self.privacy = privacy;
        self
    }

    /// Sets the minimum tier.
    pub fn min_tier(mut self, tier: u8) -> Self {
        self.min_tier = Some(tier);
        self
    }

    /// Sets the per-request cost cap.
    pub fn max_cost_per_request(mut self, usd: f64) -> Self {
        self.max_cost_per_request = Some(usd);
        self
    }

    /// Sets whether fallbacks are allowed.
    pub fn fallback_allowed(mut self, allowed: bool) -> Self {
        self.fallback_allowed = allowed;
        self
    }
}

/// What is wrong with a policy; `index` is its position in `[[routing.policies]]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The pattern is not a valid glob.
    #[error("policy {index}: model_pattern '{pattern}' is not a valid glob: {message}; use * for any run of characters, ? for one, [abc] for a class")]
    InvalidGlob {
        /// The policy's index.
        index: usize,
        /// The pattern.
        pattern: String,
        /// What the glob parser said.
        message: String,
    },
    /// A negative, zero or non-finite cost cap.
    #[error("policy {index} ('{pattern}'): max_cost_per_request must be a positive number of USD, got {value}")]
    InvalidCost {
        /// The policy's index.
        index: usize,
        /// The pattern.
        pattern: String,
        /// The value given.
        value: f64,
    },
}

impl PolicyError {
    /// The index of the policy at fault.
    pub fn index(&self) -> usize {
        match self {
            PolicyError::InvalidGlob { index, .. } | PolicyError::InvalidCost { index, .. } => {
                *index
            }
        }
    }
}

/// A policy that can never match because an earlier one matches all its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// Index of the unreachable policy.
    pub policy: usize,
    /// Index of the earlier policy that shadows it.
    pub by: usize,
}

/// The combined constraints of every policy a request's names matched.
///
/// Each field remembers which policy set it, so that rejections can name the policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Constraints {
    /// Strictest privacy requirement.
    pub privacy: Privacy,
    /// The policy that demanded it (when restricted).
    pub privacy_policy: Option<usize>,
    /// Highest `min_tier` (0 when none).
    pub min_tier: u8,
    /// The policy that demanded it.
    pub min_tier_policy: Option<usize>,
    /// Lowest `max_cost_per_request`.
    pub max_cost_per_request: Option<f64>,
    /// The policy that demanded it.
    pub max_cost_policy: Option<usize>,
    /// Whether every matched policy allows fallbacks.
    pub fallback_allowed: bool,
    /// The first policy that forbade them.
    pub fallback_policy: Option<usize>,
}

impl Default for Constraints {
    fn default() -> Self {
        Self::NONE
    }
}

impl Constraints {
    /// No constraint at all.
    pub const NONE: Constraints = Constraints {
        privacy: Privacy::Unrestricted,
        privacy_policy: None,
        min_tier: 0,
        min_tier_policy: None,
        max_cost_per_request: None,
        max_cost_policy: None,
        fallback_allowed: true,
        fallback_policy: None,
    };

    /// Adds the demands of `policy` (at `index`), keeping the strictest of each.
    pub fn tighten(&mut self, index: usize, policy: &TrafficPolicy) {
        if policy.privacy > self.privacy {
            self.privacy = policy.privacy;
            self.privacy_policy = Some(index);
        }
        if let Some(tier) = policy.min_tier {
            if tier > self.min_tier {
                self.min_tier = tier;
                self.min_tier_policy = Some(index);
            }
        }
        if let Some(cap) = policy.max_cost_per_request {
            if self.max_cost_per_request.is_none_or(|c| cap < c) {
                self.max_cost_per_request = Some(cap);
                self.max_cost_policy = Some(index);
            }
        }
        if !policy.fallback_allowed && self.fallback_allowed {
            self.fallback_allowed = false;
            self.fallback_policy = Some(index);
        }
    }

    /// `self` tightened by every demand of `other` that is stricter, each keeping the
    /// policy index `other` gave it (none for demands that come from no policy, such as
    /// a tenant's overrides). Needs no [`PolicySet`]: for combining on the decision path.
    ///
    /// ```
    /// use nexus_core::policy::{Constraints, Privacy};
    /// let tenant = Constraints { privacy: Privacy::Restricted, min_tier: 2, ..Constraints::NONE };
    /// let policy = Constraints { min_tier: 3, max_cost_per_request: Some(0.5), ..Constraints::NONE };
    /// let both = policy.tightened_by(&tenant);
    /// assert_eq!((both.privacy, both.min_tier, both.max_cost_per_request), (Privacy::Restricted, 3, Some(0.5)));
    /// ```
    pub const fn tightened_by(mut self, other: &Constraints) -> Constraints {
        if other.privacy as u8 > self.privacy as u8 {
            self.privacy = other.privacy;
            self.privacy_policy = other.privacy_policy;
        }
        if other.min_tier > self.min_tier {
            self.min_tier = other.min_tier;
            self.min_tier_policy = other.min_tier_policy;
        }
        if let Some(cap) = other.max_cost_per_request {
            let tighter = match self.max_cost_per_request {
                Some(current) => cap < current,
                None => true,
            };
            if tighter {
                self.max_cost_per_request = Some(cap);
                self.max_cost_policy = other.max_cost_policy;
            }
        }
        if !other.fallback_allowed && self.fallback_allowed {
            self.fallback_allowed = false;
            self.fallback_policy = other.fallback_policy;
        }
        self
    }
}

/// Every traffic policy, compiled.
///
/// ```
/// use nexus_core::policy::{PolicySet, Privacy, TrafficPolicy};
///
/// let policies = PolicySet::new(vec![
///     TrafficPolicy::new("gpt-4-*").privacy(Privacy::Restricted).min_tier(3),
///     TrafficPolicy::new("*"),
/// ])?;
/// assert_eq!(policies.matching("gpt-4-turbo"), Some(0));
/// assert_eq!(policies.matching("llama3"), Some(1));
/// # Ok::<(), nexus_core::policy::PolicyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<TrafficPolicy>,
    globs: Vec<globset::GlobMatcher>,
    set: GlobSet,
}

impl Default for PolicySet {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            globs: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl PolicySet {
    /// Compiles the policies, in declaration order.
    pub fn new(policies: Vec<TrafficPolicy>) -> Result<Self, PolicyError> {
        let mut builder = GlobSetBuilder::new();
        let mut globs = Vec::with_capacity(policies.len());
        for (index, policy) in policies.iter().enumerate() {
            let glob = Glob::new(&policy.model_pattern).map_err(|e| PolicyError::InvalidGlob {
                index,
                pattern: policy.model_pattern.clone(),
                message: e.kind().to_string(),
            })?;
            if let Some(cost) = policy.max_cost_per_request {
                if !cost.is_finite() || cost <= 0.0 {
                    return Err(PolicyError::InvalidCost {
                        index,
                        pattern: policy.model_pattern.clone(),
                        value: cost,
                    });
                }
            }
            globs.push(glob.compile_matcher());
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| PolicyError::InvalidGlob {
            index: 0,
            pattern: String::new(),
            message: e.to_string(),
        })?;
        Ok(Self {
            policies,
            globs,
            set,
        })
    }

    /// The number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy at `index`.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn policy(&self, index: usize) -> &TrafficPolicy {
        &self.policies[index]
    }

    /// Every policy, in declaration order.
    pub fn policies(&self) -> &[TrafficPolicy] {
        &self.policies
    }

    /// The index of the first policy whose pattern matches `model`.
    ///
    /// Routers call this when a config is loaded, for every name they know; a decision
    /// reads the precomputed result.
    pub fn matching(&self, model: &str) -> Option<usize> {
        self.set.matches(model).into_iter().min()
    }

    /// `constraints` tightened by the policy matching `model`, if any.
    pub fn tighten_for(&self, constraints: &mut Constraints, model: &str) {
        if let Some(index) = self.matching(model) {
            constraints.tighten(index, &self.policies[index]);
        }
    }

    /// Policies that can never match because an earlier pattern matches every name they
    /// match. Detected cases: identical patterns, an earlier `*`, a later literal name an
    /// earlier glob matches, and an earlier `prefix*` before a later pattern whose literal
    /// start begins with that prefix.
    pub fn shadowed(&self) -> Vec<Shadowed> {
        let mut found = Vec::new();
        for (j, later) in self.policies.iter().enumerate() {
            let later_pattern = later.model_pattern.as_str();
            let later_prefix = literal_prefix(later_pattern);
            let later_is_literal = later_prefix.len() == later_pattern.len();
            let by = (0..j).find(|&i| {
                let earlier = self.policies[i].model_pattern.as_str();
                if earlier == later_pattern || earlier.chars().all(|c| c == '*') {
                    return true;
                }
                if later_is_literal && self.globs[i].is_match(later_pattern) {
                    return true;
                }
                match earlier.strip_suffix('*') {
                    Some(prefix) if literal_prefix(prefix).len() == prefix.len() => {
                        later_prefix.starts_with(prefix)
                    }
                    _ => false,
                }
            });
            if let Some(by) = by {
                found.push(Shadowed { policy: j, by });
            }
        }
        found
    }
}

/// The part of a glob before its first metacharacter.
fn literal_prefix(pattern: &str) -> &str {
    let end = pattern
        .find(['*', '?', '[', '{', '\\'])
        .unwrap_or(pattern.len());
    &pattern[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins() {
        let set = PolicySet::new(vec![
            TrafficPolicy::new("gpt-4*").min_tier(3),
            TrafficPolicy::new("gpt-*").min_tier(1),
        ])
        .unwrap();
        assert_eq!(set.matching("gpt-4o"), Some(0));
        assert_eq!(set.matching("gpt-3.5"), Some(1));
        assert_eq!(set.matching("llama"), None);
    }

    #[test]
    fn invalid_glob_names_its_index() {
        let err = PolicySet::new(vec![TrafficPolicy::new("ok"), TrafficPolicy::new("gpt-[4")])
            .unwrap_err();
        assert_eq!(err.index(), 1);
        assert!(
            err.to_string()
                .starts_with("policy 1: model_pattern 'gpt-[4'"),
            "{err}"
        );
    }

    #[test]
    fn constraints_keep_the_strictest() {
        let mut c = Constraints::NONE;
        c.tighten(
            0,
            &TrafficPolicy::new("a")
                .min_tier(2)
                .max_cost_per_request(1.0),
        );
        c.tighten(
            1,
            &TrafficPolicy::new("b")
                .privacy(Privacy::Restricted)
                .min_tier(1)
                .max_cost_per_request(0.5)
                .fallback_allowed(false),
        );
        c.tighten(
            2,
            &TrafficPolicy::new("c")
                .min_tier(3)
                .max_cost_per_request(2.0),
        );
        assert_eq!(c.privacy, Privacy::Restricted);
        assert_eq!((c.min_tier, c.min_tier_policy), (3, Some(2)));
        assert_eq!(
            (c.max_cost_per_request, c.max_cost_policy),
            (Some(0.5), Some(1))
        );
        assert_eq!((c.fallback_allowed, c.fallback_policy), (false, Some(1)));
    }

    #[test]
    fn shadowed_policies_are_found() {
        let set = PolicySet::new(vec![
            TrafficPolicy::new("gpt-*"),
            TrafficPolicy::new("gpt-4-*"),
            TrafficPolicy::new("claude-3"),
            TrafficPolicy::new("claude-*"),
            TrafficPolicy::new("claude-3"),
            TrafficPolicy::new("*"),
            TrafficPolicy::new("mistral"),
        ])
        .unwrap();
        assert_eq!(
            set.shadowed(),
            vec![
                Shadowed { policy: 1, by: 0 },
                Shadowed { policy: 4, by: 2 },
                Shadowed { policy: 6, by: 5 },
            ]
        );
    }
}
