//! The request path of a proxied endpoint, as named phases over one per-request
//! context (the shape of pingora's `ProxyHttp`):
//!
//! 1. **read**: the body, bounded in size and time, parsed into what routing needs;
//! 2. **decide**: a route from the router, waiting in the queue when the decision is
//!    Queue (see [`crate::queue`]), refused in the design's error shape otherwise;
//! 3. **send**: the rewritten body to the chosen backend; a connect error, a timeout
//!    or a 5xx before the first byte is a failed attempt: its guard is finished as a
//!    failure and the request is decided again without that backend, up to
//!    `[server] max_attempts`;
//! 4. **stream**: the answer's headers with the routing headers, then its body chunk by
//!    chunk ([`crate::relay`]);
//! 5. **settle**: when the body ends, breaks or the client goes, the guard is finished
//!    with the outcome and the usage the upstream reported (the relay does it).
//!
//! Handlers only call [`handle`]; every refusal is a [`GatewayError`].

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nexus_core::{
    BackendId, BackendStatus, OwnedDecision, OwnedRouteGuard, RoutingDecision, TierMode,
};
use nexus_router::DecisionReport;

use crate::relay::{Relay, Settle};
use crate::wire::{Endpoint, RequestBody, RequestSummary};
use crate::{Gateway, GatewayError};

/// One request's context, seen by every phase.
pub(crate) struct Exchange {
    pub(crate) gateway: Gateway,
    pub(crate) endpoint: Endpoint,
    pub(crate) request_id: HeaderValue,
    pub(crate) tier_mode: TierMode,
}

/// A committed route, with what the response headers say about it.
pub(crate) struct Routed {
    pub(crate) guard: OwnedRouteGuard,
    pub(crate) reason: String,
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
    let x = Exchange::new(gateway, endpoint, &headers);
    let request_id = x.request_id.clone();
    let mut response = match proxy(x, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response
        .headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id);
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
            .unwrap_or_else(|| {
                HeaderValue::try_from(gateway.next_request_id())
                    .unwrap_or(HeaderValue::from_static("req"))
            });
        let tier_mode = TierMode::from_headers(
            headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
        )
        .unwrap_or_default();
        Exchange {
            gateway,
            endpoint,
            request_id,
            tier_mode,
        }
    }
}

