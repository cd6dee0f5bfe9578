//! The mock's routes: record the request, play the fault, answer.
//!
//! Bodies are streams of pieces so that a fault can stop between any two of them, and so
//! that a reset can be a real TCP reset: the body raises the connection's reset flag
//! before it fails, and the connection ([`crate::server`]) closes with a zero linger.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use serde_json::Value;

use crate::config::{Fault, MockConfig, Recorded};
use crate::openai::{self, Answer, Asked, Piece};
use crate::Shared;

/// The pause before a reset fault resets.
const RESET_GRACE: Duration = Duration::from_millis(100);

/// The flag a connection checks when it closes: set, it resets instead of closing.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnReset(pub(crate) Arc<AtomicBool>);

/// The mock's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(listing))
        .route("/api/tags", get(listing))
        .route("/api/ps", get(listing))
        .fallback(unknown)
        .with_state(shared)
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
    Embeddings,
}

async fn chat(
    state: State<Arc<Shared>>,
    reset: Extension<ConnReset>,
    request: Request,
) -> Response {
    inference(Kind::Chat, state, reset, request).await
}

async fn completions(
    state: State<Arc<Shared>>,
    reset: Extension<ConnReset>,
    request: Request,
) -> Response {
    inference(Kind::Completion, state, reset, request).await
}

async fn embeddings(
    state: State<Arc<Shared>>,
    reset: Extension<ConnReset>,
    request: Request,
) -> Response {
    inference(Kind::Embeddings, state, reset, request).await
}

/// Records a request and returns its number (from 1) and the config to answer it with.
async fn record(shared: &Shared, request: Request) -> (u64, MockConfig, Bytes) {
    let (parts, body) = request.into_parts();
    // A body that fails to arrive is recorded as empty; the answer will be a 400.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let config = shared.config();
    let id = shared.count(config.record.then(|| Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: body.clone(),
    }));
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    (id, config, body)
}

async fn inference(
    kind: Kind,
    State(shared): State<Arc<Shared>>,
    Extension(reset): Extension<ConnReset>,
    request: Request,
) -> Response {
    let (id, config, body) = record(&shared, request).await;
    let fault = shared.take_fault();
    match &fault {
        Some(Fault::HangBeforeHeaders) => std::future::pending::<()>().await,
        Some(Fault::Status {
            status,
            headers,
            body,
        }) => return status_answer(*status, headers, body.as_deref()),
        Some(Fault::NonJson) => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response()
        }
        _ => {}
    }

    let refuse = |status, message: &str, code| {
        json_response(
            status,
            &openai::error_json(message, "invalid_request_error", code),
        )
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        let message = "We could not parse the JSON body of your request.";
        return refuse(StatusCode::BAD_REQUEST, message, None);
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        let message = "you must provide a model parameter";
        return refuse(StatusCode::BAD_REQUEST, message, None);
    };
    if !config.models.is_empty() && !config.models.iter().any(|m| m == model) {
        let message =
            format!("The model `{model}` does not exist or you do not have access to it.");
        return refuse(StatusCode::NOT_FOUND, &message, Some("model_not_found"));
    }
    let asked = Asked {
        model,
        stream: request.get("stream") == Some(&Value::Bool(true)),
        include_usage: request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)),
        id,
    };
    let malformed = fault == Some(Fault::MalformedSse);
    let answer = match kind {
        Kind::Chat => openai::chat(&config, &asked, malformed),
        Kind::Completion => openai::completion(&config, &asked, malformed),
        Kind::Embeddings => {
            let inputs = match request.get("input") {
                // An array of token ids is one input; an array of strings or of id arrays is many.
                Some(Value::Array(items)) if !items.first().is_some_and(Value::is_number) => {
                    items.len()
                }
                _ => 1,
            };
            openai::embeddings(&config, model, inputs)
        }
    };
    send(answer, fault, &config, &shared, reset)
}

