//! The gateway's one error type, answered in the OpenAI error shape.
//!
//! Clients of an OpenAI-compatible server read three things from a refusal: the status
//! (which exception the official clients raise: 400 `BadRequestError`, 401
//! `AuthenticationError`, 404 `NotFoundError`, 429 `RateLimitError`, 5xx
//! `InternalServerError`), the body `{"error": {"message", "type", "code", "param"}}`,
//! and the retry headers. The headers are chosen from how the official Python client
//! decides (`_base_client.py`, `_should_retry` and `_parse_retry_after_header`):
//!
//! - `x-should-retry: false` is obeyed before anything else: no retry, whatever the
//!   status. Nexus sends it when retrying cannot help (the budget is spent, no backend can
//!   serve the request as configured), because the client's default is to retry 429 and
//!   every 5xx.
//! - `retry-after-ms` is read first, then `retry-after` (seconds, or an HTTP date). A delay
//!   in (0, 120] seconds is waited before the retry; a delay over 120 seconds means no
//!   retry at all; no header means exponential backoff from half a second. Nexus sends both
//!   headers when waiting can help (a backend loading or a circuit cooling down, a queue
//!   that timed out or was full): the exact one for the OpenAI clients and whole seconds
//!   for everyone else.
//!
//! A routing refusal carries the whole decision object under `error.nexus`, so that a
//! client can see which backend was excluded by which stage and what to do about it.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::wire::WireError;

/// What went wrong, as the `code` of an OpenAI error; each has its own status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 404: no backend serves the model and no alias names it.
    ModelNotFound,
    /// 429: the refusal's lead reason is the budget.
    BudgetExceeded,
    /// 503: every backend was excluded for another reason.
    NoViableBackend,
    /// 503: the request was queued and no backend became ready in time.
    QueueTimeout,
    /// 503: the queue was full.
    QueueFull,
    /// 400: bad JSON, a missing `model`, a value of the wrong type.
    InvalidRequest,
    /// 401: a missing or wrong API key.
    InvalidApiKey,
    /// 502: the upstream failed after the allowed attempts.
    UpstreamError,
    /// 429: every attempt failed and at least one backend answered 429 (rate limited).
    UpstreamRateLimited,
    /// 422: a reload found the config invalid; the running config stays.
    InvalidConfig,
    /// 403: an admin endpoint, with no admin key configured (`[server] admin_key_env`).
    AdminDisabled,
}

impl ErrorCode {
    /// The HTTP status of the error.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorCode::BudgetExceeded | ErrorCode::UpstreamRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::NoViableBackend | ErrorCode::QueueTimeout | ErrorCode::QueueFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorCode::InvalidConfig => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::AdminDisabled => StatusCode::FORBIDDEN,
        }
    }

    /// The error's `code`, as the table in the design names it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::NoViableBackend => "no_viable_backend",
            ErrorCode::QueueTimeout => "queue_timeout",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamRateLimited => "rate_limit_exceeded",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::AdminDisabled => "admin_disabled",
        }
    }

    /// The error's `type`, from OpenAI's own vocabulary: `invalid_request_error` for what
    /// the client must change, `insufficient_quota` for a spent budget, `requests` for an
    /// upstream's rate limit (as OpenAI types its own 429), `server_error` for the rest.
    pub const fn error_type(self) -> &'static str {
        match self {
            ErrorCode::ModelNotFound
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidApiKey
            | ErrorCode::InvalidConfig
            | ErrorCode::AdminDisabled => "invalid_request_error",
            ErrorCode::BudgetExceeded => "insufficient_quota",
            ErrorCode::UpstreamRateLimited => "requests",
            ErrorCode::NoViableBackend
            | ErrorCode::QueueTimeout
            | ErrorCode::QueueFull
            | ErrorCode::UpstreamError => "server_error",
        }
    }
}

/// What the response tells a client about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAdvice {
    /// No header: the client's own policy applies (the OpenAI clients retry 429 and 5xx
    /// with backoff, and nothing else).
    ClientDefault,
    /// `x-should-retry: false`: retrying cannot help.
    Never,
    /// `retry-after-ms` and `retry-after`: retrying after this long may help. The OpenAI
    /// clients give up at once on a delay over two minutes.
    After(Duration),
}

