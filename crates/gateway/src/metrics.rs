//! Prometheus metrics: the design's names, recorded with the `metrics` macros where
//! things happen and exported in one place ([`render`]).
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder), so
//! every gateway in a process reports into the same registry; an embedding program
//! that installed its own recorder first keeps it, and `/metrics` then says so. Values
//! that are state rather than events (budget remaining, circuits, backends up) are read
//! when `/metrics` is scraped, so that they are never stale. A later issue completes
//! metrics and adds traces; everything about metrics stays in this module.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_core::{Backend, BackendStatus};

use crate::Gateway;

/// Every metric the gateway exports, by name: those DESIGN.md's "Operating it" lists.
/// Dashboards and alerts may rely on exactly these (a test checks that the dashboard
/// in `docs/grafana/` queries nothing else).
pub const METRIC_NAMES: [&str; 12] = [
    "nexus_decisions_total",
    "nexus_rejections_total",
    "nexus_decision_duration_seconds",
    "nexus_upstream_requests_total",
    "nexus_upstream_duration_seconds",
    "nexus_time_to_first_token_seconds",
    "nexus_tokens_total",
    "nexus_spend_usd_total",
    "nexus_budget_remaining_usd",
    "nexus_backend_up",
    "nexus_circuit_open",
    "nexus_queue_depth",
];

/// The exporter's handle, once the recorder is installed.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets for durations, in seconds: a millisecond to two minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!("a metrics recorder was installed before the gateway's; /metrics serves nothing");
                    None
                }
            }
        })
        .as_ref()
}

/// Installs the recorder (once per process) and describes each metric.
pub(crate) fn describe() {
    if handle().is_none() {
        return;
    }
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("nexus_decisions_total", "Routing decisions, by kind");
    describe_counter!(
        "nexus_rejections_total",
        "Backends excluded in rejected decisions, by the stage that excluded them"
    );
    describe_histogram!(
        "nexus_decision_duration_seconds",
        Unit::Seconds,
        "Time to decide, queueing excluded"
    );
    describe_counter!(
        "nexus_upstream_requests_total",
        "Requests sent to backends, by backend and status (or error)"
    );
    describe_histogram!(
        "nexus_upstream_duration_seconds",
        Unit::Seconds,
        "Time from sending to a backend to the answer's last byte"
    );
    describe_histogram!(
        "nexus_time_to_first_token_seconds",
        Unit::Seconds,
        "Time from sending to a backend to the first streamed content"
    );
    describe_counter!(
        "nexus_tokens_total",
        "Tokens backends reported, by backend, model and direction (input, output)"
    );
    describe_counter!(
        "nexus_spend_usd_total",
        "Spend settled from reported usage, by zone"
    );
    describe_gauge!(
        "nexus_budget_remaining_usd",
        "The monthly limit less the spend so far (settled and reserved)"
    );
    describe_gauge!("nexus_backend_up", "1 when a backend is healthy, else 0");
    describe_gauge!(
        "nexus_circuit_open",
        "1 when a backend's circuit is open (or probing), else 0"
    );
    describe_gauge!("nexus_queue_depth", "Requests waiting for a backend");
}

/// A decision of `kind` ("route", "queue", "reject") that took `took`.
pub(crate) fn decision(kind: &'static str, took: Duration) {
    counter!("nexus_decisions_total", "decision" => kind).increment(1);
    histogram!("nexus_decision_duration_seconds").record(took.as_secs_f64());
}

/// A backend excluded by `reconciler` in a rejected decision.
pub(crate) fn rejection(reconciler: &'static str) {
    counter!("nexus_rejections_total", "reconciler" => reconciler).increment(1);
}

/// A request sent to `backend` that ended with `status` (a code, or "error").
pub(crate) fn upstream(backend: &Backend, status: &str, took: Duration) {
    let name = backend.name().to_owned();
    counter!("nexus_upstream_requests_total", "backend" => name.clone(), "status" => status.to_owned())
        .increment(1);
    histogram!("nexus_upstream_duration_seconds", "backend" => name).record(took.as_secs_f64());
}

/// The time to first token of a stream from `backend`.
pub(crate) fn ttft(backend: &Backend, ttft: Duration) {
    histogram!("nexus_time_to_first_token_seconds", "backend" => backend.name().to_owned())
        .record(ttft.as_secs_f64());
}

/// Tokens used and what they cost.
pub(crate) fn usage(backend: &Backend, model: &str, input: u64, output: u64, usd: f64) {
    let b = backend.name().to_owned();
    counter!("nexus_tokens_total", "backend" => b.clone(), "model" => model.to_owned(), "direction" => "input")
        .increment(input);
    counter!("nexus_tokens_total", "backend" => b, "model" => model.to_owned(), "direction" => "output")
        .increment(output);
    if usd > 0.0 {
        // `metrics` counters count integers; spend is a fraction of a dollar, so it is
        // a gauge that only grows. The exact figure is the budget ledger's.
        gauge!("nexus_spend_usd_total", "zone" => backend.zone().as_str()).increment(usd);
    }
}

/// The queue's depth now.
pub(crate) fn queue_depth(depth: usize) {
    gauge!("nexus_queue_depth").set(depth as f64);
}

/// A backend's health.
pub(crate) fn backend_up(backend: &Backend, status: BackendStatus) {
    gauge!("nexus_backend_up", "backend" => backend.name().to_owned()).set(
        if status == BackendStatus::Healthy {
            1.0
        } else {
            0.0
        },
    );
}

/// The Prometheus text of every metric, with the state gauges read now; `None` when
/// another recorder owns the process.
pub(crate) fn render(gateway: &Gateway) -> Option<String> {
    let handle = handle()?;
    let router = gateway.router();
    let fleet = router.fleet();
    for backend in fleet.backends() {
        backend_up(backend, backend.live().status());
    }
    if let Some(quality) = router
        .pipeline()
        .stage_of::<nexus_router::quality::QualityReconciler>()
    {
        let tracker = quality.tracker();
        for backend in fleet.backends() {
            let open = !matches!(
                tracker.circuit(backend.id()),
                nexus_router::quality::Circuit::Closed
            );
            gauge!("nexus_circuit_open", "backend" => backend.name().to_owned()).set(if open {
                1.0
            } else {
                0.0
            });
        }
    }
    if let Some(budget) = router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>()
    {
        if let Some(limit) = budget.settings().monthly_limit_usd {
            let spent = budget.ledger().snapshot().total_usd;
            gauge!("nexus_budget_remaining_usd").set((limit - spent).max(0.0));
        }
    }
    queue_depth(gateway.queued());
    Some(handle.render())
}
