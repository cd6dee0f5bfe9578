//! `nexus serve` reads the proxy variables from its environment at start: requests to an
//! `http` backend go through `HTTP_PROXY` (with its credentials), the start-up log says
//! which proxy serves what without the credentials, and a proxy URL it cannot use stops
//! it with an error naming the variable. The variables are set in the child's
//! environment only.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_testkit::{MockConfig, MockProxy, MockUpstream};

const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `nexus serve` at `info` with only `vars` among the proxy variables, stderr piped.
fn command(config: &std::path::Path, vars: &[(&str, &str)]) -> Command {
    let mut command = common::serve_command(config);
    command.args(["--log-level", "info"]).stderr(Stdio::piped());
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    for (var, value) in vars {
        command.env(var, value);
    }
    command
}

fn config_file(name: &str, backend_url: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nid = \"b\"\nurl = \"{backend_url}\"\nzone = \"local\"\nmodels = [{{ name = \"m\" }}]\n[health]\ninterval_secs = 0\n"
        ),
    )
    .expect("the config written");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_http_backends_through_http_proxy_from_its_environment() {
    let mock = MockUpstream::start(MockConfig::serving(["m"]))
        .await
        .unwrap();
    let proxy = MockProxy::start().await.unwrap();
    let config = config_file("proxy-serve", &mock.base_url());
    let with_user = proxy.url().replace("http://", "http://ops:hunter2@");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = lines.clone();
    let (mut child, addr) = common::spawn_serving(
        &mut command(&config, &[("HTTP_PROXY", &with_user)]),
        move |line| kept.lock().unwrap().push(line.to_owned()),
    );

    let client = common::http_client();
    let answer = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].target,
        format!("{}/v1/chat/completions", mock.url())
    );
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic b3BzOmh1bnRlcjI=")
    );

    let _ = child.kill();
    let _ = child.wait();
    let logged = lines.lock().unwrap().join("\n");
    assert!(
        logged.contains(&format!(
            "http backends through {} (HTTP_PROXY, with credentials)",
            proxy.url()
        )),
        "{logged}"
    );
    assert!(logged.contains("https backends direct"), "{logged}");
    // The backend is on loopback: the start-up log says a proxy elsewhere could not
    // reach it (this one runs here, so it can).
    assert!(
        logged.contains("a backend on this host's loopback goes through the egress proxy"),
        "{logged}"
    );
    assert!(
        !logged.contains("hunter2"),
        "no credentials in the log: {logged}"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

#[test]
fn serve_refuses_to_start_with_a_proxy_url_it_cannot_use() {
    let config = config_file("proxy-bad", "http://127.0.0.1:9");
    let mut child = command(
        &config,
        &[("https_proxy", "socks4://ops:hunter2@127.0.0.1:1080")],
    )
    .spawn()
    .expect("nexus runs");
    let status = common::wait_exit(&mut child, Duration::from_secs(15));
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("https_proxy=socks4://***@127.0.0.1:1080"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set https_proxy to a proxy URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

mod common;
