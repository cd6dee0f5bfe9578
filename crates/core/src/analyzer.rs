//! The `analyzer` stage: the per-decision part of request analysis.
//!
//! Name resolution, fallbacks and policy matching are precomputed by
//! [`ModelRoutes`](crate::routes::ModelRoutes) when the pipeline is built; what is left for each
//! decision is health: backends whose health rules them out are excluded.

use crate::{
    ExplainContext, Explanation, Reason, ReconcileError, Reconciler, RoutingIntent, StageReason,
};

/// Why [`RequestAnalyzer`] excluded a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalyzerReason {
    /// The backend is unhealthy (its status or health check rules it out).
    Unhealthy,
}

/// Compact code of [`AnalyzerReason::Unhealthy`].
const UNHEALTHY: u16 = 1;

impl From<AnalyzerReason> for Reason {
    #[inline]
    fn from(reason: AnalyzerReason) -> Reason {
        match reason {
            AnalyzerReason::Unhealthy => Reason::new(UNHEALTHY),
        }
    }
}

impl StageReason for AnalyzerReason {
    fn from_reason(reason: Reason) -> Option<Self> {
        (reason.code() == UNHEALTHY).then_some(AnalyzerReason::Unhealthy)
    }
}

/// The `analyzer` stage: admits only backends whose health allows traffic.
///
/// Name resolution, fallbacks and policy matching are done by [`ModelRoutes`](crate::routes::ModelRoutes) when the
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
        intent.exclude_words(
            |word| fleet.unhealthy_word(word),
            AnalyzerReason::Unhealthy.into(),
        );
        Ok(())
    }

    fn explain(&self, reason: &Reason, _ctx: &ExplainContext<'_>) -> Explanation {
        match AnalyzerReason::from_reason(*reason) {
            Some(AnalyzerReason::Unhealthy) => Explanation::new(
                "backend is unhealthy",
                "check the backend's logs; it is admitted again once its health check passes",
            ),
            None => Explanation::new(
                format!("excluded by the analyzer (code {})", reason.code()),
                "see the analyzer's documentation",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_convert_to_the_compact_form_and_back() {
        let compact: Reason = AnalyzerReason::Unhealthy.into();
        assert_eq!(compact.code(), UNHEALTHY);
        assert_eq!(
            AnalyzerReason::from_reason(compact),
            Some(AnalyzerReason::Unhealthy)
        );
        assert_eq!(AnalyzerReason::from_reason(Reason::new(7)), None);
    }
}
