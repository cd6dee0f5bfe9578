//! The `analyzer` stage: the per-decision part of request analysis.
//!
//! Name resolution, fallbacks and policy matching are precomputed by
//! [`ModelRoutes`](crate::ModelRoutes) when the pipeline is built; what is left for each
//! decision is health: backends whose health rules them out are excluded.

use crate::{ExplainContext, Explanation, Reason, ReconcileError, Reconciler, RoutingIntent};

/// Reason code of [`RequestAnalyzer`]: the backend is unhealthy.
pub const UNHEALTHY: u16 = 1;

/// The `analyzer` stage: admits only backends whose health allows traffic.
///
/// Name resolution, fallbacks and policy matching are done by [`ModelRoutes`](crate::ModelRoutes) when the
/// pipeline is built; this stage is the per-decision part of request analysis.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestAnalyzer;

impl Reconciler for RequestAnalyzer {
    fn name(&self) -> &'static str {
        "analyzer"
    }

    fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
        // The fleet keeps a bitset of unhealthy backends: a word at a time.
        let fleet = intent.fleet();
        intent.exclude_words(|word| fleet.unhealthy_word(word), Reason::new(UNHEALTHY));
        Ok(())
    }

    fn explain(&self, reason: &Reason, _ctx: &ExplainContext<'_>) -> Explanation {
        match reason.code() {
            UNHEALTHY => Explanation::new(
                "backend is unhealthy",
                "check the backend's logs; it is admitted again once its health check passes",
            ),
            code => Explanation::new(
                format!("excluded by the analyzer (code {code})"),
                "see the analyzer's documentation",
            ),
        }
    }
}