async fn proxy(x: Exchange, headers: &HeaderMap, body: Body) -> Result<Response, GatewayError> {
    let bytes = read(&x.gateway, headers, body).await?;
    let parsed = RequestBody::parse(x.endpoint, &bytes)?;
    let summary = parsed.summary();
    let max_attempts = x.gateway.server().max_attempts;
    let mut excluded: Vec<BackendId> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while excluded.len() < max_attempts as usize {
        let routed = match decide(&x, summary, &excluded).await {
            Ok(routed) => routed,
            // Every backend left failed an attempt: that is the upstream's failure.
            Err(_) if !failures.is_empty() => break,
            Err(refusal) => return Err(refusal),
        };
        let upstream_body = parsed.rewrite(routed.guard.model());
        let sent_at = Instant::now();
        match send(&x, &routed.guard, upstream_body, summary.stream).await {
            Ok(answer) => return Ok(respond(x, routed, answer, summary, sent_at)),
            Err(failure) => {
                let backend = routed.guard.backend();
                tracing::warn!(request_id = ?x.request_id, backend = backend.name(), error = %failure.message, "upstream attempt failed");
                crate::metrics::upstream(backend, failure.status, sent_at.elapsed());
                failures.push(format!("{}: {}", backend.name(), failure.message));
                excluded.push(backend.id());
                routed
                    .guard
                    .finish(nexus_core::Outcome::failure(sent_at.elapsed()));
                x.gateway.wake_queue();
            }
        }
    }
    Err(GatewayError::upstream_error(format!(
        "no backend answered '{}' after {} attempt{}: {}",
        summary.model,
        failures.len(),
        if failures.len() == 1 { "" } else { "s" },
        failures.join("; ")
    )))
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

        let request = summary
            .to_request(x.tier_mode)
            .max_input_tokens(summary.input_tokens_max)
            .excluding(excluded);
        let mut decision = timed_decision(gateway, &request);
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
                return Err(refusal(gateway, summary.model.as_ref(), &decision))
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

/// Decides, counting the decision and its time.
fn timed_decision(gateway: &Gateway, request: &nexus_core::Request<'_>) -> OwnedDecision {
    let started = Instant::now();
    let decision = gateway.router().route_owned(request);
    crate::metrics::decision(decision.kind().as_str(), started.elapsed());
    decision
}

/// What the routing headers say about a decision; applied to the guard that serves.
fn route_info(
    decision: &OwnedDecision,
    note: Option<String>,
) -> impl FnOnce(OwnedRouteGuard) -> Routed {
    let reason = match (decision.kind(), note) {
        (RoutingDecision::Route { reason, .. }, _) => reason.to_string(),
        (RoutingDecision::Queue { reason, .. }, Some(note)) => format!("{reason}; {note}"),
        (kind, _) => kind.as_str().to_owned(),
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
pub(crate) fn refusal(
    gateway: &Gateway,
    requested: &str,
    decision: &OwnedDecision,
) -> GatewayError {
    let pipeline = gateway.router().pipeline();
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
        let closest = nexus_core::closest(requested, pipeline.routes().names());
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
        return GatewayError::budget_exceeded(format!(
            "the budget refuses '{requested}': {reason}.{fix_text}"
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
    /// The metrics label: the status, or `error`/`timeout`.
    pub(crate) status: &'static str,
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
) -> Result<reqwest::Response, AttemptFailure> {
    let gateway = &x.gateway;
    let backend = guard.backend();
    let mut request = gateway
        .shared
        .client
        .post(upstream_url(backend.url(), x.endpoint.path()))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", x.request_id.clone())
        .body(body);
    if stream {
        request = request.header(header::ACCEPT, "text/event-stream");
    }
    if let Some(key) = gateway.key_of(backend.id()) {
        request = request.header(header::AUTHORIZATION, key.clone());
    }
    let timeout = gateway.server().first_byte_timeout();
    match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => Err(AttemptFailure {
            message: format!(
                "no answer within {} ms ([server] first_byte_timeout_ms)",
                timeout.as_millis()
            ),
            status: "timeout",
        }),
        Ok(Err(e)) => Err(AttemptFailure {
            message: if e.is_connect() {
                format!("cannot connect to {}: {}", backend.url(), source_text(&e))
            } else {
                format!("the request failed: {}", source_text(&e))
            },
            status: "error",
        }),
        Ok(Ok(answer)) if answer.status().is_server_error() => Err(AttemptFailure {
            message: format!("answered {}", answer.status()),
            status: status_label(answer.status()),
        }),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// An error with its causes, which reqwest keeps apart ("error sending request" alone
/// says nothing).
pub(crate) fn source_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A status as a metrics label, from a fixed set (labels must not grow without bound).
pub(crate) fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
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
    x: Exchange,
    routed: Routed,
    answer: reqwest::Response,
    summary: &RequestSummary<'_>,
    sent_at: Instant,
) -> Response {
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let is_sse = content_type
        .to_str()
        .is_ok_and(|t| t.starts_with("text/event-stream"));
    let mut headers = routing_headers(&x, &routed);
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
        request_id: x.request_id,
    };
    let relay = Relay::new(
        Box::pin(answer.bytes_stream()),
        is_sse.then_some(summary.include_usage),
        x.gateway.server().idle_timeout(),
        settle,
    );
    let mut response = Response::new(Body::from_stream(relay));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The routing headers every proxied answer carries before its first byte.
fn routing_headers(x: &Exchange, routed: &Routed) -> HeaderMap {
    let guard = &routed.guard;
    let backend = guard.backend();
    let mut headers = HeaderMap::with_capacity(10);
    let mut put = |name: &'static str, value: &str| {
        headers.insert(HeaderName::from_static(name), header_value(value));
    };
    put("x-nexus-backend", backend.name());
    put("x-nexus-model", guard.model());
    put("x-nexus-route-reason", &routed.reason);
    put(
        "x-nexus-cost-estimate-usd",
        &format!("{:.6}", guard.ticket().cost_estimate.cost_usd),
    );
    put("x-nexus-privacy-zone", backend.zone().as_str());
    put("x-nexus-budget-status", routed.budget_status);
    if let Some(model) = &routed.fallback_model {
        put("x-nexus-fallback-model", model);
    }
    headers.insert(
        HeaderName::from_static("x-request-id"),
        x.request_id.clone(),
    );
    headers
}

/// `text` as a header value: visible ASCII kept, anything else percent-encoded (names
/// may be any printable Unicode; headers carry ASCII).
pub(crate) fn header_value(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte == b' ' || (byte.is_ascii_graphic() && byte != b'%') {
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
    fn header_values_carry_any_name() {
        assert_eq!(header_value("gpu-box"), "gpu-box");
        assert_eq!(header_value("modèle"), "mod%C3%A8le");
        assert_eq!(header_value("a\nb"), "a%0Ab");
        assert_eq!(header_value("100%"), "100%25");
    }
}
