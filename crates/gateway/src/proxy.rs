//! The request path of a proxied endpoint, as named phases over one per-request
//! context (the shape of pingora's `ProxyHttp`):
//!
//! 1. **read**: the body, bounded in size and time, parsed into what routing needs;
//! 2. **decide**: a route from the router, waiting in the queue when the decision is
//!    Queue (see [`crate::queue`]), refused in the design's error shape otherwise;
//! 3. **send**: the rewritten body to the chosen backend; a connect error, a timeout,
//!    a 5xx, a 429 (rate limited) or a 2xx JSON answer whose body is not JSON, before
//!    the first byte reaches the client, is a failed attempt: its guard is finished as
//!    a failure and the request is decided again without that backend, up to
//!    `[server] max_attempts`. When every attempt failed and one was rate limited, the
//!    client gets a 429 with the shortest delay a backend asked for;
//! 4. **stream**: the answer's headers with the routing headers, then its body chunk by
//!    chunk ([`crate::relay`]);
//! 5. **settle**: when the body ends, breaks or the client goes, the guard is finished
//!    with the outcome and the usage the upstream reported (the relay does it).
//!
//! Handlers only call [`handle`]; every refusal is a [`GatewayError`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nexus_core::{
    fleet::{BackendId, BackendStatus},
    pipeline::{OwnedDecision, OwnedRouteGuard, TenantId, TierMode},
    RoutingDecision,
};
use nexus_router::DecisionReport;
use tracing::Instrument as _;

use crate::relay::{Relay, Settle};
use crate::wire::{Endpoint, RequestBody, RequestSummary};
use crate::{Gateway, GatewayError};

/// One request's context, seen by every phase.
pub(crate) struct Exchange {
    pub(crate) gateway: Gateway,
    pub(crate) endpoint: Endpoint,
    pub(crate) request_id: HeaderValue,
    pub(crate) tier_mode: TierMode,
    /// The request's root span (see [`crate::trace`]).
    pub(crate) span: tracing::Span,
    pub(crate) started: Instant,
    /// The model the client asked for, once the body is read.
    pub(crate) requested: OnceLock<String>,
    /// Time spent deciding (queueing excluded), in nanoseconds.
    decide_nanos: AtomicU64,
    /// Backends sent the request so far.
    attempts: AtomicUsize,
    /// The tenant whose key the request carries ([`crate::auth`]).
    pub(crate) tenant: Option<TenantId>,
}

/// A committed route, with what the response headers say about it.
pub(crate) struct Routed {
    pub(crate) guard: OwnedRouteGuard,
    /// `x-nexus-route-reason`.
    pub(crate) reason: HeaderValue,
    pub(crate) budget_status: &'static str,
    pub(crate) fallback_model: Option<String>,
}

/// Serves one proxied request; every answer carries `x-request-id`.
pub(crate) async fn handle(
    gateway: Gateway,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut x = Exchange::new(gateway, endpoint, &headers);
    let request_id = x.request_id.clone();
    let span = x.span.clone();
    let outcome = match x.authenticate(&headers) {
        Ok(()) => proxy(&x, &headers, body).instrument(span).await,
        Err(refusal) => Err(refusal),
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(error) => {
            let decision = match error.code() {
                crate::ErrorCode::QueueTimeout | crate::ErrorCode::QueueFull => "queue",
                crate::ErrorCode::UpstreamError => "route",
                crate::ErrorCode::InvalidRequest | crate::ErrorCode::InvalidApiKey => "none",
                _ => "reject",
            };
            crate::trace::refused(
                &x.span,
                &x.request_id,
                x.requested.get().map(String::as_str),
                decision,
                error.status().as_u16(),
                error.code().as_str(),
                x.attempts.load(Ordering::Relaxed),
                x.decide_time(),
                x.started,
            );
            error.into_response()
        }
    };
    response.headers_mut().insert(names::REQUEST_ID, request_id);
    response
}

