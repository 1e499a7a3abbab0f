//! Per-tenant row counts kept beside a tenant-scoped table, for drivers that
//! bound how many rows one tenant keeps (the lock and sequencer quotas).

use std::collections::HashMap;

use redb::{ReadableTable, Table, TableDefinition, Value, WriteTransaction};

use super::{failed, Error, ScopedKey};

/// A table of counts by tenant. A tenant with no rows has no count.
pub type Counts = TableDefinition<'static, &'static str, u64>;

/// Adds `delta` to `tenant`'s count, removing its row at zero, and returns
/// the count before. Saturating, so a count that drifted low can never wrap
/// around to "full".
pub fn add_count(
    counts: &mut Table<'_, &'static str, u64>,
    tenant: &str,
    delta: i64,
) -> Result<u64, Error> {
    let had = counts
        .get(tenant)
        .map_err(failed("read a tenant's count"))?
        .map_or(0, |guard| guard.value());
    let now = had.saturating_add_signed(delta);
    if now == 0 {
        counts
            .remove(tenant)
            .map_err(failed("remove a tenant's count"))?;
    } else {
        counts
            .insert(tenant, now)
            .map_err(failed("write a tenant's count"))?;
    }
    Ok(had)
}

/// Counts the rows of `table` per tenant into `counts`, unless `meta`'s row
/// `marker` says that was done: a file written before its driver kept counts
/// gets them, with one scan, the first time it is opened.
pub fn count_once<V: Value + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<'static, ScopedKey, V>,
    counts: Counts,
    (meta, marker): (Counts, &str),
) -> Result<(), Error> {
    let mut meta = txn
        .open_table(meta)
        .map_err(failed("create the meta table"))?;
    let counted = meta
        .get(marker)
        .map_err(failed("read the count marker"))?
        .is_some();
    if counted {
        return Ok(());
    }
    let rows = txn
        .open_table(table)
        .map_err(failed("open the counted table"))?;
    let mut totals: HashMap<String, u64> = HashMap::new();
    for row in rows.iter().map_err(failed("scan the counted table"))? {
        let (key, _) = row.map_err(failed("read a row while counting"))?;
        *totals.entry(key.value().0.to_owned()).or_default() += 1;
    }
    let mut counts = txn
        .open_table(counts)
        .map_err(failed("create the counts table"))?;
    for (tenant, total) in totals {
        counts
            .insert(tenant.as_str(), total)
            .map_err(failed("write a tenant's count"))?;
    }
    meta.insert(marker, 1)
        .map_err(failed("write the count marker"))?;
    Ok(())
}
