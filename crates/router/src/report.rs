//! [`DecisionReport`]: a decision rendered for people (text) and machines (JSON).
//!
//! The JSON keys are a contract (see docs/decisions.md): `decision`, `requested_model`, `model`,
//! `backend`, `fallback_used`, `estimated_wait_ms`, `fallback_backend`, `reason`,
//! `budget_status`, `cost_estimate`, `warnings`, `rejections`. Extra keys
//! (`alias_chain`, `candidates`, `suggested_fix`) only add detail.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use nexus_core::{
    pipeline::{Decision, PipelineRef, Significant},
    RoutingDecision,
};
use serde::Serialize;

/// The estimated cost part of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    /// Input tokens counted.
    pub input_tokens: u32,
    /// Output tokens expected.
    pub estimated_output_tokens: u32,
    /// USD on the chosen backend; `null` for a Reject.
    pub cost_usd: Option<f64>,
    /// The request's size class: `small`, `medium`, `large` or `huge`.
    pub token_tier: String,
}

/// One excluded backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionReport {
    /// The backend's id.
    pub backend: String,
    /// The stage that excluded it.
    pub reconciler: String,
    /// Why.
    pub reason: String,
    /// What would fix it.
    pub suggested_action: String,
    /// The model it was excluded for.
    pub model: String,
}

/// One candidate still in the running at the end, with its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateReport {
    /// The backend's id.
    pub backend: String,
    /// Its zone (`cloud` when not configured).
    pub zone: String,
    /// Its scheduler score, if one was computed.
    pub score: Option<f64>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Its concurrency limit.
    pub max_concurrency: u32,
    /// Its health.
    pub status: String,
}

/// The single most useful change for a rejected request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixReport {
    /// The stage to satisfy.
    pub reconciler: String,
    /// What to do.
    pub suggested_action: String,
    /// The backends it would admit.
    pub admits: Vec<String>,
}

/// A decision, rendered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionReport {
    /// `route`, `queue` or `reject`.
    pub decision: String,
    /// The name the client asked for.
    pub requested_model: String,
    /// The model that will serve, after aliases and fallbacks.
    pub model: Option<String>,
    /// The chosen backend (route only).
    pub backend: Option<String>,
    /// Whether a fallback model serves.
    pub fallback_used: bool,
    /// Estimated wait (queue only).
    pub estimated_wait_ms: Option<u64>,
    /// A ready backend to use instead of waiting (queue only).
    pub fallback_backend: Option<String>,
    /// Why.
    pub reason: String,
    /// `normal`, `soft_limit` or `hard_limit`.
    pub budget_status: String,
    /// The estimated cost.
    pub cost_estimate: CostReport,
    /// Notes that do not exclude anything.
    pub warnings: Vec<String>,
    /// Every excluded backend.
    pub rejections: Vec<RejectionReport>,
    /// The names from the requested one to the resolved model.
    pub alias_chain: Vec<String>,
    /// The backend waited for (queue only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_backend: Option<String>,
    /// The model `fallback_backend` serves (queue only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Candidates left at the end, best first.
    pub candidates: Vec<CandidateReport>,
    /// For a Reject: the change that would admit the most backends.
    pub suggested_fix: Option<FixReport>,
}