impl Exchange {
    pub(crate) fn new(gateway: Gateway, endpoint: Endpoint, headers: &HeaderMap) -> Self {
        // A client's own id is kept (so that its logs and ours join) when it is a short
        // printable token; otherwise the gateway makes one.
        let request_id = headers
            .get("x-request-id")
            .filter(|v| {
                v.len() <= 128 && !v.is_empty() && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
            })
            .cloned()
            .unwrap_or_else(|| gateway.next_request_id());
        // Only the two headers that set it (names in a `HeaderMap` are lower case), not
        // every header the client sent.
        let named = |name: &'static str| {
            headers
                .get_all(name)
                .into_iter()
                .filter_map(move |v| Some((name, v.to_str().ok()?)))
        };
        let tier_mode =
            TierMode::from_headers(named("x-nexus-flexible").chain(named("x-nexus-strict")))
                .unwrap_or_default();
        let span = crate::trace::request_span(&request_id, endpoint);
        Exchange {
            gateway,
            endpoint,
            request_id,
            tier_mode,
            span,
            started: Instant::now(),
            requested: OnceLock::new(),
            decide_nanos: AtomicU64::new(0),
            attempts: AtomicUsize::new(0),
            tenant: None,
        }
    }

    /// Time spent deciding so far.
    pub(crate) fn decide_time(&self) -> Duration {
        Duration::from_nanos(self.decide_nanos.load(Ordering::Relaxed))
    }

    /// What the log line needs at settle; the span stays open with it.
    fn record(&self) -> crate::trace::RequestRecord {
        crate::trace::RequestRecord {
            span: self.span.clone(),
            started: self.started,
            requested_model: self.requested.get().cloned().unwrap_or_default(),
            decide: self.decide_time(),
            attempts: self.attempts.load(Ordering::Relaxed),
        }
    }

    /// **authenticate**: the caller's tenant, or 401 `invalid_api_key` when tenants are
    /// configured and the key is no tenant's nor the admin's.
    pub(crate) fn authenticate(&mut self, headers: &HeaderMap) -> Result<(), GatewayError> {
        if let crate::auth::Caller::Tenant(id) = crate::auth::caller(&self.gateway, headers)? {
            self.tenant = Some(id);
        }
        Ok(())
    }

    /// Reads the body as routing needs it: a tenant's allowed models are checked and
    /// `[server] default_max_tokens` set where the client gave no output cap.
    pub(crate) fn parse<'b>(&self, bytes: &'b [u8]) -> Result<RequestBody<'b>, GatewayError> {
        let mut parsed = RequestBody::parse(self.endpoint, bytes)?;
        if let Some(tokens) = self.gateway.server().default_max_tokens {
            parsed.default_max_tokens(tokens);
        }
        let router = self.gateway.router();
        let tenants = router.tenants();
        if let Some(tenant) = self.tenant.and_then(|id| tenants.get(id)) {
            let model = &parsed.summary().model;
            if !tenant.allows_model(model) {
                return Err(GatewayError::new(
                    crate::ErrorCode::ModelNotFound,
                    format!(
                        "the model `{model}` is not among the models tenant '{}' may use ({}); ask the operator to add it to the tenant's `models` in [[tenants]]",
                        tenant.id(),
                        tenant.models().unwrap_or_default().join(", ")
                    ),
                ));
            }
        }
        Ok(parsed)
    }

    /// The routing request for `summary`, made for this exchange's tenant.
    pub(crate) fn request<'s>(
        &self,
        summary: &'s RequestSummary<'_>,
        excluded: &'s [BackendId],
    ) -> nexus_core::Request<'s> {
        let mut request = summary
            .to_request(self.tier_mode)
            .max_input_tokens(summary.input_tokens_max)
            .excluding(excluded);
        request.tenant = self.tenant;
        request
    }
}

