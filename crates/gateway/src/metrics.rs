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

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_core::{
    fleet::{Backend, BackendStatus},
    Fleet, Zone,
};

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

/// The handles of a decision's metrics, made once: looking a series up by its labels
/// costs a hash of its key and a registry lookup on every call.
struct DecisionMetrics {
    kinds: [(&'static str, Counter); 3],
    duration: Histogram,
}

static DECISIONS: OnceLock<DecisionMetrics> = OnceLock::new();

/// A decision of `kind` ("route", "queue", "reject") that took `took`.
pub(crate) fn decision(kind: &'static str, took: Duration) {
    // Made at the first decision, which comes after `describe` installed the recorder
    // (a gateway installs it when it is built).
    let cached = DECISIONS.get_or_init(|| DecisionMetrics {
        kinds: ["route", "queue", "reject"]
            .map(|kind| (kind, counter!("nexus_decisions_total", "decision" => kind))),
        duration: histogram!("nexus_decision_duration_seconds"),
    });
    match cached.kinds.iter().find(|(k, _)| *k == kind) {
        Some((_, counter)) => counter.increment(1),
        None => counter!("nexus_decisions_total", "decision" => kind).increment(1),
    }
    cached.duration.record(took.as_secs_f64());
}

/// A backend excluded by `reconciler` in a rejected decision.
pub(crate) fn rejection(reconciler: &'static str) {
    counter!("nexus_rejections_total", "reconciler" => reconciler).increment(1);
}

/// The statuses an answer settles with ([`crate::proxy::status_label`] and the relay's
/// endings), in the order of [`BackendMetrics`]'s counters.
const SETTLED_STATUSES: [&str; 15] = [
    "200",
    "400",
    "401",
    "403",
    "404",
    "429",
    "500",
    "502",
    "503",
    "504",
    "2xx",
    "4xx",
    "5xx",
    "broken",
    "client_closed",
];

/// One backend's metric handles, kept with the backend's upstream settings (one set per
/// config: a reload makes new ones, which find the same series by their labels). Each
/// handle is made at its first use, so that `/metrics` shows the same series as before
/// (none for a backend never used), and then costs an atomic update: building the
/// labels (owned strings) and looking the series up on every request was about 11 000
/// instructions a request, an eighth of the gateway's.
pub(crate) struct BackendMetrics {
    name: String,
    zone: Zone,
    statuses: [OnceLock<Counter>; SETTLED_STATUSES.len()],
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    spend: OnceLock<Gauge>,
    /// Tokens in and out, by the name of each model the backend serves.
    tokens: Vec<(String, OnceLock<[Counter; 2]>)>,
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BackendMetrics {
    /// `backend`'s handles (none made yet), for the models it serves in `fleet`.
    pub(crate) fn new(fleet: &Fleet, backend: &Backend) -> BackendMetrics {
        BackendMetrics {
            name: backend.name().to_owned(),
            zone: backend.zone(),
            statuses: std::array::from_fn(|_| OnceLock::new()),
            duration: OnceLock::new(),
            ttft: OnceLock::new(),
            spend: OnceLock::new(),
            tokens: backend
                .models()
                .iter()
                .map(|&model| (fleet.model(model).name().to_owned(), OnceLock::new()))
                .collect(),
        }
    }

    /// Whether these handles are `backend`'s: its labels (name and zone) are theirs.
    pub(crate) fn is_for(&self, backend: &Backend) -> bool {
        self.name == backend.name() && self.zone == backend.zone()
    }

    fn status(&self, status: &str) -> Option<&Counter> {
        let index = SETTLED_STATUSES.iter().position(|s| *s == status)?;
        Some(self.statuses[index].get_or_init(|| {
            counter!("nexus_upstream_requests_total", "backend" => self.name.clone(), "status" => SETTLED_STATUSES[index])
        }))
    }
}

/// A request sent to `backend` that ended with `status` (a code, or "error"), with the
/// backend's cached handles when the caller has them.
pub(crate) fn upstream(
    cached: Option<&BackendMetrics>,
    backend: &Backend,
    status: &str,
    took: Duration,
) {
    let Some(cached) = cached else {
        let name = backend.name().to_owned();
        counter!("nexus_upstream_requests_total", "backend" => name.clone(), "status" => status.to_owned())
            .increment(1);
        histogram!("nexus_upstream_duration_seconds", "backend" => name).record(took.as_secs_f64());
        return;
    };
    match cached.status(status) {
        Some(counter) => counter.increment(1),
        None => counter!("nexus_upstream_requests_total", "backend" => cached.name.clone(), "status" => status.to_owned())
            .increment(1),
    }
    cached
        .duration
        .get_or_init(
            || histogram!("nexus_upstream_duration_seconds", "backend" => cached.name.clone()),
        )
        .record(took.as_secs_f64());
}

/// The time to first token of a stream from `backend`.
pub(crate) fn ttft(cached: Option<&BackendMetrics>, backend: &Backend, ttft: Duration) {
    let seconds = ttft.as_secs_f64();
    match cached {
        Some(cached) => cached
            .ttft
            .get_or_init(|| histogram!("nexus_time_to_first_token_seconds", "backend" => cached.name.clone()))
            .record(seconds),
        None => histogram!("nexus_time_to_first_token_seconds", "backend" => backend.name().to_owned())
            .record(seconds),
    }
}

/// Tokens used and what they cost.
pub(crate) fn usage(
    cached: Option<&BackendMetrics>,
    backend: &Backend,
    model: &str,
    input: u64,
    output: u64,
    usd: f64,
) {
    let tokens = cached.and_then(|cached| {
        let (name, handles) = cached.tokens.iter().find(|(name, _)| name == model)?;
        Some(handles.get_or_init(|| {
            ["input", "output"].map(|direction| {
                counter!("nexus_tokens_total", "backend" => cached.name.clone(), "model" => name.clone(), "direction" => direction)
            })
        }))
    });
    match tokens {
        Some([counter_in, counter_out]) => {
            counter_in.increment(input);
            counter_out.increment(output);
        }
        None => {
            let b = backend.name().to_owned();
            counter!("nexus_tokens_total", "backend" => b.clone(), "model" => model.to_owned(), "direction" => "input")
                .increment(input);
            counter!("nexus_tokens_total", "backend" => b, "model" => model.to_owned(), "direction" => "output")
                .increment(output);
        }
    }
    if usd > 0.0 {
        // `metrics` counters count integers; spend is a fraction of a dollar, so it is
        // a gauge that only grows. The exact figure is the budget ledger's.
        match cached {
            Some(cached) => cached
                .spend
                .get_or_init(|| gauge!("nexus_spend_usd_total", "zone" => cached.zone.as_str()))
                .increment(usd),
            None => {
                gauge!("nexus_spend_usd_total", "zone" => backend.zone().as_str()).increment(usd)
            }
        }
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
