//! [`Gateway`]: what every request shares (the router, the upstream client, the queue,
//! the backends' keys and health) and the axum app that serves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::http::{HeaderValue, Uri};
use axum::routing::{get, post};
use nexus_core::{fleet::Backend, Fleet};
use nexus_router::{ConfigError, HealthConfig, LiveRouter, ReloadSummary, Router, ServerConfig};

use crate::queue::Queue;
use crate::wire::Endpoint;

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
    pub(crate) router: LiveRouter,
    pub(crate) client: crate::upstream::Client,
    pub(crate) queue: Queue,
    /// Each backend's key and parsed endpoint URLs by backend id, built at the start and
    /// at each reload (so that a request decided on either config finds its backend).
    upstreams: ArcSwap<HashMap<String, Upstream>>,
    /// The models each Ollama backend reported loaded at its last health check, by
    /// backend id.
    loaded: Mutex<HashMap<String, Vec<String>>>,
    /// Told after each reload, so that the health checker checks new backends at once.
    pub(crate) reloaded: tokio::sync::Notify,
    /// For request ids: the process's start in microseconds, then a counter.
    started_micros: u64,
    requests: AtomicU64,
    /// The admin key's digest, from the variable `[server] admin_key_env` names; `None`
    /// when unset: then admin endpoints are off.
    pub(crate) admin_key: Option<crate::auth::AdminKey>,
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The upstream HTTP client could not be built (its TLS set-up, for one).
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] crate::upstream::ClientError),
    /// A proxy variable (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`) is set to something
    /// that is not a proxy URL the client can use.
    #[error("cannot use the egress proxy: {0}")]
    Proxy(#[from] crate::upstream::ProxyError),
}

/// Warns, once at start, of each backend on this host's loopback that the proxy
/// variables send through a proxy: a proxy elsewhere reaches its own loopback, not this
/// one, so such a backend is usually a `NO_PROXY` that lacks `127.0.0.1` or
/// `localhost` (curl's rule, which the gateway keeps: loopback is not exempt by itself).
fn warn_loopback_through_proxy(fleet: &nexus_core::Fleet, proxies: &crate::upstream::ProxyConfig) {
    for backend in fleet.backends() {
        let Ok(uri) = backend.url().parse::<axum::http::Uri>() else {
            continue;
        };
        if !is_loopback_host(uri.host().unwrap_or_default()) {
            continue;
        }
        if let Some(proxy) = proxies.proxy_for(&uri) {
            tracing::warn!(
                backend = backend.name(),
                url = backend.url(),
                proxy,
                "a backend on this host's loopback goes through the egress proxy; unless that \
                 proxy runs on this host, add the backend's host to NO_PROXY \
                 (e.g. NO_PROXY=127.0.0.1,localhost,::1)"
            );
        }
    }
}

