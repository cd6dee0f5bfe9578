//! The axum handlers: thin functions over the shared [`Gateway`] state. Proxied
//! endpoints hand over to [`crate::proxy`]; the rest answer from the router's state.

use std::any::Any;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use nexus_core::fleet::BackendStatus;
use nexus_router::DecisionReport;
use serde_json::{json, Value};

use crate::proxy::{self, Exchange};
use crate::wire::Endpoint;
use crate::{ErrorCode, Gateway, GatewayError};

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(gateway): State<Gateway>, request: Request) -> Response {
    proxied(gateway, Endpoint::ChatCompletions, request).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(gateway): State<Gateway>, request: Request) -> Response {
    proxied(gateway, Endpoint::Completions, request).await
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(gateway): State<Gateway>, request: Request) -> Response {
    proxied(gateway, Endpoint::Embeddings, request).await
}

/// A proxied request, its headers taken rather than cloned (axum's `HeaderMap`
/// extractor copies them). Not boxed here: both callers box it already (axum boxes a
/// handler's future, and [`crate::serve()`] the future of every request it serves), so
/// it lives on the heap only until the answer's headers, not for the whole stream.
async fn proxied(gateway: Gateway, endpoint: Endpoint, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    proxy::handle(gateway, endpoint, parts.headers, body).await
}

/// The proxied endpoint `method` and `path` name, if any: what [`Gateway::app`] routes
/// to [`chat_completions`], [`completions`] and [`embeddings`].
pub(crate) fn proxied_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    if method != Method::POST {
        return None;
    }
    Endpoint::ALL.into_iter().find(|e| e.path() == path)
}

/// A proxied endpoint served straight from the connection, as [`Gateway::app`] would
/// serve it (a panic included: a 500 in the OpenAI shape), without axum's routing and
/// layers (about 5 000 instructions a request; see [`crate::serve`]).
pub(crate) async fn proxied_direct(
    gateway: Gateway,
    endpoint: Endpoint,
    request: Request,
) -> Result<Response, std::convert::Infallible> {
    use futures_util::FutureExt as _;
    let answer = std::panic::AssertUnwindSafe(proxied(gateway, endpoint, request))
        .catch_unwind()
        .await;
    Ok(answer.unwrap_or_else(panic_response))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /v1/models`: every served model and every alias, in OpenAI's list shape.
pub(crate) async fn models(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(refusal) = crate::auth::caller(&gateway, &headers) {
        return refusal.into_response();
    }
    let router = gateway.router();
    let pipeline = router.pipeline();
    let mut names: Vec<&str> = pipeline.routes().names().collect();
    names.sort_unstable();
    let data: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let mut entry =
                json!({"id": name, "object": "model", "created": 0, "owned_by": "nexus"});
            if let Some(plan) = pipeline.routes().plan(name) {
                let chain: Vec<&str> = plan.alias_chain().collect();
                if chain.len() > 1 {
                    entry["nexus_alias_of"] = json!(chain.last());
                }
            }
            entry
        })
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `POST /v1/nexus/route`: the decision for a chat request, as `nexus route --format
/// json` prints it. Nothing is sent upstream and whatever was committed is cancelled.
pub(crate) async fn route(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut x = Exchange::new(gateway.clone(), Endpoint::ChatCompletions, &headers);
    let answer = async {
        x.authenticate(&headers)?;
        let bytes = proxy::read(&gateway, &headers, body).await?;
        let parsed = x.parse(&bytes)?;
        let summary = parsed.summary();
        let request = x.request(summary, &[]);
        let mut decision = gateway.live_router().route_owned(&request);
        if let Some(guard) = decision.take_guard() {
            guard.cancel();
        }
        let report = DecisionReport::new(&summary.model, &decision);
        Ok::<_, GatewayError>(
            (
                [(header::CONTENT_TYPE, "application/json")],
                report.to_json(),
            )
                .into_response(),
        )
    }
    .await;
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    response
        .headers_mut()
        .insert("x-request-id", x.request_id.clone());
    response
}

/// `GET /v1/nexus/backends`: each backend's id, zone, status, in flight, latency, error
/// rate and circuit.
pub(crate) async fn backends(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(refusal) = crate::auth::caller(&gateway, &headers) {
        return refusal.into_response();
    }
    let router = gateway.router();
    let fleet = router.fleet();
    let quality = router
        .pipeline()
        .stage_of::<nexus_router::quality::QualityReconciler>();
    let now = quality.map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        },
        |q| q.tracker().now_secs(),
    );
    let list: Vec<Value> = fleet
        .backends()
        .iter()
        .map(|backend| {
            let live = backend.live();
            let (error_rate, circuit) = match quality {
                Some(q) => {
                    let tracker = q.tracker();
                    let rate = tracker
                        .stats_at(backend.id(), now)
                        .map(|s| s.error_rate_1h());
                    let circuit = match tracker.circuit_at(backend.id(), now) {
                        nexus_router::quality::Circuit::Closed => json!({"state": "closed"}),
                        nexus_router::quality::Circuit::Open { seconds_left, .. } => {
                            json!({"state": "open", "seconds_left": seconds_left})
                        }
                        nexus_router::quality::Circuit::HalfOpen { .. } => {
                            json!({"state": "half_open"})
                        }
                        nexus_router::quality::Circuit::Probing { .. } => {
                            json!({"state": "probing"})
                        }
                    };
                    (json!(rate), circuit)
                }
                None => (Value::Null, Value::Null),
            };
            let models: Vec<&str> = backend
                .models()
                .iter()
                .map(|m| fleet.model(*m).name())
                .collect();
            json!({
                "id": backend.name(),
                "type": backend.kind().as_str(),
                "zone": backend.zone().as_str(),
                "status": live.status().as_str(),
                "in_flight": live.in_flight(),
                "max_concurrency": backend.max_concurrency(),
                "latency_ms": live.latency_ewma_ms(now),
                "error_rate": error_rate,
                "circuit": circuit,
                "models": models,
                "loaded_models": gateway.loaded_models(backend),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"backends": list}))
}

