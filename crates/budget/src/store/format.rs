//! The layout of a store file, how a read checks what it finds, and the migration from
//! the first layout.
//!
//! Format 1 kept `spend_by_month: u32 -> u64` and nothing else, so a damaged page read
//! as $0.00 (a table that seems absent) or as billions (a flipped high byte). Format 2
//! records its format in `nexus_meta` and keeps each month as `(nanos, checksum)`, the
//! checksum covering the month and the amount: a read that finds a missing table, a
//! wrong checksum or an implausible amount reports the file as damaged instead of
//! deciding on it. A writable open migrates a format 1 file in one transaction; a
//! read-only open reads format 1 as it is, within plausible bounds.

use std::collections::BTreeSet;

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};

use crate::Month;

/// The format this build writes.
pub(super) const FORMAT: u64 = 2;

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("nexus_meta");
const FORMAT_KEY: &str = "format";
/// Month key -> (settled nano-dollars, [`checksum`] of both).
const SPEND: TableDefinition<'static, u32, (u64, u64)> = TableDefinition::new("spend_by_month_v2");
/// (tenant id, month key) -> (the tenant's settled nano-dollars, [`tenant_checksum`]).
/// Added beside format 2's tables (a file without it holds no tenant spend; an older
/// Nexus ignores it), so the format number stays 2.
const TENANT_SPEND: TableDefinition<'static, (&str, u32), (u64, u64)> =
    TableDefinition::new("tenant_spend_by_month_v1");
/// Format 1: month key -> settled nano-dollars.
const LEGACY_SPEND: TableDefinition<'static, u32, u64> = TableDefinition::new("spend_by_month");

/// The most one month can plausibly hold, $1,000,000,000: more is a damaged value, not
/// spend. It is what catches a flipped byte in a format 1 file, which has no checksum.
pub(super) const MAX_MONTH_NANOS: u64 = 1_000_000_000 * 1_000_000_000;

/// Month keys from 1970-01 to 9999-12; anything else is a damaged key.
const MONTH_KEYS: std::ops::RangeInclusive<u32> = 1970 * 12..=9999 * 12 + 11;