/// An error of the gateway, answered as an OpenAI error body with the status and headers
/// of its [`ErrorCode`].
///
/// ```
/// use axum::response::IntoResponse;
/// use nexus_gateway::{ErrorCode, GatewayError};
///
/// let err = GatewayError::budget_exceeded("the monthly budget of $1000.00 is spent")
///     .with_decision(serde_json::json!({"decision": "reject"}));
/// assert_eq!(err.code(), ErrorCode::BudgetExceeded);
/// let response = err.into_response();
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["x-should-retry"], "false");
/// ```
#[derive(Clone, Debug, Error, PartialEq)]
#[error("{message}")]
pub struct GatewayError {
    code: ErrorCode,
    /// A status other than the code's own (413 for a body over the limit, 404 for an
    /// unknown path), when the case is a bad request of a more precise kind.
    status: Option<StatusCode>,
    message: String,
    param: Option<String>,
    retry: RetryAdvice,
    decision: Option<Value>,
}

impl GatewayError {
    /// An error with `code` and `message`, and the retry advice usual for the code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry = match code {
            ErrorCode::BudgetExceeded | ErrorCode::NoViableBackend => RetryAdvice::Never,
            _ => RetryAdvice::ClientDefault,
        };
        GatewayError {
            code,
            status: None,
            message: message.into(),
            param: None,
            retry,
            decision: None,
        }
    }

    /// 404 `model_not_found`, suggesting the closest served name when there is one.
    ///
    /// ```
    /// let err = nexus_gateway::GatewayError::model_not_found("gpt4", Some("gpt-4"));
    /// assert_eq!(
    ///     err.message(),
    ///     "the model `gpt4` is not served here; did you mean `gpt-4`? (GET /v1/models lists the served models and aliases)"
    /// );
    /// assert_eq!(err.param(), None); // as OpenAI answers it
    /// ```
    pub fn model_not_found(model: &str, closest: Option<&str>) -> Self {
        let hint = closest.map_or(String::new(), |c| format!("; did you mean `{c}`?"));
        let message = format!(
            "the model `{model}` is not served here{hint} (GET /v1/models lists the served models and aliases)"
        );
        Self::new(ErrorCode::ModelNotFound, message)
    }

    /// 429 `budget_exceeded`, with `x-should-retry: false`.
    pub fn budget_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BudgetExceeded, message)
    }

    /// 503 `no_viable_backend`: with `x-should-retry: false`, or, when waiting can help
    /// (a backend loading, a circuit cooling down), the time after which it may.
    pub fn no_viable_backend(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let err = Self::new(ErrorCode::NoViableBackend, message);
        match retry_after {
            Some(after) => err.with_retry(RetryAdvice::After(after)),
            None => err,
        }
    }

    /// 503 `queue_timeout`: the request waited `waited` and no backend became ready.
    pub fn queue_timeout(waited: Duration, retry_after: Duration) -> Self {
        let message = format!(
            "the request waited {} ms in the queue and no backend became ready; retry later or raise [server] queue_timeout_ms",
            waited.as_millis()
        );
        Self::new(ErrorCode::QueueTimeout, message).with_retry(RetryAdvice::After(retry_after))
    }

    /// 503 `queue_full`: `max_queued` requests were already waiting.
    pub fn queue_full(max_queued: usize, retry_after: Duration) -> Self {
        let message = format!(
            "the queue is full ({max_queued} requests waiting); retry later or raise [server] max_queued"
        );
        Self::new(ErrorCode::QueueFull, message).with_retry(RetryAdvice::After(retry_after))
    }

    /// 400 `invalid_request`, naming the parameter at fault when there is one.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let err = Self::new(ErrorCode::InvalidRequest, message);
        match param {
            Some(param) => err.with_param(param),
            None => err,
        }
    }

    /// 401 `invalid_api_key`. The key is never echoed: the message says only what to send.
    pub fn invalid_api_key() -> Self {
        Self::new(
            ErrorCode::InvalidApiKey,
            "missing or invalid API key: send `Authorization: Bearer <key>` with a tenant's key",
        )
    }

    /// 502 `upstream_error`.
    pub fn upstream_error(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UpstreamError, message)
    }

    /// 429 `rate_limit_exceeded`: every attempt failed and a backend was rate limited.
    /// With the shortest delay a backend asked for as `retry-after-ms` and `retry-after`,
    /// which the OpenAI clients wait before retrying; without one, their own backoff.
    ///
    /// ```
    /// let err = nexus_gateway::GatewayError::upstream_rate_limited(
    ///     "b1: answered 429",
    ///     Some(std::time::Duration::from_secs(3)),
    /// );
    /// assert_eq!(err.status(), 429);
    /// assert_eq!(err.code().as_str(), "rate_limit_exceeded");
    /// ```
    pub fn upstream_rate_limited(
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let err = Self::new(ErrorCode::UpstreamRateLimited, message);
        match retry_after {
            Some(after) => err.with_retry(RetryAdvice::After(after)),
            None => err,
        }
    }

    /// 413 `invalid_request`: the body is larger than `limit` bytes.
    ///
    /// ```
    /// let err = nexus_gateway::GatewayError::body_too_large(1024);
    /// assert_eq!(err.status(), 413);
    /// assert_eq!(err.code().as_str(), "invalid_request");
    /// ```
    pub fn body_too_large(limit: usize) -> Self {
        Self::invalid_request(
            format!("the request body is larger than {limit} bytes, the most this gateway reads ([server] max_body_bytes)"),
            None,
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// Answers with `status` instead of the code's own.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.code.status())
    }

    /// The decision object (`nexus route --format json`), answered under `error.nexus`.
    #[must_use]
    pub fn with_decision(mut self, decision: Value) -> Self {
        self.decision = Some(decision);
        self
    }

    /// Sets the retry advice.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryAdvice) -> Self {
        self.retry = retry;
        self
    }

    /// Names the request parameter at fault (`param` in the body).
    #[must_use]
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The parameter at fault, if any.
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// The retry advice.
    pub fn retry(&self) -> RetryAdvice {
        self.retry
    }

    /// The decision object, if this is a routing refusal.
    pub fn decision(&self) -> Option<&Value> {
        self.decision.as_ref()
    }

    /// The JSON body: `{"error": {"message", "type", "code", "param", "nexus"?}}`.
    ///
    /// ```
    /// let body = nexus_gateway::GatewayError::upstream_error("gpu-box: connection refused").body();
    /// assert_eq!(
    ///     String::from_utf8(body).unwrap(),
    ///     r#"{"error":{"message":"gpu-box: connection refused","type":"server_error","code":"upstream_error","param":null}}"#
    /// );
    /// ```
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'e> {
            error: Inner<'e>,
        }
        #[derive(Serialize)]
        struct Inner<'e> {
            message: &'e str,
            #[serde(rename = "type")]
            kind: &'static str,
            code: &'static str,
            param: Option<&'e str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            nexus: Option<&'e Value>,
        }
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.code.error_type(),
                code: self.code.as_str(),
                param: self.param.as_deref(),
                nexus: self.decision.as_ref(),
            },
        };
        // Serialising borrowed strings and a `Value` into memory cannot fail; the fallback
        // keeps the shape if it ever did.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"server_error","code":null,"param":null}}"#
                .to_vec()
        })
    }

    /// The headers that carry the retry advice.
    pub fn retry_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self.retry {
            RetryAdvice::ClientDefault => Vec::new(),
            RetryAdvice::Never => vec![(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            )],
            RetryAdvice::After(after) => {
                // At least 1: the OpenAI clients ignore a delay of 0 and back off instead.
                let ms = after.as_millis().max(1);
                let secs = ms.div_ceil(1000);
                vec![
                    (
                        HeaderName::from_static("retry-after-ms"),
                        HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
                    ),
                    (
                        header::RETRY_AFTER,
                        HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
                    ),
                ]
            }
        }
    }
}