/// `localhost` (or a name under it), or a loopback address (`127.0.0.0/8`, `::1`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Gateway {
    /// A gateway over `router`, with the `[server]` settings it was loaded with. Reads
    /// each backend's `api_key_env` now; a variable that is not set is logged (by name)
    /// and the backend is sent no key. Reads the egress proxy variables now, as
    /// [`reloadable`](Self::reloadable) does.
    ///
    /// # Errors
    ///
    /// When the upstream client cannot be built, or a proxy variable is not a proxy URL.
    ///
    /// A gateway built this way has no config file to reload: `POST /v1/nexus/reload`
    /// says so. Use [`Gateway::reloadable`] for one that reloads.
    pub fn new(router: Router) -> Result<Gateway, BuildError> {
        Self::reloadable(LiveRouter::new(Router::builder(), router, None))
    }

    /// A gateway over a [`LiveRouter`]: SIGHUP, a change of its config file (while
    /// [`serve`](crate::serve) runs) and `POST /v1/nexus/reload` reload it. The
    /// `[server]` and `[health]` settings are those it was first loaded with. Backends
    /// are reached through the egress proxies the environment names (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; see [`ProxyConfig::from_env`]), read now.
    ///
    /// [`ProxyConfig::from_env`]: crate::upstream::ProxyConfig::from_env
    ///
    /// # Errors
    ///
    /// When the upstream client cannot be built, or a proxy variable is not a proxy URL.
    pub fn reloadable(router: LiveRouter) -> Result<Gateway, BuildError> {
        Self::reloadable_with_proxy(router, crate::upstream::ProxyConfig::from_env()?)
    }

    /// [`reloadable`](Self::reloadable), with the egress proxies given rather than read
    /// from the environment ([`ProxyConfig::none`] for none).
    ///
    /// [`ProxyConfig::none`]: crate::upstream::ProxyConfig::none
    ///
    /// # Errors
    ///
    /// When the upstream client cannot be built.
    pub fn reloadable_with_proxy(
        router: LiveRouter,
        proxies: crate::upstream::ProxyConfig,
    ) -> Result<Gateway, BuildError> {
        let server = router.server();
        if !proxies.is_direct() {
            tracing::info!(proxies = %proxies, "reaching backends through an egress proxy");
            warn_loopback_through_proxy(router.current().fleet(), &proxies);
        }
        // A backend's URL is where it answers: the client relays a redirect to the client
        // as any other answer rather than following it.
        let client = crate::upstream::client_builder()
            .connect_timeout(server.connect_timeout())
            .pool_idle_timeout(Some(Duration::from_secs(90)))
            .proxy(proxies)
            .build()?;
        let upstreams = ArcSwap::from_pointee(read_upstreams(router.current().fleet()));
        let loaded = Mutex::new(HashMap::new());
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
                upstreams,
                loaded,
                reloaded: tokio::sync::Notify::new(),
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
            .route("/v1/nexus/reload", post(e::reload))
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

    /// The router deciding now; a reload replaces it, and whoever holds this one keeps
    /// its config.
    pub fn router(&self) -> Arc<Router> {
        self.shared.router.current()
    }

    /// The reloadable router.
    pub fn live_router(&self) -> &LiveRouter {
        &self.shared.router
    }

    /// The `[server]` settings in force: those of the config first loaded (a reload
    /// reports changes to them as needing a restart).
    pub fn server(&self) -> &ServerConfig {
        self.shared.router.server()
    }

    /// The `[health]` settings in force: those of the config first loaded.
    pub fn health(&self) -> &HealthConfig {
        self.shared.router.health()
    }

    /// Reloads the config file: validates it completely and, if it is valid, swaps it
    /// in (kept backends keep their live state; spend is never reset), re-reads the
    /// backends' API keys, wakes the queue to decide again on the new config and has
    /// the health checker check new backends. If it is not, the running config stays;
    /// the error is logged and returned. Blocking (it reads and builds): call it from a
    /// blocking thread in async code.
    ///
    /// # Errors
    ///
    /// The config's error, at its FILE:LINE:COLUMN, with how to fix it.
    pub fn reload(&self) -> Result<ReloadSummary, ConfigError> {
        let result = self.shared.router.reload();
        self.after_reload(&result);
        result
    }

    /// Reloads from config text rather than the file; see [`reload`](Self::reload).
    ///
    /// # Errors
    ///
    /// The config's error, at its LINE:COLUMN in `text`, with how to fix it.
    pub fn reload_str(&self, name: &str, text: &str) -> Result<ReloadSummary, ConfigError> {
        let result = self.shared.router.reload_str(name, text);
        self.after_reload(&result);
        result
    }

    fn after_reload(&self, result: &Result<ReloadSummary, ConfigError>) {
        let summary = match result {
            Ok(summary) => summary,
            Err(error) => {
                tracing::error!(error = %error, "reload refused; the running config stays");
                return;
            }
        };
        let router = self.router();
        self.shared
            .upstreams
            .store(Arc::new(read_upstreams(router.fleet())));
        self.shared
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| router.fleet().backend_by_name(name).is_some());
        tracing::info!(
            file = %summary.file,
            generation = summary.generation,
            kept = summary.backends_kept.len(),
            added = ?summary.backends_added,
            removed = ?summary.backends_removed,
            models = summary.models,
            "config reloaded"
        );
        for warning in &summary.warnings {
            tracing::warn!("{warning}");
        }
        for key in &summary.restart_required {
            tracing::warn!("needs a restart to take effect, running value kept: {key}");
        }
        self.shared.reloaded.notify_one();
        self.wake_queue();
    }

    /// Whether `presented` is the admin key (compared in constant time); `None` when
    /// no admin key is configured.
    pub(crate) fn is_admin_key(&self, presented: &str) -> Option<bool> {
        Some(self.shared.admin_key.as_ref()?.matches(presented))
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
    pub(crate) fn key_of(&self, backend: &Backend) -> Option<HeaderValue> {
        self.shared
            .upstreams
            .load()
            .get(backend.name())?
            .key
            .clone()
    }

    /// What a request to `backend`'s `endpoint` needs, from one lookup: the URI parsed
    /// when the config was loaded (`None` if it did not parse, or if the backend's URL
    /// is not the one of the config in force, a request decided before a reload that
    /// moved it: the request then parses the text) and the backend's key.
    pub(crate) fn target_of(
        &self,
        backend: &Backend,
        endpoint: Endpoint,
    ) -> (Option<Uri>, Option<HeaderValue>) {
        let upstreams = self.shared.upstreams.load();
        let Some(upstream) = upstreams.get(backend.name()) else {
            return (None, None);
        };
        let url = Endpoint::ALL
            .iter()
            .position(|e| *e == endpoint)
            .filter(|_| upstream.base == backend.url())
            .and_then(|index| upstream.targets[index].clone());
        (url, upstream.key.clone())
    }

    /// Calls `f` with `backend`'s metric handles: `None` when the config in force has
    /// none for it (a request decided before a reload that removed or moved it), and
    /// the metrics then build their labels as they go.
    pub(crate) fn with_metrics<R>(
        &self,
        backend: &Backend,
        f: impl FnOnce(Option<&crate::metrics::BackendMetrics>) -> R,
    ) -> R {
        let upstreams = self.shared.upstreams.load();
        let cached = upstreams
            .get(backend.name())
            .map(|upstream| &upstream.metrics)
            .filter(|metrics| metrics.is_for(backend));
        f(cached)
    }

    /// The models an Ollama backend reported loaded at its last check.
    pub(crate) fn loaded_models(&self, backend: &Backend) -> Option<Vec<String>> {
        self.shared
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(backend.name())
            .cloned()
    }

    /// Records what an Ollama backend has loaded.
    pub(crate) fn set_loaded_models(&self, backend: &Backend, models: Option<Vec<String>>) {
        let mut loaded = self
            .shared
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match models {
            Some(models) => {
                loaded.insert(backend.name().to_owned(), models);
            }
            None => {
                loaded.remove(backend.name());
            }
        }
    }

    /// A new request id, unique in the process and unlikely to repeat across restarts:
    /// `req-`, the start time in microseconds and a counter, in hex. Written on the
    /// stack digit by digit: `format!` and a `String` cost a hundredth of a request.
    pub(crate) fn next_request_id(&self) -> HeaderValue {
        let n = self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 4 + 16 + 1 + 16];
        id[..4].copy_from_slice(b"req-");
        let mut len = 4 + push_hex(&mut id[4..], self.shared.started_micros);
        id[len] = b'-';
        len += 1;
        len += push_hex(&mut id[len..], n);
        HeaderValue::from_bytes(&id[..len]).unwrap_or(HeaderValue::from_static("req"))
    }
}

