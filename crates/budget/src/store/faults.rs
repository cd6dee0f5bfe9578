//! Tests of the store under faults: a disk that fills up and frees again (through a
//! storage backend that fails writes while a flag is set), damaged files, and files of
//! the first format.
#![allow(clippy::unwrap_used)]

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, Database, StorageBackend};

use super::format;
use super::{RedbStore, SpendStore, StoreErrorKind};
use crate::journal::Background;
use crate::{Month, SpendLedger};

/// A file whose writes fail with "no space left" while `full` is set.
#[derive(Debug)]
pub(super) struct Faulty {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl Faulty {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nexus-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store on `path` whose disk is full while the flag is set.
fn faulty_store(path: &Path) -> (RedbStore, Arc<AtomicBool>) {
    let full = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&full);
    let file = path.to_owned();
    let store = RedbStore::with_backend(path.to_owned(), move || {
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)?;
        Ok(Faulty {
            file: FileBackend::new(handle).map_err(io::Error::other)?,
            full: Arc::clone(&flag),
        })
    })
    .unwrap();
    (store, full)
}

fn month() -> Month {
    Month::new(2026, 11).unwrap()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn writes_succeed_again_once_the_disk_has_space() {
    let dir = TempDir::new("heal");
    let (store, full) = faulty_store(&dir.file("spend.redb"));
    block_on(async {
        store.add(month(), 1).await.unwrap();
        full.store(true, Ordering::SeqCst);
        let error = store.add(month(), 2).await.unwrap_err();
        assert_eq!(error.kind, StoreErrorKind::Io, "{error}");
        assert!(error.message.contains("disk is full"), "{error}");
        // Still full: the reopen fails too, and the next write says so again.
        assert!(store.add(month(), 2).await.is_err());
        full.store(false, Ordering::SeqCst);
        // Before the fix, redb refused this forever ("Previous I/O error occurred").
        store.add(month(), 4).await.unwrap();
        assert_eq!(store.month_total(month()).await.unwrap(), 5);
    });
}

/// Waits (bounded) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn the_journal_keeps_spend_queued_through_a_full_disk_and_writes_it_after() {
    let dir = TempDir::new("journal");
    let (store, full) = faulty_store(&dir.file("spend.redb"));
    let store = Arc::new(store);
    let clock = Arc::new(nexus_core::clock::FakeClock::at_secs(
        month().start_unix_secs() + 60,
    ));
    let ledger = Arc::new(SpendLedger::new(clock));
    let background = Background::start(&ledger, store.clone(), Vec::new(), None).unwrap();
    let journal = &background.journal;

    let first = journal.record(month(), 100);
    assert!(journal.wait_durable(first, Duration::from_secs(30)));
    full.store(true, Ordering::SeqCst);
    journal.record(month(), 200);
    eventually("the journal reports the failure", || {
        journal.lag().error.is_some()
    });
    let last = journal.record(month(), 300);
    let lag = journal.lag();
    assert_eq!((lag.entries, lag.nanos), (2, 500), "{lag:?}");
    assert!(
        lag.error.as_deref().unwrap_or("").contains("disk is full"),
        "{lag:?}"
    );

    full.store(false, Ordering::SeqCst);
    assert!(journal.wait_durable(last, Duration::from_secs(30)));
    assert_eq!(journal.lag(), crate::JournalLag::default());
    assert_eq!(block_on(store.month_total(month())).unwrap(), 600);
    drop(background);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the background thread still holds the store"
    );
}

#[test]
fn dropping_the_journal_on_a_full_disk_gives_up_within_its_deadline() {
    let dir = TempDir::new("shutdown");
    let (store, full) = faulty_store(&dir.file("spend.redb"));
    let store = Arc::new(store);
    let clock = Arc::new(nexus_core::clock::FakeClock::at_secs(
        month().start_unix_secs() + 60,
    ));
    let ledger = Arc::new(SpendLedger::new(clock));
    let background = Background::start(&ledger, store.clone(), Vec::new(), None).unwrap();
    background
        .journal
        .set_flush_deadline(Duration::from_millis(50));
    full.store(true, Ordering::SeqCst);
    background.journal.record(month(), 700);
    eventually("the journal reports the failure", || {
        background.journal.lag().error.is_some()
    });
    // Before the fix this never returned: the writer retried forever.
    drop(background);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the background thread still holds the store"
    );
    full.store(false, Ordering::SeqCst);
    assert_eq!(block_on(store.month_total(month())).unwrap(), 0);
}

#[test]
fn garbage_is_reported_as_a_damaged_file_by_both_opens() {
    let dir = TempDir::new("garbage");
    let path = dir.file("spend.redb");
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, garbage).unwrap();
    for error in [
        RedbStore::open_read_only(&path).unwrap_err(),
        RedbStore::open(&path).unwrap_err(),
    ] {
        assert_eq!(error.kind, StoreErrorKind::Corrupt, "{error}");
        assert!(error.message.contains("move it aside"), "{error}");
        assert!(error.location.ends_with("spend.redb"), "{error}");
    }
}