async fn proxy(x: &Exchange, headers: &HeaderMap, body: Body) -> Result<Response, GatewayError> {
    let bytes = read(&x.gateway, headers, body).await?;
    let parsed = x.parse(&bytes)?;
    let summary = parsed.summary();
    let _ = x.requested.set(summary.model.to_string());
    x.span
        .record("gen_ai.request.model", summary.model.as_ref());
    if let Some(max) = summary.max_output_tokens {
        x.span.record("gen_ai.request.max_tokens", max);
    }
    let max_attempts = x.gateway.server().max_attempts;
    let mut excluded: Vec<BackendId> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    // Some once a backend answered 429: the shortest delay one asked for, if any did.
    let mut rate_limited: Option<Option<Duration>> = None;
    while excluded.len() < max_attempts as usize {
        let routed = match decide(x, summary, &excluded).await {
            Ok(routed) => routed,
            // Every backend left failed an attempt: that is the upstream's failure.
            Err(_) if !failures.is_empty() => break,
            Err(refusal) => return Err(refusal),
        };
        let upstream_body = parsed.rewrite(routed.guard.model());
        let sent_at = Instant::now();
        let attempt = x.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let backend = routed.guard.backend();
        x.span
            .record("nexus.decision", "route")
            .record("nexus.backend", backend.name())
            .record("nexus.zone", backend.zone().as_str())
            .record("gen_ai.provider.name", backend.kind().as_str())
            .record("gen_ai.response.model", routed.guard.model());
        let attempt_span =
            crate::trace::upstream_span(attempt, backend, routed.guard.model(), x.endpoint);
        let sent = send(x, &routed.guard, upstream_body, summary.stream)
            .instrument(attempt_span.clone())
            .await;
        match sent {
            Ok(answer) => {
                attempt_span.record("http.response.status_code", answer.status.as_u16());
                return Ok(respond(x, routed, answer, summary, sent_at));
            }
            Err(failure) => {
                attempt_span.record("error.type", failure.status);
                tracing::warn!(request_id = ?x.request_id, backend = backend.name(), error = %failure.message, "upstream attempt failed");
                crate::metrics::upstream(None, backend, failure.status, sent_at.elapsed());
                failures.push(format!("{}: {}", backend.name(), failure.message));
                if let Some(asked) = failure.rate_limited {
                    let shortest = match (rate_limited.flatten(), asked) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    rate_limited = Some(shortest);
                }
                excluded.push(backend.id());
                // Nothing was generated for the client (or reported): usage 0, so the
                // budget releases the reservation instead of billing the estimate.
                routed
                    .guard
                    .finish(nexus_core::Outcome::failure(sent_at.elapsed()).usage(0, 0));
                x.gateway.wake_queue();
            }
        }
    }
    let message = format!(
        "no backend answered '{}' after {} attempt{}: {}",
        summary.model,
        failures.len(),
        if failures.len() == 1 { "" } else { "s" },
        failures.join("; ")
    );
    Err(match rate_limited {
        Some(retry_after) => GatewayError::upstream_rate_limited(message, retry_after),
        None => GatewayError::upstream_error(message),
    })
}