impl DecisionReport {
    /// Renders `decision` (made for `requested_model`).
    pub fn new<P: PipelineRef>(requested_model: &str, decision: &Decision<P>) -> Self {
        let fleet = decision.pipeline().fleet();
        let name = |b: nexus_core::fleet::BackendId| fleet.backend(b).name().to_owned();
        let requirements = decision.requirements();
        let cost = decision.cost_estimate();
        let mut report = DecisionReport {
            decision: decision.kind().as_str().to_owned(),
            requested_model: requested_model.to_owned(),
            model: decision.model().map(str::to_owned),
            backend: None,
            fallback_used: decision.fallback_used(),
            estimated_wait_ms: None,
            fallback_backend: None,
            reason: String::new(),
            budget_status: decision.budget_status().as_str().to_owned(),
            cost_estimate: CostReport {
                input_tokens: requirements.input_tokens,
                estimated_output_tokens: requirements.estimated_output_tokens,
                cost_usd: cost.map(|c| c.cost_usd),
                token_tier: nexus_core::pipeline::TokenTier::of(requirements.total_tokens())
                    .as_str()
                    .to_owned(),
            },
            warnings: decision.warnings(),
            rejections: decision
                .rejections()
                .into_iter()
                .map(|r| RejectionReport {
                    backend: r.backend.to_string(),
                    reconciler: r.reconciler.to_owned(),
                    reason: r.reason.into_owned(),
                    suggested_action: r.suggested_action.into_owned(),
                    model: r.model.to_string(),
                })
                .collect(),
            alias_chain: decision
                .alias_chain()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            queued_backend: None,
            fallback_model: None,
            candidates: decision
                .scored_candidates()
                .into_iter()
                .map(|(b, score)| CandidateReport {
                    backend: b.name().to_owned(),
                    zone: b.zone().as_str().to_owned(),
                    score,
                    in_flight: b.live().in_flight(),
                    max_concurrency: b.max_concurrency(),
                    status: b.live().status().as_str().to_owned(),
                })
                .collect(),
            suggested_fix: None,
        };
        match decision.kind() {
            RoutingDecision::Route {
                backend, reason, ..
            } => {
                report.backend = Some(name(*backend));
                report.reason = reason.to_string();
            }
            RoutingDecision::Queue {
                backend,
                reason,
                estimated_wait_ms,
                fallback_backend,
                fallback_model,
                ..
            } => {
                report.fallback_model = fallback_model.map(|m| fleet.model(m).name().to_owned());
                report.queued_backend = Some(name(*backend));
                report.estimated_wait_ms = Some(*estimated_wait_ms);
                report.fallback_backend = fallback_backend.map(name);
                report.reason = format!("{reason}: '{}'", name(*backend));
            }
            RoutingDecision::Reject { reason, fix, .. } => {
                report.reason = reason.clone();
                report.suggested_fix = fix.as_ref().map(|f| FixReport {
                    reconciler: f.reconciler.to_owned(),
                    suggested_action: f.suggested_action.clone(),
                    admits: f.admits.clone(),
                });
            }
        }
        report
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as a readable explanation, with control characters escaped.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let via = if self.alias_chain.len() > 1 {
            format!(" via alias {}", self.alias_chain.join(" -> "))
        } else {
            String::new()
        };
        let model = self.model.as_deref().unwrap_or("-");
        let fallback = if self.fallback_used {
            ", a fallback"
        } else {
            ""
        };
        let _ = match self.decision.as_str() {
            "route" => writeln!(
                out,
                "ROUTE  {} -> {}  (model {model}{fallback}{via})",
                self.requested_model,
                self.backend.as_deref().unwrap_or("-"),
            ),
            "queue" => writeln!(
                out,
                "QUEUE  {} -> wait about {} ms for {}  (model {model}{fallback}{via})",
                self.requested_model,
                self.estimated_wait_ms.unwrap_or(0),
                self.queued_backend.as_deref().unwrap_or("-"),
            ),
            _ => writeln!(out, "REJECT {}", self.requested_model),
        };
        let _ = writeln!(out, "  reason: {}", self.reason);
        if let Some(fallback) = &self.fallback_backend {
            let model = match &self.fallback_model {
                Some(m) if self.model.as_ref() != Some(m) => format!(" with {m}"),
                _ => String::new(),
            };
            let _ = writeln!(out, "  instead of waiting: {fallback} is ready{model}");
        }
        let cost = match self.cost_estimate.cost_usd {
            Some(usd) => format!("${}", Significant(usd)),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "  budget: {}   tokens: {} in + {} out   estimated cost: {cost}",
            self.budget_status,
            self.cost_estimate.input_tokens,
            self.cost_estimate.estimated_output_tokens,
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
        if !self.candidates.is_empty() {
            let _ = writeln!(out, "\ncandidates (best first):");
            let width = self
                .candidates
                .iter()
                .map(|c| c.backend.len())
                .max()
                .unwrap_or(7)
                .max(7);
            let _ = writeln!(
                out,
                "  {:<width$}  {:<7}  {:<9}  {:>9}  {:>10}",
                "BACKEND", "ZONE", "STATUS", "IN FLIGHT", "SCORE"
            );
            for c in &self.candidates {
                let score = c
                    .score
                    .map_or_else(|| "-".to_owned(), |s| Significant(s).to_string());
                let load = format!("{}/{}", c.in_flight, c.max_concurrency);
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:<7}  {:<9}  {:>9}  {:>10}",
                    c.backend, c.zone, c.status, load, score
                );
            }
        }
        if !self.rejections.is_empty() {
            let mut by_stage: BTreeMap<&str, Vec<&RejectionReport>> = BTreeMap::new();
            for r in &self.rejections {
                by_stage.entry(r.reconciler.as_str()).or_default().push(r);
            }
            let models: std::collections::BTreeSet<&str> =
                self.rejections.iter().map(|r| r.model.as_str()).collect();
            let single_model = models.len() == 1 && self.model.is_none();
            let _ = writeln!(out, "\nexcluded ({}):", self.rejections.len());
            for (stage, list) in by_stage {
                let _ = writeln!(out, "  by {stage} ({}):", list.len());
                for r in list {
                    let model = if single_model || self.model.as_deref() == Some(r.model.as_str()) {
                        String::new()
                    } else {
                        format!(" [{}]", r.model)
                    };
                    let _ = writeln!(out, "    {}{model}: {}", r.backend, r.reason);
                    let _ = writeln!(out, "      fix: {}", r.suggested_action);
                }
            }
        }
        if let Some(fix) = &self.suggested_fix {
            let admits = if fix.admits.is_empty() {
                String::new()
            } else {
                format!(" (would admit {})", fix.admits.join(", "))
            };
            let _ = writeln!(
                out,
                "\nsuggested fix [{}]: {}{admits}",
                fix.reconciler, fix.suggested_action
            );
        }
        // The requested name comes from a client: never replay its escapes on a terminal.
        match crate::wording::printable(&out) {
            std::borrow::Cow::Borrowed(_) => out,
            std::borrow::Cow::Owned(escaped) => escaped,
        }
    }
}