/// `POST /v1/nexus/reload`: reloads the config file with the admin key
/// (`Authorization: Bearer KEY`, the key in the variable `[server] admin_key_env`
/// names). 200 with the summary; 401 without the key; 403 when no admin key is
/// configured; 422 `invalid_config` when the file is invalid (the running config stays),
/// with the error's place under `error.nexus`.
pub(crate) async fn reload(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // The configured key is never empty, so no key presented never matches.
    match gateway.is_admin_key(presented.unwrap_or("")) {
        None => {
            return GatewayError::new(
                ErrorCode::AdminDisabled,
                "admin endpoints are off: no admin key is configured; set [server] admin_key_env to the name of an environment variable holding one, and restart",
            )
            .into_response();
        }
        Some(true) => {}
        Some(false) => return GatewayError::invalid_api_key().into_response(),
    }
    let worker = gateway.clone();
    let result = tokio::task::spawn_blocking(move || worker.reload()).await;
    match result {
        Ok(Ok(summary)) => {
            let mut body = serde_json::to_value(&summary).unwrap_or_default();
            body["reloaded"] = json!(true);
            json_response(StatusCode::OK, &body)
        }
        Ok(Err(error)) => {
            let (line, column) = error.position.unzip();
            GatewayError::new(ErrorCode::InvalidConfig, error.to_string())
                .with_decision(json!({
                    "file": error.file,
                    "line": line,
                    "column": column,
                    "message": error.message,
                    "help": error.help,
                }))
                .into_response()
        }
        Err(join) => GatewayError::new(
            ErrorCode::InvalidConfig,
            format!("the reload failed: {join}; the running config stays"),
        )
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response(),
    }
}

