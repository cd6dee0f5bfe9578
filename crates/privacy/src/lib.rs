//! # nexus-privacy
//!
//! The `privacy` stage. When the constraints combined over every name a request passes
//! through say `restricted`, every candidate whose zone is `cloud`, or not set, is
//! excluded: only `local` and `private` backends may see the data. The rejection names
//! the zone, the policy (pattern and index) that demanded it and the fix.
//!
//! Because constraints are combined over aliases and fallbacks by taking the strictest,
//! a restricted request is never served in the cloud because its alias or its fallback
//! matched a looser policy; and because a Queue's `fallback_backend` is taken from the
//! candidates the stages left, it is never offered a cloud backend either.
//!
//! The cloud backends are precomputed as bitsets when the stage is built, so the stage
//! costs a few word operations per decision.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use nexus_core::{
    fleet::BackendSet,
    policy::Privacy,
    registry::{BuildContext, BuildError},
    stage::{ExplainContext, Explanation, Reason, ReconcileError, StageReason},
    Fleet, Reconciler, RoutingIntent, Zone,
};
use serde::Deserialize;

/// Why the privacy stage excluded a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivacyReason {
    /// The backend's zone is not allowed under `restricted` (local or private only).
    ZoneNotAllowed {
        /// The backend has no zone set (treated as cloud) rather than zone cloud.
        zone_missing: bool,
        /// The traffic policy that asked for `restricted` (its index), or `None` when
        /// the request itself asked.
        policy: Option<usize>,
    },
}

/// Compact code of [`PrivacyReason::ZoneNotAllowed`]: `values = [zone, policy index or
/// -1, 0]`, zone 0 for "not set" and 1 for cloud.
const ZONE_NOT_ALLOWED: u16 = 1;

const ZONE_MISSING: f64 = 0.0;
const ZONE_CLOUD: f64 = 1.0;

impl From<PrivacyReason> for Reason {
    #[inline]
    fn from(reason: PrivacyReason) -> Reason {
        match reason {
            PrivacyReason::ZoneNotAllowed {
                zone_missing,
                policy,
            } => Reason::with(
                ZONE_NOT_ALLOWED,
                [
                    if zone_missing {
                        ZONE_MISSING
                    } else {
                        ZONE_CLOUD
                    },
                    Reason::policy_value(policy),
                    0.0,
                ],
            ),
        }
    }
}

impl StageReason for PrivacyReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        let [zone, policy, _] = reason.values();
        (reason.code() == ZONE_NOT_ALLOWED).then_some(PrivacyReason::ZoneNotAllowed {
            zone_missing: zone == ZONE_MISSING,
            policy: Reason::policy_index(policy),
        })
    }
}

/// The `[routing.privacy]` settings: none yet; the table must be empty if present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {}

/// The `privacy` stage; see the crate docs.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::policy::{PolicySet, Privacy, TrafficPolicy};
/// use nexus_core::{BackendSpec, Fleet, ModelSpec, Pipeline, Request, Zone};
/// use nexus_privacy::PrivacyReconciler;
///
/// let fleet = Arc::new(Fleet::new(vec![
///     BackendSpec::new("gpu", "http://127.0.0.1:1").with_zone(Zone::Local).with_model(ModelSpec::new("m")),
///     BackendSpec::new("api", "https://api.example.com").with_zone(Zone::Cloud).with_model(ModelSpec::new("m")),
/// ])?);
/// let policies = Arc::new(PolicySet::new(vec![TrafficPolicy::new("m").privacy(Privacy::Restricted)])?);
/// let pipeline = Pipeline::builder(fleet.clone())
///     .policies(policies)
///     .stage(PrivacyReconciler::new(&fleet))
///     .build()?;
/// let decision = pipeline.decide(&Request::new("m"));
/// assert_eq!(decision.backend().unwrap().name(), "gpu");
/// assert_eq!(decision.rejections()[0].reason, "zone cloud; policy 'm' (#0) requires restricted (local or private backends only)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PrivacyReconciler {
    /// Backends configured with zone = "cloud".
    cloud: BackendSet,
    /// Backends with no zone, which count as cloud.
    unzoned: BackendSet,
}

impl PrivacyReconciler {
    /// The stage for `fleet`.
    pub fn new(fleet: &Fleet) -> Self {
        let mut cloud = BackendSet::with_capacity(fleet.len());
        let mut unzoned = BackendSet::with_capacity(fleet.len());
        for backend in fleet.backends() {
            match backend.configured_zone() {
                Some(Zone::Cloud) => cloud.insert(backend.id()),
                None => unzoned.insert(backend.id()),
                Some(Zone::Local | Zone::Private) => {}
            }
        }
        Self { cloud, unzoned }
    }

    /// Builds the stage from `[routing.privacy]`; the factory registered as `"privacy"`.
    pub fn from_context(ctx: &BuildContext<'_>) -> Result<Box<dyn Reconciler>, BuildError> {
        let _: PrivacySettings = ctx.settings()?;
        Ok(Box::new(Self::new(ctx.fleet)))
    }
}

impl Reconciler for PrivacyReconciler {
    fn name(&self) -> &'static str {
        "privacy"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        let constraints = intent.constraints();
        if constraints.privacy != Privacy::Restricted {
            return Ok(());
        }
        let policy = constraints.privacy_policy;
        intent.exclude_set(
            &self.cloud,
            PrivacyReason::ZoneNotAllowed {
                zone_missing: false,
                policy,
            }
            .into(),
        );
        intent.exclude_set(
            &self.unzoned,
            PrivacyReason::ZoneNotAllowed {
                zone_missing: true,
                policy,
            }
            .into(),
        );
        Ok(())
    }

    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        let Some(PrivacyReason::ZoneNotAllowed {
            zone_missing,
            policy,
        }) = PrivacyReason::from_reason(*reason)
        else {
            return Explanation::new(
                format!("excluded by privacy (code {})", reason.code()),
                "see nexus-privacy's documentation",
            );
        };
        let policy = ctx.policy_label(policy);
        let zone = if zone_missing {
            "no zone set (treated as cloud)"
        } else {
            "zone cloud"
        };
        let model = ctx.fleet.model(ctx.model);
        let compliant_exists = model
            .offers()
            .iter()
            .any(|(b, _)| ctx.fleet.backend(*b).zone() != Zone::Cloud);
        let suggested = if compliant_exists {
            format!(
                "use one of the local or private backends that serve '{}', or relax {policy}",
                model.name()
            )
        } else {
            format!(
                "no privacy-compliant backend serves '{}': add a local or private backend for it, or relax {policy}",
                model.name()
            )
        };
        let suggested = if zone_missing {
            format!("{suggested}; if this backend runs on your own hardware, set its zone to \"local\" or \"private\"")
        } else {
            suggested
        };
        Explanation::new(
            format!("{zone}; {policy} requires restricted (local or private backends only)"),
            suggested,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        for zone_missing in [false, true] {
            for policy in [None, Some(0), Some(7)] {
                let typed = PrivacyReason::ZoneNotAllowed {
                    zone_missing,
                    policy,
                };
                let compact: Reason = typed.into();
                assert_eq!(compact.code(), ZONE_NOT_ALLOWED);
                assert_eq!(PrivacyReason::from_reason(compact), Some(typed));
            }
        }
        assert_eq!(PrivacyReason::from_reason(Reason::new(9)), None);
    }
}
