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
    BackendSet, BuildContext, BuildError, ExplainContext, Explanation, Fleet, Privacy, Reason,
    ReconcileError, Reconciler, RoutingIntent, Zone,
};
use serde::Deserialize;

/// Reason code: the backend's zone is not allowed under `restricted`.
/// `values = [zone, policy index or -1, 0]`, where zone is 0 for "not set" and 1 for cloud.
pub const ZONE_NOT_ALLOWED: u16 = 1;

const ZONE_MISSING: f64 = 0.0;
const ZONE_CLOUD: f64 = 1.0;

/// The `[routing.privacy]` settings: none yet; the table must be empty if present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {}

/// The `privacy` stage; see the crate docs.
///
/// ```
/// use std::sync::Arc;
/// use nexus_core::*;
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
        let policy = Reason::policy_value(constraints.privacy_policy);
        intent.exclude_set(
            &self.cloud,
            Reason::with(ZONE_NOT_ALLOWED, [ZONE_CLOUD, policy, 0.0]),
        );
        intent.exclude_set(
            &self.unzoned,
            Reason::with(ZONE_NOT_ALLOWED, [ZONE_MISSING, policy, 0.0]),
        );
        Ok(())
    }

    fn explain(&self, reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
        let [zone, policy, _] = reason.values();
        let policy_index = Reason::policy_index(policy);
        let policy = ctx.policy_label(policy_index);
        let zone = if zone == ZONE_MISSING {
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
        let suggested = if reason.values()[0] == ZONE_MISSING {
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