/// Writes `n` in lower-case hex at the start of `out` (16 bytes are enough for any
/// `u64`); returns the digits written.
fn push_hex(out: &mut [u8], n: u64) -> usize {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    digits
}

/// What the gateway needs to reach one backend, read when a config is loaded.
#[derive(Debug)]
struct Upstream {
    /// The backend's URL as configured, to tell whether `targets` are still its own.
    base: String,
    /// Its `Authorization` header, from `api_key_env`; marked sensitive so that no debug
    /// output shows it.
    key: Option<HeaderValue>,
    /// Its URI for each proxied endpoint ([`Endpoint::ALL`]'s order), parsed once here:
    /// parsing it per request was a tenth of the gateway's instructions.
    targets: [Option<Uri>; 3],
    /// Its metric handles, made at first use.
    metrics: crate::metrics::BackendMetrics,
}

/// Each backend's [`Upstream`], by id.
fn read_upstreams(fleet: &Fleet) -> HashMap<String, Upstream> {
    let mut keys = read_keys(fleet);
    fleet
        .backends()
        .iter()
        .map(|backend| {
            let targets = Endpoint::ALL.map(|endpoint| {
                upstream_uri(&crate::proxy::upstream_url(backend.url(), endpoint.path())).ok()
            });
            let upstream = Upstream {
                base: backend.url().to_owned(),
                key: keys.remove(backend.name()),
                targets,
                metrics: crate::metrics::BackendMetrics::new(fleet, backend),
            };
            (backend.name().to_owned(), upstream)
        })
        .collect()
}

