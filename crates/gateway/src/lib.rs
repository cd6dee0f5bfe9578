//! # nexus-gateway
//!
//! `nexus serve`, the OpenAI-compatible gateway that puts the Nexus routing pipeline in
//! front of real traffic (see the "Wave 2" half of the design): a [`Gateway`] over a
//! [`Router`](nexus_router::Router) gives an axum app, and [`serve`] runs it with health
//! checks and a graceful shutdown. The request path is a short list of named phases over
//! one per-request context (read -> decide -> send -> stream -> settle, see the `proxy`
//! and `relay` modules); the queue, the health checker and the metrics have a module
//! each. The parts of the path that do not depend on the router are public:
//!
//! - [`wire`]: reads an OpenAI request body into what routing needs
//!   ([`wire::RequestSummary`]) and rewrites it for the upstream, byte for byte except
//!   `model` and, for streams, `stream_options.include_usage`.
//! - [`sse`]: inspects an upstream's server-sent events as they pass through: usage,
//!   `[DONE]`, time to first token, malformed events; drops the usage chunk a client did
//!   not ask for.
//! - [`error`]: the one error type, answered in the OpenAI error shape with the statuses,
//!   codes and retry headers that the official OpenAI clients understand.
//! - [`upstream`]: the HTTP client for backends (HTTP/1.1, rustls with ring, the system's
//!   root certificates).
//!
//! ```
//! use nexus_gateway::wire::{Endpoint, RequestBody};
//!
//! let body = br#"{"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "stream": true}"#;
//! let request = RequestBody::parse(Endpoint::ChatCompletions, body)?;
//! assert_eq!(request.summary().model, "gpt-4");
//! let upstream = request.rewrite("llama3:70b");
//! assert_eq!(
//!     std::str::from_utf8(&upstream)?,
//!     r#"{"model": "llama3:70b", "messages": [{"role": "user", "content": "Hi"}], "stream": true,"stream_options":{"include_usage":true}}"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod endpoints;
pub mod error;
mod gateway;
mod health;
mod metrics;
mod proxy;
mod queue;
mod relay;
mod serve;
pub mod sse;
mod trace;
pub mod upstream;
mod watch;
pub mod wire;

pub use error::{ErrorCode, GatewayError, RetryAdvice};
pub use gateway::{BuildError, Gateway};
pub use metrics::METRIC_NAMES;
pub use serve::serve;
pub use watch::DEBOUNCE;
