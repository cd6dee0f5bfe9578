//! A throwaway `redis-server` for tests: its own process on a free loopback port, no
//! persistence, killed when dropped.
//!
//! When `redis-server` is not installed the tests that need it skip with a loud
//! message, unless the environment variable `CI` is set: then they fail, so that CI
//! can never pass by skipping them (`.ci/run` installs the package).
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server, or returns `None` (after saying so loudly) when `redis-server`
    /// is missing outside CI.
    pub fn start() -> Option<Self> {
        match Command::new("redis-server").arg("--version").output() {
            Ok(_) => {}
            Err(error) if std::env::var_os("CI").is_some() => {
                panic!("redis-server cannot be run ({error}) and CI is set: install it (apt-get install -y redis-server); .ci/run does")
            }
            Err(error) => {
                eprintln!(
                    "\n\
                     ************************************************************\n\
                     SKIPPED: redis-server cannot be run ({error}).\n\
                     Install it (apt-get install -y redis-server) to run this test.\n\
                     ************************************************************\n"
                );
                return None;
            }
        }
        for _ in 0..10 {
            let port = free_port();
            let mut server = Self { port, child: None };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("could not start redis-server on a free port after 10 tries");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (its words) and returns the raw reply.
    pub fn command(&self, words: &[&str]) -> String {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream
            .write_all(request.as_bytes())
            .expect("write to redis-server");
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).expect("read from redis-server");
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }

    /// An integer (or integer string) reply; 0 for nil.
    pub fn integer(&self, words: &[&str]) -> i64 {
        let reply = self.command(words);
        let body = reply
            .lines()
            .find(|l| l.starts_with(':') || !l.starts_with('$'))
            .unwrap_or("");
        body.trim_start_matches(':').trim().parse().unwrap_or(0)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return false };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: the port was taken
            }
            if ping(self.port) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
}

/// Polls `check` every 10 ms until it holds; fails the test, naming `what`, after 20 s.
/// (The lease client's background thread moves on its own time: tests wait for what
/// they need rather than sleeping a fixed time.)
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited too long for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