/// **read**: the body, at most `[server] max_body_bytes`, within
/// `[server] body_read_timeout_ms`.
pub(crate) async fn read(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let server = gateway.server();
    let limit = server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::body_too_large(limit));
    }
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(server.body_read_timeout(), collect).await {
        Err(_) => Err(GatewayError::invalid_request(
            format!(
                "the request body did not arrive within {} ms ([server] body_read_timeout_ms)",
                server.body_read_timeout_ms
            ),
            None,
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::body_too_large(limit))
        }
        Ok(Err(e)) => Err(GatewayError::invalid_request(
            format!("the request body could not be read: {e}"),
            None,
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// **decide**: a route for the request, waiting in the queue while the decision is
/// Queue, bounded by `[server] queue_timeout_ms` and `max_queued`.
pub(crate) async fn decide(
    x: &Exchange,
    summary: &RequestSummary<'_>,
    excluded: &[BackendId],
) -> Result<Routed, GatewayError> {
    let gateway = &x.gateway;
    let queue = &gateway.shared.queue;
    let timeout = gateway.server().queue_timeout();
    let entered = Instant::now();
    let mut place = None;
    loop {
        // Listen for changes before deciding, so that none between the decision and the
        // wait is missed.
        let changed = queue.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();

        let request = x.request(summary, excluded);
        let mut decision = timed_decision(x, &request);
        let estimated_wait = match decision.kind() {
            RoutingDecision::Route { .. } => {
                let info = route_info(&decision, None);
                return match decision.take_guard() {
                    Some(guard) => Ok(info(guard)),
                    None => Err(GatewayError::upstream_error(
                        "the router decided a route without a guard",
                    )),
                };
            }
            RoutingDecision::Reject { .. } => {
                return Err(refusal(summary.model.as_ref(), &decision))
            }
            RoutingDecision::Queue {
                estimated_wait_ms, ..
            } => Duration::from_millis(*estimated_wait_ms),
        };
        let waited = entered.elapsed();
        let remaining = timeout.saturating_sub(waited);
        if let Some(offer) = decision.take_guard() {
            if estimated_wait > remaining {
                let note = format!(
                    "a ready fallback: waiting about {} ms would outlast the queue timeout",
                    estimated_wait.as_millis()
                );
                return Ok(route_info(&decision, Some(note))(offer));
            }
            // Wait instead. Nobody else waits on this offer, so nobody is woken.
            offer.cancel();
        }
        let retry_after = estimated_wait.max(Duration::from_millis(100));
        if remaining.is_zero() {
            return Err(GatewayError::queue_timeout(waited, retry_after)
                .with_decision(report_json(summary.model.as_ref(), &decision)));
        }
        if place.is_none() {
            place = queue.enter();
            if place.is_none() {
                return Err(GatewayError::queue_full(queue.max(), retry_after)
                    .with_decision(report_json(summary.model.as_ref(), &decision)));
            }
        }
        // Let go of the decision (and its buffers) before waiting.
        drop(decision);
        // On timeout, decide once more: the last decision says why it timed out.
        let _ = tokio::time::timeout(remaining, changed).await;
    }
}

/// Decides, counting the decision and its time, in a span of its own.
fn timed_decision(x: &Exchange, request: &nexus_core::Request<'_>) -> OwnedDecision {
    let span = crate::trace::decide_span(&x.span);
    let _entered = span.enter();
    let started = Instant::now();
    let decision = x.gateway.live_router().route_owned(request);
    let took = started.elapsed();
    x.decide_nanos.fetch_add(
        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    crate::metrics::decision(decision.kind().as_str(), took);
    let kind = decision.kind().as_str();
    span.record("nexus.decision", kind)
        .record("nexus.budget_status", decision.budget_status().as_str());
    if let Some(backend) = decision.backend() {
        span.record("nexus.backend", backend.name());
    }
    if let Some(model) = decision.model() {
        span.record("gen_ai.response.model", model);
    }
    x.span.record("nexus.decision", kind);
    decision
}

/// What the routing headers say about a decision; applied to the guard that serves.
fn route_info(
    decision: &OwnedDecision,
    note: Option<String>,
) -> impl FnOnce(OwnedRouteGuard) -> Routed {
    let reason = match (decision.kind(), note) {
        (RoutingDecision::Route { reason, .. }, _) => owned_header_value(reason.to_string()),
        (RoutingDecision::Queue { reason, .. }, Some(note)) => {
            owned_header_value(format!("{reason}; {note}"))
        }
        (kind, _) => HeaderValue::from_static(kind.as_str()),
    };
    let budget_status = decision.budget_status().as_str();
    move |guard| {
        let fallback_model = guard
            .ticket()
            .fallback_used
            .then(|| guard.model().to_owned());
        Routed {
            guard,
            reason,
            budget_status,
            fallback_model,
        }
    }
}

fn report_json(requested: &str, decision: &OwnedDecision) -> serde_json::Value {
    serde_json::to_value(DecisionReport::new(requested, decision)).unwrap_or_default()
}

/// The refusal of a rejected decision, as the design's table says.
pub(crate) fn refusal(requested: &str, decision: &OwnedDecision) -> GatewayError {
    // The pipeline that decided: a reload since then changes nothing about this answer.
    let pipeline = decision.pipeline();
    let fleet = pipeline.fleet();
    let RoutingDecision::Reject { reason, fix, .. } = decision.kind() else {
        return GatewayError::upstream_error("the router did not reject the request");
    };
    let rejections = decision.rejections();
    for rejection in &rejections {
        crate::metrics::rejection(rejection.reconciler);
    }
    let report = report_json(requested, decision);
    if pipeline.routes().plan(requested).is_none() {
        let closest = nexus_core::routes::closest(requested, pipeline.routes().names());
        return GatewayError::model_not_found(requested, closest).with_decision(report);
    }
    let lead = fix
        .as_ref()
        .map(|f| f.reconciler)
        .or_else(|| rejections.first().map(|r| r.reconciler));
    let fix_text = fix
        .as_ref()
        .map(|f| {
            format!(
                " To serve it: {}.",
                f.suggested_action.trim_end_matches('.')
            )
        })
        .unwrap_or_default();
    if lead == Some("budget") {
        // The budget's own reason says which limit was hit: the tenant's or the global.
        let why = rejections
            .iter()
            .find(|r| r.reconciler == "budget")
            .map_or_else(|| reason.to_string(), |r| r.reason.to_string());
        return GatewayError::budget_exceeded(format!(
            "the budget refuses '{requested}': {why}.{fix_text}"
        ))
        .with_decision(report);
    }
    // Backends that are down: say which, and how to point the config at a server.
    let mut down: Vec<String> = Vec::new();
    for rejection in &rejections {
        let Some(backend) = fleet.backend_by_name(&rejection.backend) else {
            continue;
        };
        let entry = format!("{} ({})", backend.name(), backend.url());
        if backend.live().status() == BackendStatus::Unhealthy && !down.contains(&entry) {
            down.push(entry);
        }
    }
    let down_text = if down.is_empty() {
        String::new()
    } else {
        format!(
            " Down: {}. Start {}, or point `url` in the config at a server that runs, then restart with `nexus serve --config FILE`.",
            down.join(", "),
            if down.len() == 1 { "it" } else { "them" }
        )
    };
    // Waiting helps when a circuit is cooling down: say how long.
    let cooling = pipeline
        .stage_of::<nexus_router::quality::QualityReconciler>()
        .and_then(|quality| {
            rejections
                .iter()
                .filter(|r| r.reconciler == "quality")
                .filter_map(|r| fleet.backend_by_name(&r.backend))
                .filter_map(|b| match quality.tracker().circuit(b.id()) {
                    nexus_router::quality::Circuit::Open { seconds_left, .. } => {
                        Some(Duration::from_secs(seconds_left.max(1)))
                    }
                    _ => None,
                })
                .min()
        });
    GatewayError::no_viable_backend(
        format!("no backend can serve '{requested}' now: {reason}.{down_text}{fix_text}"),
        cooling,
    )
    .with_decision(report)
}

/// Why an attempt failed before the first byte.
pub(crate) struct AttemptFailure {
    pub(crate) message: String,
    /// The metrics label: the status, or `error`/`timeout`/`not_json`.
    pub(crate) status: &'static str,
    /// `Some` when the backend answered 429: the delay it asked for, if it said.
    pub(crate) rate_limited: Option<Option<Duration>>,
}

impl AttemptFailure {
    fn new(message: String, status: &'static str) -> Self {
        AttemptFailure {
            message,
            status,
            rate_limited: None,
        }
    }
}

/// An upstream's answer, its body possibly started (see [`first_json_byte`]).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) retry_after: Option<HeaderValue>,
    pub(crate) body: crate::relay::UpstreamBody,
}

/// The delay a 429 asks for: `retry-after-ms` (OpenAI's), else `retry-after` in
/// seconds. An HTTP date is not read (the client then backs off on its own).
fn retry_delay(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(8.64e7) / 1000.0));
    }
    number("retry-after").map(|secs| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The URL of `path` (`/v1/...`) on a backend whose configured URL may or may not end
/// in `/v1` (OpenAI's own is `https://api.openai.com/v1`, Ollama's `http://host:11434`).
pub(crate) fn upstream_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    match (base.ends_with("/v1"), path.strip_prefix("/v1")) {
        (true, Some(rest)) => format!("{base}{rest}"),
        _ => format!("{base}{path}"),
    }
}

/// **send**: the body to the guard's backend, with its key and nothing of the client's
/// headers; the answer's headers within `[server] first_byte_timeout_ms`.
async fn send(
    x: &Exchange,
    guard: &OwnedRouteGuard,
    body: Vec<u8>,
    stream: bool,
) -> Result<Answer, AttemptFailure> {
    let gateway = &x.gateway;
    let backend = guard.backend();
    let (uri, key) = gateway.target_of(backend, x.endpoint);
    let uri = match uri {
        Some(uri) => uri,
        None => crate::gateway::upstream_uri(&upstream_url(backend.url(), x.endpoint.path()))
            .map_err(|e| AttemptFailure::new(format!("cannot send to {e}"), "error"))?,
    };
    let mut request = axum::http::Request::new(crate::upstream::OutgoingBody::from(body));
    *request.method_mut() = axum::http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    // Static names and values: a `&str` would be parsed and checked on every request.
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(names::REQUEST_ID, x.request_id.clone());
    if stream {
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    if let Some(key) = key {
        headers.insert(header::AUTHORIZATION, key);
    }
    let timeout = gateway.server().first_byte_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || {
        AttemptFailure::new(
            format!(
                "no answer within {} ms ([server] first_byte_timeout_ms)",
                timeout.as_millis()
            ),
            "timeout",
        )
    };
    let answer = match tokio::time::timeout_at(deadline, gateway.shared.client.send(request)).await
    {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            let message = if e.is_connect() {
                format!(
                    "cannot connect to {}: {}",
                    backend.url(),
                    crate::error::with_causes(&e)
                )
            } else {
                format!("the request failed: {}", crate::error::with_causes(&e))
            };
            return Err(AttemptFailure::new(message, "error"));
        }
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status();
    if status.is_server_error() {
        return Err(AttemptFailure::new(
            format!("answered {status}"),
            status_label(status),
        ));
    }
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        // Only a proxy between the gateway and the backend asks this. Relayed, it would
        // tell the client to authenticate to a proxy it does not know of.
        return Err(AttemptFailure::new(
            format!("answered {status}: an egress proxy on the way wants credentials; put them in the proxy URL (http://user:password@host:port in HTTP_PROXY, HTTPS_PROXY or ALL_PROXY)"),
            status_label(status),
        ));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let asked = retry_delay(answer.headers());
        let message = match asked {
            Some(after) => format!("answered {status} (retry after {} ms)", after.as_millis()),
            None => format!("answered {status}"),
        };
        return Err(AttemptFailure {
            rate_limited: Some(asked),
            ..AttemptFailure::new(message, "429")
        });
    }
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let is_sse = content_type
        .as_ref()
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let mut body: crate::relay::UpstreamBody = Box::pin(http_body_util::BodyExt::into_data_stream(
        answer.into_body(),
    ));
    if status.is_success() && !is_sse {
        // A JSON answer must start as JSON. Checked before anything reaches the client,
        // so that an HTML error page behind a 200 (a proxy in front of the backend, a
        // server in trouble) fails over instead of reaching a client that cannot read it.
        body = match tokio::time::timeout_at(deadline, first_json_byte(body)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(message)) => return Err(AttemptFailure::new(message, "not_json")),
            Ok(Ok(body)) => body,
        };
    }
    Ok(Answer {
        status,
        content_type,
        retry_after,
        body,
    })
}