/// `text` as the URI a request is sent to: parsed as a URL first (as the config's check
/// did), so that what that parser accepts and normalises (an international host name, a
/// space in a path) reaches the backend in its ASCII form.
pub(crate) fn upstream_uri(text: &str) -> Result<Uri, String> {
    let url = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL ({e})"))?;
    Uri::try_from(url.as_str()).map_err(|e| format!("'{text}' is not an HTTP URI ({e})"))
}

/// Each backend's `Authorization` header from its `api_key_env`; a variable that is not
/// set is logged (by name) and the backend is sent no key.
fn read_keys(fleet: &Fleet) -> HashMap<String, HeaderValue> {
    let mut keys = HashMap::new();
    for backend in fleet.backends() {
        let Some(var) = backend.api_key_env() else {
            continue;
        };
        match std::env::var(var) {
            Ok(key) if !key.is_empty() => match HeaderValue::try_from(format!("Bearer {key}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    keys.insert(backend.name().to_owned(), value);
                }
                Err(_) => {
                    tracing::warn!(backend = backend.name(), var, "the API key holds characters a header cannot carry; the backend is sent no key");
                }
            },
            _ => {
                tracing::warn!(
                    backend = backend.name(),
                    var,
                    "api_key_env names a variable that is not set; the backend is sent no key"
                );
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_apart() {
        for host in [
            "localhost",
            "LOCALHOST",
            "api.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["gpu-box", "10.0.0.5", "[::2]", "localhost.example.com", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn request_ids_are_the_hex_of_the_start_and_the_counter() {
        for n in [0, 1, 0xf, 0x10, 0xabc, u64::from(u32::MAX), u64::MAX] {
            let mut out = [0u8; 16];
            let len = push_hex(&mut out, n);
            assert_eq!(&out[..len], format!("{n:x}").as_bytes());
        }
        let gateway = Gateway::new(Router::example().unwrap()).unwrap();
        let started = gateway.shared.started_micros;
        assert_eq!(gateway.next_request_id(), format!("req-{started:x}-0"));
        assert_eq!(gateway.next_request_id(), format!("req-{started:x}-1"));
    }

    #[test]
    fn upstream_uris_are_normalised_as_the_config_check_reads_them() {
        let uri = upstream_uri("http://Bücher.example:8080/v1/chat completions").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://xn--bcher-kva.example:8080/v1/chat%20completions"
        );
        assert_eq!(
            upstream_uri("https://api.openai.com/v1/embeddings")
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/embeddings"
        );
        let error = upstream_uri("http://[::1/v1").unwrap_err();
        assert!(error.contains("is not a URL"), "{error}");
    }
}
