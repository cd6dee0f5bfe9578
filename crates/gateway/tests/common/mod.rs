//! A gateway on a loopback port over mocks, for the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod checks;

use std::net::SocketAddr;
use std::time::Duration;

use nexus_gateway::Gateway;
use nexus_router::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A served gateway; stops when dropped.
pub struct Served {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// `[health]` off unless a test asks for it: tests set statuses themselves.
pub const NO_HEALTH: &str = "\n[health]\ninterval_secs = 0\n";

/// Starts a gateway over `config`.
pub async fn serve(config: &str) -> Served {
    let router = Router::from_toml("test.toml", config).expect("a valid config");
    let gateway = Gateway::new(router).expect("a gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(nexus_gateway::serve(gateway.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    Served {
        gateway,
        addr,
        client,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// A chat request for `model`.
    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", &chat_body(model, false))
            .await
    }

    /// In flight on every backend.
    pub fn in_flight(&self) -> u32 {
        self.gateway
            .router()
            .fleet()
            .backends()
            .iter()
            .map(|b| b.live().in_flight())
            .sum()
    }

    /// Settled spend in USD.
    pub fn settled_usd(&self) -> f64 {
        self.budget().ledger().snapshot().settled_usd
    }

    /// Reserved spend in USD.
    pub fn reserved_usd(&self) -> f64 {
        self.budget().ledger().snapshot().reserved_usd
    }

    /// The budget stage of the config in force (a reload shares its ledger).
    pub fn budget(&self) -> BudgetStage {
        BudgetStage(self.gateway.router())
    }

    /// Waits (bounded) until `done` holds.
    pub async fn eventually(&self, what: &str, done: impl Fn(&Served) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// Stops serving and waits for the server to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The budget stage of one router.
pub struct BudgetStage(std::sync::Arc<Router>);

impl std::ops::Deref for BudgetStage {
    type Target = nexus_router::budget::BudgetReconciler;

    fn deref(&self) -> &Self::Target {
        self.0
            .pipeline()
            .stage_of::<nexus_router::budget::BudgetReconciler>()
            .expect("a budget stage")
    }
}

/// A chat body.
pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 50,
        "stream": stream,
    })
}

/// A `[[backends]]` table serving `models` at `url`.
pub fn backend(id: &str, url: &str, zone: &str, models: &[&str], extra: &str) -> String {
    let mut text =
        format!("[[backends]]\nid = \"{id}\"\nurl = \"{url}\"\nzone = \"{zone}\"\n{extra}\n");
    for model in models {
        text.push_str(&format!("  [[backends.models]]\n  name = \"{model}\"\n"));
    }
    text
}

/// Reads an SSE body into its `data:` payloads.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The head of a chat request for `model` with a `content-length` of `len`, for tests
/// that write the bytes themselves; the connection closes after the answer.
pub fn raw_head(len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: nexus\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    )
}

/// Reads what the gateway answers on a raw connection until it closes (bounded, 10 s):
/// the status and the whole text.
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text))
        .await
        .expect("the gateway answers and closes within 10 s")
        .expect("a readable answer");
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    (status, text)
}