fn status_answer(status: u16, headers: &[(String, String)], body: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match body {
        Some(body) => (status, body.to_owned()).into_response(),
        None => {
            let message = format!("mock upstream answers {status}");
            let kind = if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            };
            json_response(status, &openai::error_json(&message, kind, None))
        }
    };
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Sends an answer as a streamed body, cut or slowed as the fault says.
fn send(
    answer: Answer,
    fault: Option<Fault>,
    config: &MockConfig,
    shared: &Arc<Shared>,
    reset: ConnReset,
) -> Response {
    enum Cut {
        Hang,
        Reset,
    }
    // A JSON body has two pieces, its halves: any cut after the first is after the first.
    let at = |after: usize| {
        if answer.is_stream {
            after
        } else {
            after.min(1)
        }
    };
    let (cut, trickle) = match fault {
        Some(Fault::HangMidStream { after_events }) => (Some((at(after_events), Cut::Hang)), None),
        Some(Fault::ResetMidStream { after_events }) => {
            (Some((at(after_events), Cut::Reset)), None)
        }
        Some(Fault::Trickle { interval }) => (None, Some(interval)),
        _ => (None, None),
    };
    let pace = match trickle {
        Some(interval) => interval,
        None if answer.is_stream => config.chunk_interval,
        None => Duration::ZERO,
    };
    if !answer.is_stream && cut.is_none() && trickle.is_none() {
        // A JSON answer with no fault in its body goes out whole, with its length, as
        // the servers it stands for send one (uvicorn, Go's net/http, llama.cpp).
        let mut body = Vec::new();
        for piece in answer.pieces {
            if let Some(usage) = piece.declares {
                shared.declare(usage);
            }
            body.extend_from_slice(&piece.bytes);
        }
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = answer.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(answer.content_type),
        );
        return response;
    }
    let pieces: std::collections::VecDeque<Piece> = if trickle.is_some() {
        answer.pieces.into_iter().flat_map(bytewise).collect()
    } else {
        answer.pieces.into_iter().collect()
    };

    struct Sending {
        pieces: std::collections::VecDeque<Piece>,
        sent: usize,
        over: bool,
    }
    let shared = Arc::clone(shared);
    let start = Sending {
        pieces,
        sent: 0,
        over: false,
    };
    let stream = futures_util::stream::unfold(start, move |mut s| {
        let shared = Arc::clone(&shared);
        let reset = reset.clone();
        let cut = cut.as_ref().map(|(n, c)| (*n, matches!(c, Cut::Reset)));
        async move {
            if s.over {
                return None;
            }
            match cut {
                Some((n, false)) if s.sent == n => std::future::pending::<()>().await,
                Some((n, true)) if s.sent == n => {
                    // A reset throws away whatever the peer has not read yet: give it a
                    // moment to read what was sent, so that the reset is mid-stream.
                    tokio::time::sleep(RESET_GRACE).await;
                    reset.0.store(true, Ordering::SeqCst);
                    s.over = true;
                    let err = io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "mock upstream resets the stream",
                    );
                    return Some((Err(err), s));
                }
                _ => {}
            }
            let piece = s.pieces.pop_front()?;
            if s.sent > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            if let Some(usage) = piece.declares {
                shared.declare(usage);
            }
            s.sent += 1;
            Some((Ok::<Bytes, io::Error>(piece.bytes), s))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    if answer.is_stream {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// A piece as one piece per byte; the usage counts with the last byte.
fn bytewise(piece: Piece) -> Vec<Piece> {
    let last = piece.bytes.len().saturating_sub(1);
    (0..piece.bytes.len())
        .map(|i| Piece {
            bytes: piece.bytes.slice(i..=i),
            declares: if i == last { piece.declares } else { None },
        })
        .collect()
}

async fn listing(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let (_, config, _) = record(&shared, request).await;
    if shared.listings_failing() {
        let message = "mock upstream: listings are failing";
        let body = openai::error_json(message, "server_error", None);
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let body = match path.as_str() {
        "/api/tags" => openai::ollama_tags(&config),
        "/api/ps" => openai::ollama_ps(&config),
        _ => openai::models(&config),
    };
    json_response(StatusCode::OK, &body)
}

async fn unknown(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    let method = request.method().clone();
    record(&shared, request).await;
    let status = if method == Method::GET || method == Method::POST {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    let message = format!("mock upstream does not serve {what}");
    json_response(
        status,
        &openai::error_json(&message, "invalid_request_error", None),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