/// Reads a JSON answer's body up to its first byte that is not white space, and gives
/// the body back whole (what was read, then the rest); an error when that byte does not
/// start a JSON object or array, or the body ends first.
async fn first_json_byte(
    mut body: crate::relay::UpstreamBody,
) -> Result<crate::relay::UpstreamBody, String> {
    use futures_util::StreamExt;
    let mut read: Vec<Bytes> = Vec::new();
    loop {
        let chunk = match body.next().await {
            None => return Err("answered 200 with an empty body".to_owned()),
            Some(Err(e)) => {
                return Err(format!(
                    "the answer broke off: {}",
                    crate::error::with_causes(&e)
                ))
            }
            Some(Ok(chunk)) => chunk,
        };
        let first = chunk.iter().copied().find(|b| !b.is_ascii_whitespace());
        read.push(chunk);
        match first {
            None => continue,
            Some(b'{' | b'[') => {
                let read = futures_util::stream::iter(read.into_iter().map(Ok));
                return Ok(Box::pin(read.chain(body)));
            }
            Some(_) => {
                let start: Vec<u8> = read
                    .iter()
                    .flat_map(|c| c.iter().copied())
                    .take(64)
                    .collect();
                return Err(format!(
                    "answered 200 with a body that is not JSON (it starts {:?})",
                    String::from_utf8_lossy(&start)
                ));
            }
        }
    }
}

