//! The answers, in the OpenAI (and Ollama listing) wire format.
//!
//! An answer is a list of pieces, so that faults can cut it between pieces (a stream's
//! events, a JSON body's halves) and so that the usage counts as declared only when the
//! piece carrying it is sent. A JSON answer with no fault in its body is sent whole, with
//! its `content-length`.

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::{MockConfig, MockUsage};

/// A fixed creation time: answers are the same from run to run.
const CREATED: u64 = 1_700_000_000;

/// A part of a body, and the usage it declares.
pub(crate) struct Piece {
    pub(crate) bytes: Bytes,
    pub(crate) declares: Option<MockUsage>,
}

/// A whole answer before faults are applied.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) pieces: Vec<Piece>,
    /// Whether the pieces are stream events (else halves of one body).
    pub(crate) is_stream: bool,
}

impl Answer {
    /// A JSON answer, in two halves (for the faults that cut a body; without one it is sent
    /// whole); `declares` is counted with the second.
    pub(crate) fn json(status: StatusCode, body: &Value, declares: Option<MockUsage>) -> Answer {
        let bytes = Bytes::from(body.to_string());
        let half = bytes.len() / 2;
        Answer {
            status,
            content_type: "application/json",
            pieces: vec![
                Piece {
                    bytes: bytes.slice(..half),
                    declares: None,
                },
                Piece {
                    bytes: bytes.slice(half..),
                    declares,
                },
            ],
            is_stream: false,
        }
    }

    fn events(events: Vec<(Value, Option<MockUsage>)>, malformed: bool) -> Answer {
        let mut pieces = Vec::with_capacity(events.len() + 3);
        if malformed {
            for junk in [
                "data: {\"choices\": [{\"delta\": {\"content\": \"bro\n\n",
                "this line has no colon\n\n",
            ] {
                pieces.push(Piece {
                    bytes: Bytes::from_static(junk.as_bytes()),
                    declares: None,
                });
            }
        }
        for (event, declares) in events {
            pieces.push(Piece {
                bytes: Bytes::from(format!("data: {event}\n\n")),
                declares,
            });
        }
        pieces.push(Piece {
            bytes: Bytes::from_static(b"data: [DONE]\n\n"),
            declares: None,
        });
        Answer {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            pieces,
            is_stream: true,
        }
    }
}

/// OpenAI's error shape.
pub(crate) fn error_json(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn usage_json(usage: MockUsage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// The reply cut into `chunks` pieces on character boundaries.
fn reply_chunks(config: &MockConfig) -> Vec<String> {
    let chars: Vec<char> = config.reply.chars().collect();
    let size = chars.len().div_ceil(config.chunks.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// How a request asked to be answered.
pub(crate) struct Asked<'r> {
    pub(crate) model: &'r str,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) id: u64,
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat(config: &MockConfig, asked: &Asked<'_>, malformed: bool) -> Answer {
    let id = format!("chatcmpl-mock-{}", asked.id);
    let usage = config.usage;
    if !asked.stream {
        let body = json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": asked.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": config.reply},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": usage_json(usage),
        });
        return Answer::json(StatusCode::OK, &body, Some(usage));
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut event = json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": asked.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if asked.include_usage {
            event["usage"] = Value::Null; // as OpenAI does on every chunk but the last
        }
        (event, None)
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for text in reply_chunks(config) {
        events.push(chunk(json!({"content": text}), None));
    }
    events.push(chunk(json!({}), Some("stop")));
    if asked.include_usage {
        let last = json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": asked.model,
            "choices": [], "usage": usage_json(usage),
        });
        events.push((last, Some(usage)));
    }
    Answer::events(events, malformed)
}

/// `POST /v1/completions`.
pub(crate) fn completion(config: &MockConfig, asked: &Asked<'_>, malformed: bool) -> Answer {
    let id = format!("cmpl-mock-{}", asked.id);
    let usage = config.usage;
    if !asked.stream {
        let body = json!({
            "id": id, "object": "text_completion", "created": CREATED, "model": asked.model,
            "choices": [{"index": 0, "text": config.reply, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage_json(usage),
        });
        return Answer::json(StatusCode::OK, &body, Some(usage));
    }
    let chunk = |text: &str, finish: Option<&str>| {
        json!({
            "id": id, "object": "text_completion", "created": CREATED, "model": asked.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut events: Vec<(Value, Option<MockUsage>)> = reply_chunks(config)
        .iter()
        .map(|text| (chunk(text, None), None))
        .collect();
    events.push((chunk("", Some("stop")), None));
    if asked.include_usage {
        let last = json!({
            "id": id, "object": "text_completion", "created": CREATED, "model": asked.model,
            "choices": [], "usage": usage_json(usage),
        });
        events.push((last, Some(usage)));
    }
    Answer::events(events, malformed)
}

/// `POST /v1/embeddings`: one vector per input, the declared prompt tokens, no completion.
pub(crate) fn embeddings(config: &MockConfig, model: &str, inputs: usize) -> Answer {
    let usage = MockUsage {
        prompt_tokens: config.usage.prompt_tokens,
        completion_tokens: 0,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|index| {
            let vector: Vec<f64> = (0..config.embedding_dims)
                .map(|d| ((index + d) % 10) as f64 / 10.0)
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let body = json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    });
    Answer::json(StatusCode::OK, &body, Some(usage))
}

/// `GET /v1/models`.
pub(crate) fn models(config: &MockConfig) -> Value {
    let data: Vec<Value> = config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": CREATED, "owned_by": "nexus-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

fn ollama_model(name: &str, loaded: bool) -> Value {
    let mut model = json!({
        "name": name, "model": name, "size": 4_661_224_676_u64,
        "digest": "0000000000000000000000000000000000000000000000000000000000000000",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "8B",
                    "quantization_level": "Q4_0"},
    });
    if loaded {
        model["expires_at"] = json!("2099-01-01T00:00:00Z");
        model["size_vram"] = json!(4_661_224_676_u64);
    } else {
        model["modified_at"] = json!("2024-05-01T00:00:00Z");
    }
    model
}

/// Ollama's `GET /api/tags`: the models it has.
pub(crate) fn ollama_tags(config: &MockConfig) -> Value {
    let models: Vec<Value> = config
        .models
        .iter()
        .map(|m| ollama_model(m, false))
        .collect();
    json!({"models": models})
}

/// Ollama's `GET /api/ps`: the models loaded in memory.
pub(crate) fn ollama_ps(config: &MockConfig) -> Value {
    let loaded = config.loaded.as_ref().unwrap_or(&config.models);
    let models: Vec<Value> = loaded.iter().map(|m| ollama_model(m, true)).collect();
    json!({"models": models})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_is_cut_on_character_boundaries() {
        let config = MockConfig {
            reply: "héllo wörld".into(),
            chunks: 3,
            ..MockConfig::default()
        };
        let chunks = reply_chunks(&config);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), "héllo wörld");
        let one = MockConfig {
            chunks: 0,
            ..config
        };
        assert_eq!(reply_chunks(&one).len(), 1);
    }
}