/// Every single-byte change of a store file either reads the true amount or is an
/// error; never a panic, never another amount.
#[test]
fn a_changed_byte_never_reads_as_another_amount() {
    let dir = TempDir::new("flips");
    let path = dir.file("spend.redb");
    let truth = 123_456_789_000;
    {
        let store = RedbStore::open(&path).unwrap();
        block_on(store.add(month(), truth)).unwrap();
    }
    let original = std::fs::read(&path).unwrap();
    let damaged = dir.file("damaged.redb");
    // Every byte of the record itself (where a flip read as billions before), and a
    // prime stride over the header and first pages, which hold the rest of this file.
    let needle = truth.to_le_bytes();
    let record = original
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the amount is in the file");
    let offsets =
        (record.saturating_sub(8)..record + 24).chain((0..original.len().min(40_000)).step_by(397));
    for offset in offsets {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x5a;
        std::fs::write(&damaged, &bytes).unwrap();
        for read_only in [true, false] {
            let read = if read_only {
                RedbStore::open_read_only(&damaged)
            } else {
                RedbStore::open(&damaged)
            }
            .and_then(|store| block_on(store.month_total(month())));
            if let Ok(total) = read {
                assert_eq!(total, truth, "byte {offset} (read-only: {read_only})");
            }
        }
    }
}

/// Tenants' months are kept beside the global one, summed per tenant and month, and
/// read back by a store opened again on the file; the global month is untouched.
#[test]
fn tenant_spend_is_kept_per_tenant_and_month() {
    let dir = TempDir::new("tenants");
    let path = dir.file("spend.redb");
    let next = Month::from_key(month().key() + 1);
    {
        let store = RedbStore::open(&path).unwrap();
        assert!(block_on(store.tenant_months(month())).unwrap().is_empty());
        block_on(store.add(month(), 900)).unwrap();
        block_on(store.add_tenant("team-a", month(), 300)).unwrap();
        block_on(store.add_tenant("team-a", month(), 200)).unwrap();
        block_on(store.add_tenant("team-b", month(), 100)).unwrap();
        block_on(store.add_tenant("team-a", next, 7)).unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let mut tenants = block_on(store.tenant_months(month())).unwrap();
    tenants.sort();
    assert_eq!(
        tenants,
        vec![("team-a".to_owned(), 500), ("team-b".to_owned(), 100)]
    );
    assert_eq!(
        block_on(store.tenant_months(next)).unwrap(),
        vec![("team-a".to_owned(), 7)]
    );
    assert_eq!(block_on(store.month_total(month())).unwrap(), 900);
    drop(store);
    let read_only = RedbStore::open_read_only(&path).unwrap();
    assert_eq!(block_on(read_only.tenant_months(month())).unwrap().len(), 2);
    assert_eq!(
        block_on(read_only.add_tenant("team-a", month(), 1))
            .unwrap_err()
            .kind,
        StoreErrorKind::ReadOnly
    );
}

fn write_legacy(path: &Path, months: &[(u32, u64)]) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    format::write_legacy(&txn, months).unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_first_format_file_is_migrated_on_open_and_read_as_it_is_read_only() {
    let dir = TempDir::new("migrate");
    let path = dir.file("spend.redb");
    let october = Month::new(2026, 10).unwrap();
    write_legacy(&path, &[(october.key(), 7_000), (month().key(), 42_000)]);

    let reader = RedbStore::open_read_only(&path).unwrap();
    assert_eq!(
        block_on(reader.months()).unwrap(),
        vec![(october, 7_000), (month(), 42_000)]
    );
    drop(reader);

    let store = RedbStore::open(&path).unwrap();
    block_on(store.add(month(), 1)).unwrap();
    drop(store);
    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(
        block_on(reopened.months()).unwrap(),
        vec![(october, 7_000), (month(), 42_001)]
    );
}

#[test]
fn an_implausible_first_format_amount_is_damage_not_spend() {
    let dir = TempDir::new("absurd");
    let path = dir.file("spend.redb");
    // $4,702,111,234.47, as a flipped byte made the first format read.
    write_legacy(&path, &[(month().key(), 4_702_111_234_470_000_000)]);
    for error in [
        RedbStore::open_read_only(&path)
            .and_then(|s| block_on(s.month_total(month())))
            .unwrap_err(),
        RedbStore::open(&path).unwrap_err(),
    ] {
        assert_eq!(error.kind, StoreErrorKind::Corrupt, "{error}");
        assert!(error.message.contains("4702111234.47"), "{error}");
    }
}

#[test]
fn a_read_only_open_creates_nothing() {
    let dir = TempDir::new("missing");
    let path = dir.file("spend.redb");
    let error = RedbStore::open_read_only(&path).unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::NotFound, "{error}");
    assert!(!path.exists());
    let error = RedbStore::open(dir.file("no-such-folder/spend.redb")).unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::NotFound, "{error}");
    assert!(error.message.contains("mkdir -p"), "{error}");
}