/// A status as a metrics label, from a fixed set (labels must not grow without bound).
pub(crate) fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        407 => "407",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// **stream**: the answer's status and headers, the routing headers, and a body that
/// relays the upstream's chunk by chunk and settles the guard when it ends.
fn respond(
    x: &Exchange,
    routed: Routed,
    answer: Answer,
    summary: &RequestSummary<'_>,
    sent_at: Instant,
) -> Response {
    let status = answer.status;
    let content_type = answer
        .content_type
        .unwrap_or(HeaderValue::from_static("application/json"));
    let retry_after = answer.retry_after;
    let is_sse = content_type
        .to_str()
        .is_ok_and(|t| t.starts_with("text/event-stream"));
    let mut headers = routing_headers(&routed);
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(value) = retry_after {
        headers.insert(header::RETRY_AFTER, value);
    }
    if is_sse {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let settle = Settle {
        gateway: x.gateway.clone(),
        guard: routed.guard,
        sent_at,
        status,
        input_tokens: summary.input_tokens,
        request_id: x.request_id.clone(),
        stream_span: crate::trace::stream_span(&x.span, is_sse),
        record: x.record(),
    };
    let relay = Relay::new(
        answer.body,
        is_sse.then_some(summary.include_usage),
        x.gateway.server().idle_timeout(),
        settle,
    );
    let mut response = Response::new(Body::from_stream(relay));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The routing headers' names: constants, since `HeaderName::from_static` outside a
/// const context looks the name up among the standard ones on every call.
mod names {
    use axum::http::HeaderName;

    pub(super) const BACKEND: HeaderName = HeaderName::from_static("x-nexus-backend");
    pub(super) const MODEL: HeaderName = HeaderName::from_static("x-nexus-model");
    pub(super) const ROUTE_REASON: HeaderName = HeaderName::from_static("x-nexus-route-reason");
    pub(super) const COST_ESTIMATE: HeaderName =
        HeaderName::from_static("x-nexus-cost-estimate-usd");
    pub(super) const PRIVACY_ZONE: HeaderName = HeaderName::from_static("x-nexus-privacy-zone");
    pub(super) const BUDGET_STATUS: HeaderName = HeaderName::from_static("x-nexus-budget-status");
    pub(super) const FALLBACK_MODEL: HeaderName = HeaderName::from_static("x-nexus-fallback-model");
    pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
}

/// The routing headers every proxied answer carries before its first byte
/// (`x-request-id` is [`handle`]'s, on every answer).
fn routing_headers(routed: &Routed) -> HeaderMap {
    let guard = &routed.guard;
    let backend = guard.backend();
    let mut headers = HeaderMap::with_capacity(10);
    headers.insert(names::BACKEND, header_value(backend.name()));
    headers.insert(names::MODEL, header_value(guard.model()));
    headers.insert(names::ROUTE_REASON, routed.reason.clone());
    headers.insert(
        names::COST_ESTIMATE,
        usd_header_value(guard.ticket().cost_estimate.cost_usd),
    );
    headers.insert(
        names::PRIVACY_ZONE,
        HeaderValue::from_static(backend.zone().as_str()),
    );
    headers.insert(
        names::BUDGET_STATUS,
        HeaderValue::from_static(routed.budget_status),
    );
    if let Some(model) = &routed.fallback_model {
        headers.insert(names::FALLBACK_MODEL, header_value(model));
    }
    headers
}

/// `text` as a header value without copying it when it needs no escaping (the usual
/// case); see [`header_value`].
fn owned_header_value(text: String) -> HeaderValue {
    if text.bytes().all(is_plain) {
        return HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or(HeaderValue::from_static("?"));
    }
    header_value(&text)
}

/// An amount of USD with six decimals (`{:.6}`), written on the stack rather than
/// into a `String` that is then copied.
fn usd_header_value(usd: f64) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    match write!(cursor, "{usd:.6}") {
        Ok(()) => {
            let len = usize::try_from(cursor.position()).unwrap_or(0);
            HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("?"))
        }
        // Longer than any amount a budget holds: written the slow way.
        Err(_) => header_value(&format!("{usd:.6}")),
    }
}

