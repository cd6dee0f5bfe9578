//! [`Gateway`]: what every request shares (the router, the upstream client, the queue,
//! the backends' keys and health) and the axum app that serves it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use axum::routing::{get, post};
use nexus_core::BackendId;
use nexus_router::{HealthConfig, Router, ServerConfig};

use crate::queue::Queue;

/// A configured gateway: clone it freely (it is a handle), serve [`Gateway::app`] with
/// [`serve`](crate::serve), or mount the app in a larger axum server.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = nexus_router::Router::example()?;
/// let gateway = nexus_gateway::Gateway::new(router)?;
/// let app: axum::Router = gateway.app();
/// # drop(app);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

/// The state behind a [`Gateway`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) client: reqwest::Client,
    pub(crate) queue: Queue,
    /// Each backend's `Authorization` header, read once from its `api_key_env`; marked
    /// sensitive so that no debug output shows it.
    keys: Box<[Option<HeaderValue>]>,
    /// The models each Ollama backend reported loaded at its last health check.
    loaded: Box<[Mutex<Option<Vec<String>>>]>,
    /// For request ids: the process's start in microseconds, then a counter.
    started_micros: u64,
    requests: AtomicU64,
    /// The admin key's digest, from `[server] admin_key_env`.
    pub(crate) admin_key: Option<crate::auth::AdminKey>,
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The upstream HTTP client could not be built (no TLS roots, for one).
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Gateway {
    /// A gateway over `router`, with the `[server]` settings it was loaded with. Reads
    /// each backend's `api_key_env` now; a variable that is not set is logged (by name)
    /// and the backend is sent no key.
    ///
    /// # Errors
    ///
    /// When the upstream client cannot be built.
    pub fn new(router: Router) -> Result<Gateway, BuildError> {
        let server = router.server();
        let client = crate::upstream::client_builder()
            .connect_timeout(server.connect_timeout())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let keys = router
            .fleet()
            .backends()
            .iter()
            .map(|backend| {
                let var = backend.api_key_env()?;
                match std::env::var(var) {
                    Ok(key) if !key.is_empty() => {
                        match HeaderValue::try_from(format!("Bearer {key}")) {
                            Ok(mut value) => {
                                value.set_sensitive(true);
                                Some(value)
                            }
                            Err(_) => {
                                tracing::warn!(backend = backend.name(), var, "the API key holds characters a header cannot carry; the backend is sent no key");
                                None
                            }
                        }
                    }
                    _ => {
                        tracing::warn!(backend = backend.name(), var, "api_key_env names a variable that is not set; the backend is sent no key");
                        None
                    }
                }
            })
            .collect();
        let loaded = router
            .fleet()
            .backends()
            .iter()
            .map(|_| Mutex::new(None))
            .collect();
        let queue = Queue::new(server.max_queued);
        let started_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        crate::metrics::describe();
        let admin_key = crate::auth::AdminKey::from_env(server.admin_key_env.as_deref());
        Ok(Gateway {
            shared: Arc::new(Shared {
                router,
                client,
                queue,
                keys,
                loaded,
                started_micros,
                requests: AtomicU64::new(0),
                admin_key,
            }),
        })
    }

    /// The axum app: every endpoint of the HTTP contract.
    pub fn app(&self) -> axum::Router {
        use crate::endpoints as e;
        axum::Router::new()
            .route("/v1/chat/completions", post(e::chat_completions))
            .route("/v1/completions", post(e::completions))
            .route("/v1/embeddings", post(e::embeddings))
            .route("/v1/models", get(e::models))
            .route("/v1/nexus/route", post(e::route))
            .route("/v1/nexus/backends", get(e::backends))
            .route("/v1/nexus/budget", get(e::budget))
            .route("/health", get(e::health))
            .route("/ready", get(e::ready))
            .route("/metrics", get(e::metrics))
            .fallback(e::not_found)
            // A bug's panic becomes a 500 in the OpenAI error shape rather than a
            // connection closed without an answer.
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                e::panic_response,
            ))
            .with_state(self.clone())
    }

    /// The router that decides.
    pub fn router(&self) -> &Router {
        &self.shared.router
    }

    /// The `[server]` settings.
    pub fn server(&self) -> &ServerConfig {
        self.shared.router.server()
    }

    /// The `[health]` settings.
    pub fn health(&self) -> &HealthConfig {
        self.shared.router.health()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// Wakes queued requests to decide again: call it after changing a backend's
    /// status by hand (the health checker and finished requests do it themselves).
    pub fn wake_queue(&self) {
        self.shared.queue.wake();
    }

    /// The `Authorization` header for `backend`, if it has a key.
    pub(crate) fn key_of(&self, backend: BackendId) -> Option<&HeaderValue> {
        self.shared
            .keys
            .get(backend.index())
            .and_then(Option::as_ref)
    }

    /// The models an Ollama backend reported loaded at its last check.
    pub(crate) fn loaded_models(&self, backend: BackendId) -> Option<Vec<String>> {
        self.shared
            .loaded
            .get(backend.index())?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records what an Ollama backend has loaded.
    pub(crate) fn set_loaded_models(&self, backend: BackendId, models: Option<Vec<String>>) {
        if let Some(slot) = self.shared.loaded.get(backend.index()) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = models;
        }
    }

    /// A new request id, unique in the process and unlikely to repeat across restarts:
    /// the start time in microseconds and a counter.
    pub(crate) fn next_request_id(&self) -> String {
        let n = self.shared.requests.fetch_add(1, Ordering::Relaxed);
        format!("req-{:x}-{n:x}", self.shared.started_micros)
    }
}
