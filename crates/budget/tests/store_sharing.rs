//! Who may open a store file at once: one writing process, any number of read-only
//! readers beside it (which see its commits), and, within the writing process, any
//! number of stores of the same file sharing one handle.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nexus_budget::{Month, RedbStore, SpendStore, StoreErrorKind};

const CHILD_ENV: &str = "NEXUS_STORE_SHARING_CHILD";

fn month() -> Month {
    Month::new(2026, 11).unwrap()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-sharing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The child: holds the store open for writing, as a router does, and adds what the
/// parent asks for: `add N` answers `added`; end of input ends it.
#[test]
#[ignore = "the child process of a_reader_reads_beside_the_writing_process; run by it"]
fn store_holder_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = RedbStore::open(&path).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        if let Some(nanos) = line.strip_prefix("add ") {
            block_on(store.add(month(), nanos.parse().unwrap())).unwrap();
            writeln!(out, "added").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn a_reader_reads_beside_the_writing_process() {
    let dir = temp_dir("processes");
    let path = dir.join("spend.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "store_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = |what: &str| {
        for line in from_child.by_ref() {
            // The harness may print "test store_holder_child ... " before it.
            if line.unwrap().ends_with(what) {
                return;
            }
        }
        panic!("the child ended before saying {what}");
    };
    expect("ready");
    writeln!(to_child, "add 1000").unwrap();
    expect("added");

    // Before: "Database already open" for every other opener while a router ran.
    let reader = RedbStore::open_read_only(&path).unwrap();
    assert_eq!(block_on(reader.month_total(month())).unwrap(), 1_000);
    let second_reader = RedbStore::open_read_only(&path).unwrap();
    writeln!(to_child, "add 500").unwrap();
    expect("added");
    assert_eq!(block_on(reader.month_total(month())).unwrap(), 1_500);
    assert_eq!(block_on(second_reader.month_total(month())).unwrap(), 1_500);
    let refused = block_on(reader.add(month(), 1)).unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::ReadOnly, "{refused}");

    // A second writing process is refused, with a message that says what to do.
    let busy = RedbStore::open(&path).unwrap_err();
    assert_eq!(busy.kind, StoreErrorKind::Busy, "{busy}");
    assert!(busy.message.contains("its own `store` file"), "{busy}");

    drop(to_child);
    assert!(child.wait().unwrap().success());
    drop((reader, second_reader));
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(block_on(store.month_total(month())).unwrap(), 1_500);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stores_of_one_file_in_one_process_share_it() {
    let dir = temp_dir("in-process");
    let path = dir.join("spend.redb");
    let first = RedbStore::open(&path).unwrap();
    // The same file by another name: still one handle.
    let second = RedbStore::open(dir.join(".").join("spend.redb")).unwrap();
    block_on(first.add(month(), 10)).unwrap();
    block_on(second.add(month(), 20)).unwrap();
    assert_eq!(block_on(first.month_total(month())).unwrap(), 30);
    let reader = RedbStore::open_read_only(&path).unwrap();
    assert_eq!(block_on(reader.month_total(month())).unwrap(), 30);
    assert_eq!(first.path(), second.path());
    drop((first, second, reader));
    // Closed with the last of them: another open works at once.
    let again = RedbStore::open(&path).unwrap();
    assert_eq!(block_on(again.month_total(month())).unwrap(), 30);
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}
