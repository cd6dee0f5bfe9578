//! Active health checks: each backend's `status` comes from asking it, every
//! `[health] interval_secs`.
//!
//! An `openai` backend is asked `GET /v1/models` (`/models` under a URL that ends in
//! `/v1`); an `ollama` one `GET /api/tags`, and `GET /api/ps` for the models it has
//! loaded (shown by `/v1/nexus/backends`). A 2xx answer within `[health] timeout_ms` is
//! a success. `unhealthy_after` failures in a row make a backend unhealthy, one success
//! makes it healthy again. The first round, run before the gateway accepts requests, is
//! the exception: a backend that fails it is unhealthy at once, because its configured
//! status was only a guess, and a newcomer's first request should be told that nothing
//! is listening rather than wait through three intervals of failed attempts.
//!
//! An Ollama that has a model on disk but not in memory stays healthy: Ollama loads a
//! model on its first request, so calling it Loading would queue the very request that
//! makes it load. Every status change wakes the queue. The quality stage's circuit
//! breaker is the passive side of health and is left alone here.
//!
//! Each round checks the backends of the config in force: after a reload, the checker
//! runs a round at once, in which a backend new to it gets the first-round treatment;
//! a removed backend is no longer checked. The first and reload rounds ask every
//! backend at once; periodic rounds start their checks evenly over the first half of
//! the interval and apply each result as it arrives, so that a large fleet's checks are
//! not one burst every interval.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{header, Request};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http_body_util::BodyExt as _;
use nexus_core::fleet::{Backend, BackendKind, BackendStatus};
use serde::Deserialize;

use crate::proxy::upstream_url;
use crate::upstream::OutgoingBody;
use crate::Gateway;

/// The health of every backend as the checker keeps it.
#[derive(Debug)]
pub(crate) struct Checker {
    gateway: Gateway,
    /// Failed checks in a row, by backend id; a backend not in it has not been checked.
    failures: HashMap<String, u32>,
}

impl Checker {
    pub(crate) fn new(gateway: Gateway) -> Self {
        Checker {
            gateway,
            failures: HashMap::new(),
        }
    }

    /// Checks every backend of the config in force once, at the same time. `first`
    /// marks a failing backend unhealthy at once, as does a first check of a backend.
    pub(crate) async fn round(&mut self, first: bool) {
        let finished = self.spread_round(first, Duration::ZERO).await;
        debug_assert!(finished, "a round that is not spread is not interrupted");
    }

    /// Checks every backend of the config in force once, the `i`th of `n` starting
    /// `spread * i / n` after the round does, and applies each result as it arrives.
    /// With a spread, a reload cuts the round short (`false`): the reload's own round
    /// checks every backend at once.
    async fn spread_round(&mut self, first: bool, spread: Duration) -> bool {
        let gateway = self.gateway.clone();
        let router = gateway.router();
        let fleet = router.fleet();
        self.failures
            .retain(|name, _| fleet.backend_by_name(name).is_some());
        let backends = fleet.backends();
        let count = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        let mut checks: FuturesUnordered<_> = backends
            .iter()
            .zip(0u32..)
            .map(|(backend, index)| {
                let delay = start_offset(spread, index, count);
                let gateway = &gateway;
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    (backend, check(gateway, backend).await)
                }
            })
            .collect();
        let reloaded = gateway.shared.reloaded.notified();
        tokio::pin!(reloaded);
        loop {
            let (backend, result) = tokio::select! {
                biased;
                next = checks.next() => match next {
                    Some(checked) => checked,
                    None => return true,
                },
                () = &mut reloaded, if !spread.is_zero() => {
                    // The permit is taken: the reload's round is the caller's to run.
                    return false;
                }
            };
            if self.apply(&router, backend, result, first) {
                self.gateway.wake_queue();
            }
        }
    }

    /// Folds one check's result into `backend`'s status (of `router`'s fleet, and of
    /// the config in force if a reload came since); true when the status changed.
    fn apply(
        &mut self,
        router: &std::sync::Arc<nexus_router::Router>,
        backend: &Backend,
        result: Result<Option<Vec<String>>, String>,
        first: bool,
    ) -> bool {
        let gateway = &self.gateway;
        let new = !self.failures.contains_key(backend.name());
        let first = first || new;
        let count = self.failures.entry(backend.name().to_owned()).or_insert(0);
        let before = backend.live().status();
        let after = match result {
            Ok(loaded) => {
                *count = 0;
                if backend.kind() == BackendKind::Ollama {
                    gateway.set_loaded_models(backend, loaded);
                }
                BackendStatus::Healthy
            }
            Err(why) => {
                *count = count.saturating_add(1);
                let limit = gateway.health().unhealthy_after;
                if first || *count >= limit {
                    if before != BackendStatus::Unhealthy {
                        tracing::warn!(backend = backend.name(), url = backend.url(), error = %why, "backend unhealthy");
                    }
                    BackendStatus::Unhealthy
                } else {
                    tracing::debug!(backend = backend.name(), error = %why, failures = *count, "health check failed");
                    before
                }
            }
        };
        crate::metrics::backend_up(backend, after);
        if after == before {
            return false;
        }
        if after == BackendStatus::Healthy {
            tracing::info!(backend = backend.name(), "backend healthy");
        }
        router.fleet().set_status(backend.id(), after);
        // A reload during the checks: the config in force shares a kept backend's
        // state, but its own index of unhealthy backends needs telling.
        let current = gateway.router();
        if !std::sync::Arc::ptr_eq(&current, router) {
            if let Some(now) = current.fleet().backend_by_name(backend.name()) {
                current.fleet().set_status(now.id(), after);
            }
        }
        true
    }

    /// Checks forever: a round every `interval`, its checks spread over the first half
    /// of it, and a round at once after each reload.
    pub(crate) async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is now: the first round already ran
        let gateway = self.gateway.clone();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if self.spread_round(false, interval / 2).await {
                        continue;
                    }
                    // Cut short by a reload.
                }
                () = gateway.shared.reloaded.notified() => {}
            }
            // A reload: every backend at once, new ones with the first round's rule.
            self.round(false).await;
        }
    }
}