/// Bytes a header value carries as they are: visible ASCII and spaces, but not `%`,
/// which [`header_value`] uses to escape the rest.
fn is_plain(byte: u8) -> bool {
    byte == b' ' || (byte.is_ascii_graphic() && byte != b'%')
}

/// `text` as a header value: visible ASCII kept, anything else percent-encoded (names
/// may be any printable Unicode; headers carry ASCII).
pub(crate) fn header_value(text: &str) -> HeaderValue {
    if text.bytes().all(is_plain) {
        // The usual case, copied once, without the escaping loop below.
        return HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("?"));
    }
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if is_plain(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::try_from(out).unwrap_or(HeaderValue::from_static("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_join_with_or_without_v1() {
        let chat = "/v1/chat/completions";
        assert_eq!(
            upstream_url("http://127.0.0.1:11434", chat),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        assert_eq!(
            upstream_url("https://api.openai.com/v1/", chat),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            upstream_url("http://h:8000/", "/v1/embeddings"),
            "http://h:8000/v1/embeddings"
        );
    }

    #[test]
    fn a_429_delay_is_read_from_retry_after_ms_then_retry_after() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        let ms = Duration::from_millis;
        assert_eq!(
            retry_delay(&headers(&[
                ("retry-after-ms", "1500"),
                ("retry-after", "9")
            ])),
            Some(ms(1500))
        );
        assert_eq!(
            retry_delay(&headers(&[("retry-after", "7")])),
            Some(ms(7000))
        );
        assert_eq!(
            retry_delay(&headers(&[("retry-after", "0.5")])),
            Some(ms(500))
        );
        // An HTTP date, a negative or a garbage value: no delay (the client backs off).
        assert_eq!(
            retry_delay(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(retry_delay(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_delay(&headers(&[("retry-after-ms", "NaN")])), None);
        assert_eq!(retry_delay(&headers(&[])), None);
        // Absurd delays are capped at a day rather than overflowing.
        assert_eq!(
            retry_delay(&headers(&[("retry-after", "1e300")])),
            Some(Duration::from_secs(86_400))
        );
    }

    fn body_of(chunks: &[&'static str]) -> crate::relay::UpstreamBody {
        let chunks: Vec<Result<Bytes, hyper::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_json_body_is_given_back_whole_and_anything_else_refused() {
        use futures_util::StreamExt;
        let body = first_json_byte(body_of(&["", " \n", "{\"a\"", ": 1}"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let whole: Vec<Bytes> = body.map(|c| c.unwrap()).collect().await;
        assert_eq!(whole.concat(), b" \n{\"a\": 1}");
        assert!(first_json_byte(body_of(&["[1]"])).await.is_ok());

        let refused = |chunks: &'static [&'static str]| async move {
            match first_json_byte(body_of(chunks)).await {
                Ok(_) => panic!("{chunks:?} was taken for JSON"),
                Err(message) => message,
            }
        };
        let message = refused(&["  <html><body>502 Bad Gateway"]).await;
        assert!(
            message.contains("not JSON") && message.contains("<html>"),
            "{message}"
        );
        assert!(refused(&[]).await.contains("empty body"));
        assert!(refused(&["  ", "\n"]).await.contains("empty body"));
    }

    #[test]
    fn the_tier_mode_comes_from_its_two_headers_only() {
        let gateway = Gateway::new(nexus_router::Router::example().unwrap()).unwrap();
        let mode = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, HeaderValue::from_static(value));
            }
            Exchange::new(gateway.clone(), Endpoint::ChatCompletions, &headers).tier_mode
        };
        assert_eq!(mode(&[]), TierMode::default());
        assert_eq!(mode(&[("X-Nexus-Flexible", "1")]), TierMode::Flexible);
        assert_eq!(mode(&[("x-nexus-flexible", "")]), TierMode::Flexible);
        assert_eq!(mode(&[("x-nexus-flexible", "no")]), TierMode::default());
        // A repeated header counts when any of its values is on; strict wins.
        assert_eq!(
            mode(&[("x-nexus-flexible", "no"), ("x-nexus-flexible", "yes")]),
            TierMode::Flexible
        );
        assert_eq!(
            mode(&[("x-nexus-flexible", "true"), ("x-nexus-strict", "on")]),
            TierMode::Strict
        );
        assert_eq!(mode(&[("x-other", "1")]), TierMode::default());
    }

    #[test]
    fn amounts_and_reasons_become_header_values() {
        assert_eq!(usd_header_value(0.0), "0.000000");
        assert_eq!(usd_header_value(0.000_123_456_7), "0.000123");
        assert_eq!(usd_header_value(12.5), "12.500000");
        assert_eq!(usd_header_value(1e300), format!("{:.6}", 1e300).as_str());
        assert_eq!(
            owned_header_value("highest score 0.93 of 4 candidates".to_owned()),
            "highest score 0.93 of 4 candidates"
        );
        assert_eq!(owned_header_value("a\nb".to_owned()), "a%0Ab");
    }

    #[test]
    fn header_values_carry_any_name() {
        assert_eq!(header_value("gpu-box"), "gpu-box");
        assert_eq!(header_value("modèle"), "mod%C3%A8le");
        assert_eq!(header_value("a\nb"), "a%0Ab");
        assert_eq!(header_value("100%"), "100%25");
    }
}