/// `GET /health`: 200 while the process serves.
pub(crate) async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /ready`: 200 when a backend is healthy, else 503.
pub(crate) async fn ready(State(gateway): State<Gateway>) -> Response {
    let router = gateway.router();
    let fleet = router.fleet();
    let healthy: Vec<&str> = fleet
        .backends()
        .iter()
        .filter(|b| b.live().status() == BackendStatus::Healthy)
        .map(|b| b.name())
        .collect();
    let status = if healthy.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(
        status,
        &json!({"ready": !healthy.is_empty(), "healthy_backends": healthy}),
    )
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) async fn metrics(State(gateway): State<Gateway>) -> Response {
    match crate::metrics::render(&gateway) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => GatewayError::upstream_error(
            "another metrics recorder owns this process; its exporter serves the metrics",
        )
        .with_status(StatusCode::NOT_FOUND)
        .into_response(),
    }
}

/// Any other path: 404 in the OpenAI error shape.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    GatewayError::invalid_request(
        format!(
            "{method} {} is not served here; the gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models and /v1/nexus/*",
            uri.path()
        ),
        None,
    )
    .with_status(StatusCode::NOT_FOUND)
    .into_response()
}

/// A handler's panic, answered as a 500 in the OpenAI error shape.
pub(crate) fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    GatewayError::upstream_error("internal error in the gateway")
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}

/// `GET /v1/nexus/budget`: the month, and the limit, settled, reserved and remaining
/// spend, globally and per tenant. A tenant's key sees its own entry (and the global
/// one); the admin key sees every tenant; with neither tenants nor an admin key
/// configured the endpoint is open, like `/v1/nexus/backends`.
pub(crate) async fn budget(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    use crate::auth::Caller;
    let caller = match crate::auth::caller(&gateway, &headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    // An admin key configured closes the endpoint to anyone else, tenants or not.
    if caller == Caller::Anyone && gateway.server().admin_key_env.is_some() {
        return GatewayError::new(
            crate::ErrorCode::InvalidApiKey,
            "GET /v1/nexus/budget needs the admin key: send `Authorization: Bearer <key>` with the key in [server] admin_key_env",
        )
        .into_response();
    }
    json_response(StatusCode::OK, &budget_json(&gateway, caller))
}

fn budget_json(gateway: &Gateway, caller: crate::auth::Caller) -> Value {
    let router = gateway.router();
    let budget = router
        .pipeline()
        .stage_of::<nexus_router::budget::BudgetReconciler>();
    let Some(budget) = budget else {
        // No budget stage: nothing is counted, nothing is limited.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let month = nexus_router::budget::Month::from_unix_secs(now);
        return json!({
            "month": month.to_string(),
            "global": {"limit_usd": null, "settled_usd": 0.0, "reserved_usd": 0.0,
                       "remaining_usd": null, "shared": "local"},
            "tenants": [],
        });
    };
    let snapshot = budget.ledger().snapshot();
    let limit = budget.settings().monthly_limit_usd;
    let entry = |limit: Option<f64>, s: &nexus_router::budget::SpendSnapshot| {
        json!({
            "limit_usd": limit,
            "settled_usd": round_usd(s.settled_usd + s.external_usd),
            "reserved_usd": round_usd(s.reserved_usd),
            "remaining_usd": limit.map(|l| round_usd((l - s.total_usd).max(0.0))),
            "external_usd": round_usd(s.external_usd),
        })
    };
    let mut global = entry(limit, &snapshot);
    #[cfg(feature = "redis")]
    let shared = if budget.lease().is_some() {
        "redis"
    } else {
        "local"
    };
    #[cfg(not(feature = "redis"))]
    let shared = "local";
    global["shared"] = json!(shared);
    let tenants: Vec<Value> = budget
        .tenant_spend()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| match caller {
            crate::auth::Caller::Tenant(id) => id.index() == *i,
            _ => true,
        })
        .map(|(_, t)| {
            let mut value = entry(t.limit_usd, &t.snapshot);
            value["id"] = json!(t.id);
            value
        })
        .collect();
    json!({"month": snapshot.month.to_string(), "global": global, "tenants": tenants})
}

/// Amounts to the nano-dollar the ledger counts in, without float noise in the JSON.
fn round_usd(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}