/// When the `index`th of `count` checks of a round starts: evenly over `spread`.
fn start_offset(spread: Duration, index: u32, count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    spread * index / count
}

#[derive(Deserialize)]
struct Ps {
    #[serde(default)]
    models: Vec<PsModel>,
}

#[derive(Deserialize)]
struct PsModel {
    name: String,
}

/// One check of `backend`: `Ok` with an Ollama's loaded models, or why it failed.
async fn check(gateway: &Gateway, backend: &Backend) -> Result<Option<Vec<String>>, String> {
    let timeout = gateway.health().timeout();
    // A 2xx answer's headers within the timeout, and the time left for its body.
    let get = |path: &str| {
        let base = match backend.kind() {
            // Ollama's own API is at the root, beside its /v1.
            BackendKind::Ollama => backend.url().trim_end_matches('/').trim_end_matches("/v1"),
            BackendKind::Openai => backend.url(),
        };
        let uri = crate::gateway::upstream_uri(&upstream_url(base, path));
        let key = gateway.key_of(backend);
        let client = gateway.shared.client.clone();
        async move {
            let uri = uri.map_err(|e| format!("cannot check {e}"))?;
            let mut request = Request::new(OutgoingBody::default());
            *request.uri_mut() = uri;
            if let Some(key) = key {
                request.headers_mut().insert(header::AUTHORIZATION, key);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let answer = match tokio::time::timeout_at(deadline, client.send(request)).await {
                Err(_) => return Err(format!("no answer within {} ms", timeout.as_millis())),
                Ok(Err(e)) => {
                    return Err(format!("unreachable: {}", crate::error::with_causes(&e)))
                }
                Ok(Ok(answer)) => answer,
            };
            if !answer.status().is_success() {
                return Err(format!("answered {}", answer.status()));
            }
            Ok((answer, deadline))
        }
    };
    match backend.kind() {
        BackendKind::Openai => get("/v1/models").await.map(|_| None),
        BackendKind::Ollama => {
            get("/api/tags").await?;
            // What is loaded is for show: a failure here does not make it unhealthy.
            let loaded = match get("/api/ps").await {
                Ok((answer, deadline)) => {
                    tokio::time::timeout_at(deadline, answer.into_body().collect())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|body| serde_json::from_slice::<Ps>(&body.to_bytes()).ok())
                        .map(|ps| ps.models.into_iter().map(|m| m.name).collect())
                }
                Err(_) => None,
            };
            Ok(loaded)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_start_evenly_over_the_spread() {
        let spread = Duration::from_secs(5);
        let offsets: Vec<_> = (0..4).map(|i| start_offset(spread, i, 4)).collect();
        assert_eq!(
            offsets,
            [0, 1250, 2500, 3750].map(Duration::from_millis).to_vec()
        );
        assert_eq!(start_offset(Duration::ZERO, 3, 4), Duration::ZERO);
        assert_eq!(start_offset(spread, 0, 0), Duration::ZERO);
    }
}