/// What went wrong reading or writing the layout.
#[derive(Debug)]
pub(super) enum Fault {
    /// redb failed.
    Redb(redb::Error),
    /// The file is a store, but what it holds is not plausible.
    Damaged(String),
    /// The file was written by a newer Nexus, in this format.
    Newer(u64),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for Fault {
            fn from(e: $error) -> Self {
                Fault::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

/// A 64-bit checksum of a month's record: a mix of the key and the amount, so that a
/// changed bit in either, or a record moved to another key, no longer matches.
pub(super) fn checksum(key: u32, nanos: u64) -> u64 {
    const SEED: u64 = 0x6e65_7875_735f_7632; // "nexus_v2"
    mix(mix(u64::from(key) ^ SEED) ^ nanos)
}

/// The checksum of a tenant's month: [`checksum`] mixed with every byte of the id, so
/// that a record moved to another tenant no longer matches either.
pub(super) fn tenant_checksum(tenant: &str, key: u32, nanos: u64) -> u64 {
    tenant
        .bytes()
        .fold(checksum(key, nanos), |sum, byte| mix(sum ^ u64::from(byte)))
}

/// splitmix64's finalizer: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn check_key(key: u32) -> Result<Month, Fault> {
    if MONTH_KEYS.contains(&key) {
        Ok(Month::from_key(key))
    } else {
        Err(Fault::Damaged(format!(
            "a record has month key {key}, which is no month"
        )))
    }
}

fn check_amount(month: Month, nanos: u64) -> Result<u64, Fault> {
    if nanos <= MAX_MONTH_NANOS {
        Ok(nanos)
    } else {
        Err(Fault::Damaged(format!(
            "{month} holds ${:.2}, more than the ${:.0} a month can plausibly spend",
            crate::nanos_to_usd(nanos),
            crate::nanos_to_usd(MAX_MONTH_NANOS)
        )))
    }
}

/// Checks a format 2 record and returns its amount.
fn check_record(key: u32, (nanos, sum): (u64, u64)) -> Result<(Month, u64), Fault> {
    let month = check_key(key)?;
    if sum != checksum(key, nanos) {
        return Err(Fault::Damaged(format!(
            "the record of {month} fails its checksum"
        )));
    }
    Ok((month, check_amount(month, nanos)?))
}

fn table_names(names: impl Iterator<Item = redb::UntypedTableHandle>) -> BTreeSet<String> {
    names.map(|t| t.name().to_owned()).collect()
}

/// Every month with spend, oldest first, from a file of either format. A file with no
/// tables at all (created empty) holds nothing.
pub(super) fn read_months(txn: &ReadTransaction) -> Result<Vec<(Month, u64)>, Fault> {
    let names = table_names(txn.list_tables()?);
    let format = if names.contains(META.name()) {
        txn.open_table(META)?.get(FORMAT_KEY)?.map(|v| v.value())
    } else {
        None
    };
    match format {
        Some(FORMAT) => {
            if !names.contains(SPEND.name()) {
                return Err(Fault::Damaged("its spend table is missing".to_owned()));
            }
            let table = txn.open_table(SPEND)?;
            let mut months = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
            for entry in table.iter()? {
                let (key, record) = entry?;
                months.push(check_record(key.value(), record.value())?);
            }
            Ok(months)
        }
        Some(other) => Err(newer_or_damaged(other)),
        None if names.contains(SPEND.name()) => {
            Err(Fault::Damaged("its format record is missing".to_owned()))
        }
        None if names.contains(LEGACY_SPEND.name()) => read_legacy(&txn.open_table(LEGACY_SPEND)?),
        None => Ok(Vec::new()),
    }
}

fn newer_or_damaged(format: u64) -> Fault {
    if format > FORMAT {
        Fault::Newer(format)
    } else {
        Fault::Damaged(format!(
            "its format record says {format}, which no Nexus wrote"
        ))
    }
}

fn read_legacy(table: &impl ReadableTable<u32, u64>) -> Result<Vec<(Month, u64)>, Fault> {
    let mut months = Vec::new();
    for entry in table.iter()? {
        let (key, nanos) = entry?;
        let month = check_key(key.value())?;
        months.push((month, check_amount(month, nanos.value())?));
    }
    Ok(months)
}

/// Makes the file of `txn` current: creates the tables of a new file and migrates a
/// format 1 file. Returns how many months it migrated. Committing is the caller's.
pub(super) fn prepare(txn: &WriteTransaction) -> Result<usize, Fault> {
    let names = table_names(txn.list_tables()?);
    let format = if names.contains(META.name()) {
        txn.open_table(META)?.get(FORMAT_KEY)?.map(|v| v.value())
    } else {
        None
    };
    match format {
        Some(FORMAT) if names.contains(SPEND.name()) => Ok(0),
        Some(FORMAT) => Err(Fault::Damaged("its spend table is missing".to_owned())),
        Some(other) => Err(newer_or_damaged(other)),
        None if names.contains(SPEND.name()) => {
            Err(Fault::Damaged("its format record is missing".to_owned()))
        }
        None => {
            let legacy = if names.contains(LEGACY_SPEND.name()) {
                let months = read_legacy(&txn.open_table(LEGACY_SPEND)?)?;
                txn.delete_table(LEGACY_SPEND)?;
                months
            } else {
                Vec::new()
            };
            let mut spend = txn.open_table(SPEND)?;
            for (month, nanos) in &legacy {
                spend.insert(month.key(), (*nanos, checksum(month.key(), *nanos)))?;
            }
            txn.open_table(META)?.insert(FORMAT_KEY, FORMAT)?;
            Ok(legacy.len())
        }
    }
}

/// Adds `nanos` to `month` in a prepared file.
pub(super) fn add(txn: &WriteTransaction, month: Month, nanos: u64) -> Result<(), Fault> {
    let key = month.key();
    let mut table = txn.open_table(SPEND)?;
    let current = match table.get(key)? {
        Some(record) => check_record(key, record.value())?.1,
        None => 0,
    };
    let total = current.saturating_add(nanos);
    table.insert(key, (total, checksum(key, total)))?;
    Ok(())
}

/// Adds `nanos` to tenant `tenant`'s `month` in a prepared file.
pub(super) fn add_tenant(
    txn: &WriteTransaction,
    tenant: &str,
    month: Month,
    nanos: u64,
) -> Result<(), Fault> {
    let key = month.key();
    let mut table = txn.open_table(TENANT_SPEND)?;
    let current = match table.get((tenant, key))? {
        Some(record) => check_tenant_record(tenant, key, record.value())?,
        None => 0,
    };
    let total = current.saturating_add(nanos);
    table.insert((tenant, key), (total, tenant_checksum(tenant, key, total)))?;
    Ok(())
}

fn check_tenant_record(tenant: &str, key: u32, (nanos, sum): (u64, u64)) -> Result<u64, Fault> {
    let month = check_key(key)?;
    if sum != tenant_checksum(tenant, key, nanos) {
        return Err(Fault::Damaged(format!(
            "the record of tenant '{tenant}' for {month} fails its checksum"
        )));
    }
    check_amount(month, nanos)
}

/// Every tenant's settled spend in `month`, by id; empty for a file that holds none.
pub(super) fn read_tenants(
    txn: &ReadTransaction,
    month: Month,
) -> Result<Vec<(String, u64)>, Fault> {
    if !table_names(txn.list_tables()?).contains(TENANT_SPEND.name()) {
        return Ok(Vec::new());
    }
    let wanted = month.key();
    let mut tenants = Vec::new();
    for entry in txn.open_table(TENANT_SPEND)?.iter()? {
        let (key, record) = entry?;
        let (tenant, key) = key.value();
        if key == wanted {
            tenants.push((
                tenant.to_owned(),
                check_tenant_record(tenant, key, record.value())?,
            ));
        }
    }
    Ok(tenants)
}

/// Writes a format 1 file's table, for tests of the migration and of the bounds.
#[cfg(test)]
pub(super) fn write_legacy(txn: &WriteTransaction, months: &[(u32, u64)]) -> Result<(), Fault> {
    let mut table = txn.open_table(LEGACY_SPEND)?;
    for (key, nanos) in months {
        table.insert(*key, *nanos)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_covers_key_and_amount() {
        let sum = checksum(24_310, 1_500);
        assert_ne!(sum, checksum(24_311, 1_500));
        assert_ne!(sum, checksum(24_310, 1_501));
        assert_ne!(sum, checksum(24_310, 1_500 | 1 << 60));
        assert!(check_record(24_310, (1_500, sum)).is_ok());
        assert!(matches!(
            check_record(24_310, (1_501, sum)),
            Err(Fault::Damaged(_))
        ));
    }

    #[test]
    fn a_tenants_checksum_covers_its_id() {
        let sum = tenant_checksum("team-a", 24_310, 1_500);
        assert_ne!(sum, tenant_checksum("team-b", 24_310, 1_500));
        assert_ne!(sum, checksum(24_310, 1_500));
        assert!(check_tenant_record("team-a", 24_310, (1_500, sum)).is_ok());
        assert!(matches!(
            check_tenant_record("team-b", 24_310, (1_500, sum)),
            Err(Fault::Damaged(m)) if m.contains("team-b")
        ));
    }

    #[test]
    fn implausible_keys_and_amounts_are_damage() {
        assert!(check_key(0).is_err());
        assert!(check_key(u32::MAX).is_err());
        let month = Month::new(2026, 11).unwrap_or_else(|| unreachable!());
        assert!(check_amount(month, MAX_MONTH_NANOS).is_ok());
        // $4,702,111,234.47: what a flipped high byte read as before the check.
        assert!(check_amount(month, 4_702_111_234_470_000_000).is_err());
    }
}
