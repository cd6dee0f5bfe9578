//! Traces and the request log line.
//!
//! Every proxied request has a `nexus.request` span, the parent of a `nexus.decide`
//! span per decision, a `nexus.upstream` span per attempt at a backend and a
//! `nexus.stream` span for the answer's body. Their attributes use the OpenTelemetry
//! GenAI semantic names (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.provider.name`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.request.max_tokens`) and the HTTP and server
//! ones (`http.response.status_code`, `server.address`, `error.type`), so that an
//! OpenTelemetry exporter (the `otlp` feature of nexus-cli) sends them as a GenAI
//! dashboard expects. The request span lives until the body is settled, so its
//! duration is the request's whole.
//!
//! When a request ends (settled, or refused before any backend answered) one event at
//! info with target `nexus::request` says what happened: decision, backend, model,
//! status, tokens, cost and durations. It never holds a key or a header; the requested
//! model is the client's text, which logs may carry (metrics labels may not).

use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use tracing::field::Empty;
use tracing::Span;

use crate::wire::Endpoint;

/// The target of the request log line, for filters (`RUST_LOG=nexus::request=info`).
pub(crate) const REQUEST_TARGET: &str = "nexus::request";

/// The GenAI operation name of an endpoint.
pub(crate) fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
    }
}

/// The root span of a proxied request; the model and the outcome are recorded later.
///
/// Its OpenTelemetry name is the GenAI operation (`chat`, `text_completion`,
/// `embeddings`); the semantic conventions' `{operation} {model}` cannot be used, as the
/// model is read after the span has started and an exported span's name is fixed then.
pub(crate) fn request_span(request_id: &HeaderValue, endpoint: Endpoint) -> Span {
    tracing::info_span!(
        "nexus.request",
        otel.name = operation(endpoint),
        otel.kind = "server",
        otel.status_code = Empty,
        request_id = request_id.to_str().unwrap_or("-"),
        gen_ai.operation.name = operation(endpoint),
        gen_ai.request.model = Empty,
        gen_ai.request.max_tokens = Empty,
        gen_ai.response.model = Empty,
        gen_ai.provider.name = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        nexus.decision = Empty,
        nexus.backend = Empty,
        nexus.zone = Empty,
        nexus.cost_usd = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// The span of one decision (queueing excluded).
pub(crate) fn decide_span(parent: &Span) -> Span {
    tracing::info_span!(
        parent: parent,
        "nexus.decide",
        nexus.decision = Empty,
        nexus.backend = Empty,
        gen_ai.response.model = Empty,
        nexus.budget_status = Empty,
    )
}

/// The span of one attempt at a backend, from sending to the answer's headers: a GenAI
/// client span, named `{operation} {model}` as the conventions ask.
pub(crate) fn upstream_span(
    attempt: usize,
    backend: &nexus_core::fleet::Backend,
    model: &str,
    endpoint: Endpoint,
) -> Span {
    tracing::info_span!(
        "nexus.upstream",
        otel.name = format!("{} {model}", operation(endpoint)),
        otel.kind = "client",
        nexus.attempt = attempt,
        nexus.backend = backend.name(),
        nexus.zone = backend.zone().as_str(),
        gen_ai.provider.name = backend.kind().as_str(),
        gen_ai.request.model = model,
        server.address = backend.url(),
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// The span of an answer's body, from its headers to its end.
pub(crate) fn stream_span(parent: &Span, streamed: bool) -> Span {
    tracing::info_span!(
        parent: parent,
        "nexus.stream",
        nexus.streamed = streamed,
        nexus.ending = Empty,
        nexus.time_to_first_token_ms = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
    )
}

/// What the request log line says of a request that reached a backend; filled along
/// the path, emitted at settle.
pub(crate) struct RequestRecord {
    /// The request's root span, kept open until the body is settled.
    pub(crate) span: Span,
    pub(crate) started: Instant,
    pub(crate) requested_model: String,
    pub(crate) decide: Duration,
    pub(crate) attempts: usize,
}

/// Milliseconds with three decimals, for log fields.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// What settling knew about a request that reached a backend.
pub(crate) struct Settled<'a> {
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) backend: &'a nexus_core::fleet::Backend,
    pub(crate) model: &'a str,
    pub(crate) status: u16,
    pub(crate) ending: &'static str,
    pub(crate) input_tokens: u32,
    pub(crate) output_tokens: u32,
    pub(crate) cost_usd: f64,
    pub(crate) upstream: Duration,
    pub(crate) ttft: Option<Duration>,
}

impl RequestRecord {
    /// Records the outcome on the request span and writes the log line.
    pub(crate) fn settled(&self, s: &Settled<'_>) {
        let span = &self.span;
        span.record("gen_ai.response.model", s.model);
        span.record("gen_ai.usage.input_tokens", s.input_tokens);
        span.record("gen_ai.usage.output_tokens", s.output_tokens);
        span.record("nexus.cost_usd", s.cost_usd);
        span.record("http.response.status_code", s.status);
        let failed = s.status >= 500 || s.ending != "complete";
        span.record("otel.status_code", if failed { "ERROR" } else { "OK" });
        if failed {
            span.record("error.type", s.ending);
        }
        tracing::info!(
            target: REQUEST_TARGET,
            parent: None,
            request_id = s.request_id.to_str().unwrap_or("-"),
            decision = "route",
            requested_model = self.requested_model.as_str(),
            model = s.model,
            backend = s.backend.name(),
            zone = s.backend.zone().as_str(),
            status = s.status,
            ending = s.ending,
            input_tokens = s.input_tokens,
            output_tokens = s.output_tokens,
            cost_usd = s.cost_usd,
            attempts = self.attempts,
            decide_ms = millis(self.decide),
            upstream_ms = millis(s.upstream),
            ttft_ms = s.ttft.map(millis),
            total_ms = millis(self.started.elapsed()),
            "request"
        );
    }
}

/// Writes the log line of a request refused before a backend answered.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refused(
    span: &Span,
    request_id: &HeaderValue,
    requested_model: Option<&str>,
    decision: &str,
    status: u16,
    code: &str,
    attempts: usize,
    decide: Duration,
    started: Instant,
) {
    span.record("http.response.status_code", status);
    span.record("error.type", code);
    span.record("otel.status_code", "ERROR");
    tracing::info!(
        target: REQUEST_TARGET,
        parent: None,
        request_id = request_id.to_str().unwrap_or("-"),
        decision,
        requested_model = requested_model.unwrap_or("-"),
        status,
        error = code,
        attempts,
        decide_ms = millis(decide),
        total_ms = millis(started.elapsed()),
        "request refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_the_genai_names() {
        assert_eq!(operation(Endpoint::ChatCompletions), "chat");
        assert_eq!(operation(Endpoint::Completions), "text_completion");
        assert_eq!(operation(Endpoint::Embeddings), "embeddings");
    }

    #[test]
    fn millis_keep_microseconds() {
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.567);
    }
}