impl From<WireError> for GatewayError {
    fn from(err: WireError) -> Self {
        GatewayError::invalid_request(err.to_string(), err.param())
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.retry_headers() {
            headers.insert(name, value);
        }
        response
    }
}

/// `error`'s text followed by each of its causes, joined by ": ". HTTP clients keep the
/// useful part apart ("client error (Connect)" alone says nothing; its source says
/// "connection refused"), so messages for people read the whole chain.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(err: GatewayError) -> (u16, Vec<(String, String)>, Value) {
        let response = err.into_response();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str() != "content-length")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
        all.extend(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        all
    }

    #[test]
    fn every_row_of_the_design_table() {
        let s = Duration::from_secs;
        let rows = [
            (
                GatewayError::model_not_found("x", None),
                404,
                "model_not_found",
                h(&[]),
            ),
            (
                GatewayError::budget_exceeded("spent"),
                429,
                "budget_exceeded",
                h(&[("x-should-retry", "false")]),
            ),
            (
                GatewayError::no_viable_backend("none", None),
                503,
                "no_viable_backend",
                h(&[("x-should-retry", "false")]),
            ),
            (
                GatewayError::no_viable_backend("loading", Some(Duration::from_millis(1500))),
                503,
                "no_viable_backend",
                h(&[("retry-after-ms", "1500"), ("retry-after", "2")]),
            ),
            (
                GatewayError::queue_timeout(s(5), s(1)),
                503,
                "queue_timeout",
                h(&[("retry-after-ms", "1000"), ("retry-after", "1")]),
            ),
            (
                GatewayError::queue_full(64, Duration::ZERO),
                503,
                "queue_full",
                h(&[("retry-after-ms", "1"), ("retry-after", "1")]),
            ),
            (
                GatewayError::invalid_request("bad", Some("model")),
                400,
                "invalid_request",
                h(&[]),
            ),
            (
                GatewayError::invalid_api_key(),
                401,
                "invalid_api_key",
                h(&[]),
            ),
            (
                GatewayError::upstream_error("boom"),
                502,
                "upstream_error",
                h(&[]),
            ),
            (
                GatewayError::upstream_rate_limited("slow down", Some(s(2))),
                429,
                "rate_limit_exceeded",
                h(&[("retry-after-ms", "2000"), ("retry-after", "2")]),
            ),
            (
                GatewayError::upstream_rate_limited("slow down", None),
                429,
                "rate_limit_exceeded",
                h(&[]),
            ),
        ];
        for (err, status, code, headers) in rows {
            let message = err.message().to_owned();
            let (got_status, got_headers, body) = parts(err);
            assert_eq!(got_status, status, "{code}");
            assert_eq!(got_headers, headers, "{code}");
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["message"], message.as_str());
            assert!(body["error"]["type"].is_string());
            assert!(
                body["error"].get("param").is_some(),
                "param is always present"
            );
            assert!(body["error"].get("nexus").is_none());
        }
    }

    #[test]
    fn the_decision_rides_under_error_nexus() {
        let decision = json!({"decision": "reject", "rejections": [{"backend": "openai"}]});
        let err =
            GatewayError::no_viable_backend("all excluded", None).with_decision(decision.clone());
        let (_, _, body) = parts(err);
        assert_eq!(body["error"]["nexus"], decision);
        assert_eq!(body["error"]["param"], Value::Null);
    }

    #[test]
    fn wire_errors_are_invalid_requests_naming_the_param() {
        let wire = crate::wire::RequestBody::parse(crate::wire::Endpoint::ChatCompletions, b"{}")
            .unwrap_err();
        let err = GatewayError::from(wire);
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.param(), Some("model"));
        let (status, _, body) = parts(err);
        assert_eq!(status, 400);
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn the_api_key_message_never_holds_a_key() {
        let err = GatewayError::invalid_api_key();
        assert_eq!(err.code().status(), StatusCode::UNAUTHORIZED);
        assert!(!err.message().contains("sk-"));
    }
}
