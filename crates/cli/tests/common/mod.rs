//! Running `nexus serve` as a child process, and the HTTP client the tests talk to it with.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `nexus serve` on a free port; returns the child and its address, read from
/// the line it prints once it listens.
pub fn start(config: &std::path::Path) -> (Child, String) {
    spawn_serving(&mut serve_command(config), |_| {})
}

/// `nexus serve --listen 127.0.0.1:0 --config CONFIG`, stdout discarded; add what the
/// test needs, then [`spawn_serving`].
pub fn serve_command(config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::null());
    command
}

/// Spawns `command` (a `nexus serve`) with its stderr read by a thread that hands every
/// line to `on_line`; returns once it says where it listens (within 30 s), with the
/// child and that address.
pub fn spawn_serving(
    command: &mut Command,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> (Child, String) {
    let mut child = command.stderr(Stdio::piped()).spawn().expect("nexus runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
            on_line(&line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("nexus serve says where it listens");
    (child, addr)
}

pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nexus serve did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reqwest client builder for loopback tests: the process's TLS crypto provider
/// installed first (reqwest's rustls needs one, as the gateway's own client does), and no
/// proxy from the environment.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    nexus_gateway::upstream::install_crypto_provider();
    reqwest::Client::builder().no_proxy()
}

/// A loopback test client with reqwest's defaults otherwise.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("a reqwest client")
}
