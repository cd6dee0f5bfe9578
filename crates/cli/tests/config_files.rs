//! Reading the config file: only a regular file, at most `MAX_CONFIG_BYTES`, in UTF-8;
//! anything else is refused at once with what is wrong (issue 13, items 15 and 16).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nexus_router::{Router, MAX_CONFIG_BYTES};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `nexus check --config path`, killed if it has not ended within a minute, so that a
/// regression fails the test instead of hanging it (the bound is not a timing claim).
fn check_bounded(path: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["check", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("nexus check --config {} did not end", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn refused_with(path: &Path, message: &str) {
    let output = check_bounded(path);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}: {message}", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("\n  help: "), "{stderr}");
}

#[test]
fn a_device_is_refused_without_reading_it() {
    let zero = Path::new("/dev/zero");
    if !zero.exists() {
        eprintln!("skipped: this system has no /dev/zero");
        return;
    }
    refused_with(
        zero,
        "the config path is not a regular file (a pipe, socket or device)",
    );
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = temp_dir("fifo");
    let fifo = dir.join("config.toml");
    match Command::new("mkfifo").arg(&fifo).status() {
        Ok(status) if status.success() => {
            refused_with(
                &fifo,
                "the config path is not a regular file (a pipe, socket or device)",
            );
        }
        _ => eprintln!("skipped: no mkfifo command to make a FIFO with"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_is_refused() {
    let dir = temp_dir("dir-config");
    refused_with(&dir, "the config path is a directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_over_the_cap_is_refused_and_one_at_the_cap_is_read() {
    let dir = temp_dir("cap");
    let cap = usize::try_from(MAX_CONFIG_BYTES).unwrap();
    // Comment lines: a valid (empty) config of exactly the cap.
    let mut text = "#".repeat(99) + "\n";
    text = text.repeat(cap / text.len());
    text.push_str(&"#".repeat(cap - text.len()));
    assert_eq!(text.len(), cap);
    let at_cap = dir.join("at-cap.toml");
    std::fs::write(&at_cap, &text).unwrap();
    Router::from_file(&at_cap).unwrap();

    text.push('#');
    let over = dir.join("over-cap.toml");
    std::fs::write(&over, &text).unwrap();
    let err = Router::from_file(&over).unwrap_err();
    assert_eq!(
        err.message,
        "the config file is larger than 4194304 bytes (4 MiB), the most nexus reads"
    );
    refused_with(&over, "the config file is larger than 4194304 bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_utf8_is_reported_at_the_line_and_column_of_the_first_bad_byte() {
    let dir = temp_dir("utf8");
    let path = dir.join("latin1.toml");
    // "é" as UTF-8 first (valid), then a Latin-1 "é" (0xe9) on line 3, column 16.
    let mut bytes = b"[[backends]]\nid = \"caf\xc3\xa9\"\nurl = \"http://h\xe9\"\n".to_vec();
    bytes.extend_from_slice(b"zone = \"local\"\n");
    std::fs::write(&path, &bytes).unwrap();
    let err = Router::from_file(&path).unwrap_err();
    assert_eq!(err.position, Some((3, 16)), "{err}");
    assert_eq!(
        err.message,
        "the file is not valid UTF-8: byte 0xe9 at byte offset 41"
    );
    assert_eq!(err.help.as_deref(), Some("save the file as UTF-8"));
    let output = check_bounded(&path);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.starts_with(&format!(
            "{}:3:16: the file is not valid UTF-8",
            path.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
