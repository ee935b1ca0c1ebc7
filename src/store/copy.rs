//! `mcp-meter db copy`: moves every row of one store's database into
//! another, from any backend to any other (outgrowing SQLite, say).
//!
//! The copy is written once over two [`Side`]s, whatever their backends
//! (`side`); `tables` lists what is copied, in foreign-key order.

mod error;
mod report;
mod side;
mod tables;

use std::time::Instant;

use sha2::{Digest, Sha256};
use sqlx::{MySql, Postgres, Sqlite};

use self::side::{Cell, Conn, Row, SchemaState, Side};
use self::tables::{LEDGER, SCHEMA_VERSION, TABLES, Table};
use super::driver::Driver;
use super::open::{backend, connect_existing, connect_once, schema_on};
use super::{Backend, OpenError, StoreOptions, redact_url};

pub use self::error::CopyError;
pub use self::report::{
    CopyOptions, CopyReport, Progress, ResumePoint, TableProgress, TableReport,
};

/// Copies every row of the store at `from` into the store at `to`,
/// reporting progress to `progress` as it goes.
///
/// * The **source** is only read, never written: it must be at exactly
///   this binary's schema version (an older one is refused with the advice
///   to run `mcp-meter migrate` on it first; a newer one is refused
///   outright), and every read runs in one read-only snapshot
///   transaction, so the copy is of one instant even if something writes
///   meanwhile (stop the proxy first all the same: what it writes after the
///   snapshot is not copied).
/// * The **target** is migrated to this binary's schema first, then must
///   be empty — or hold exactly what an interrupted run of the same copy
///   left: per table, the first rows of the source in primary-key order,
///   equal to them column by column. Then the copy resumes after the last
///   key present. Anything else (rows the source does not have, rows that
///   differ) is refused before a single row is written. Nothing is
///   recorded in the target beyond the copied rows.
/// * Tables are copied in foreign-key order (customers first), in
///   batches read in primary-key order; each batch is one transaction on
///   the target. Values are copied exactly (64-bit integers, text, byte
///   strings, `NULL`s), ids included; afterwards the target's id
///   sequences (PostgreSQL identities, MySQL `AUTO_INCREMENT`) continue
///   after the highest id copied.
/// * At the end the row counts of every table are compared, and a SHA-256
///   checksum of the ledger is computed on both sides: a difference is a
///   [`CopyError::Verification`]. The checksum covers every ledger entry
///   in id order, each column as a tag byte and its value (`0` for
///   `NULL`; `1` and 8 big-endian bytes for an integer; `2`, an 8-byte
///   big-endian length and the UTF-8 bytes for text), so equal rows give
///   equal checksums on every backend.
pub async fn copy_database(
    from: &StoreOptions,
    to: &StoreOptions,
    options: CopyOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<CopyReport, CopyError> {
    if from.url == to.url {
        return Err(CopyError::SameDatabase {
            url: redact_url(&from.url),
        });
    }
    let mut source = open_source(from).await?;
    let mut target = match open_target(to).await {
        Ok(target) => target,
        Err(error) => {
            source.close().await;
            return Err(error);
        }
    };
    let copy = CopyRun {
        source_url: redact_url(&from.url),
        target_url: redact_url(&to.url),
        batch: options.batch.max(1),
    };
    let outcome = copy.run(&mut *source, &mut *target, progress).await;
    source.close().await;
    target.close().await;
    outcome
}

/// Connects to the source, checks its schema and starts the snapshot.
async fn open_source(options: &StoreOptions) -> Result<Box<dyn Side>, CopyError> {
    let mut side = connect_source(options)
        .await
        .map_err(CopyError::OpenSource)?;
    let checked = check_source(&mut *side, options).await;
    let started = match checked {
        Ok(()) => side.begin_snapshot().await.map_err(|e| CopyError::Source {
            url: redact_url(&options.url),
            what: "starting a read-only snapshot".into(),
            reason: e.to_string(),
        }),
        Err(error) => Err(error),
    };
    match started {
        Ok(()) => Ok(side),
        Err(error) => {
            side.close().await;
            Err(error)
        }
    }
}

async fn connect_source(options: &StoreOptions) -> Result<Box<dyn Side>, OpenError> {
    Ok(match backend(options)? {
        Backend::Sqlite => Box::new(Conn::<Sqlite>::new(
            connect_existing::<Sqlite>(options).await?,
        )),
        Backend::Postgres => Box::new(Conn::<Postgres>::new(
            connect_existing::<Postgres>(options).await?,
        )),
        Backend::MySql => Box::new(Conn::<MySql>::new(
            connect_existing::<MySql>(options).await?,
        )),
    })
}

/// Refuses a source whose schema is not exactly this binary's.
async fn check_source(side: &mut dyn Side, options: &StoreOptions) -> Result<(), CopyError> {
    let url = redact_url(&options.url);
    let binary = side.binary_version();
    if binary != SCHEMA_VERSION {
        return Err(CopyError::Unsupported {
            binary,
            known: SCHEMA_VERSION,
        });
    }
    match side.schema_state().await {
        SchemaState::Current => Ok(()),
        SchemaState::Unreadable(reason) => Err(CopyError::NotAStore { url, reason }),
        SchemaState::Older { database } => Err(CopyError::SourceOlder {
            url,
            database,
            binary,
        }),
        SchemaState::Newer { database } => Err(CopyError::SourceNewer {
            url,
            database,
            binary,
        }),
        SchemaState::Differs { version } => Err(CopyError::SourceSchemaDiffers { url, version }),
    }
}

/// Connects to the target and migrates it to this binary's schema.
async fn open_target(options: &StoreOptions) -> Result<Box<dyn Side>, CopyError> {
    let mut side = match backend(options).map_err(CopyError::OpenTarget)? {
        Backend::Sqlite => migrated::<Sqlite>(options).await,
        Backend::Postgres => migrated::<Postgres>(options).await,
        Backend::MySql => migrated::<MySql>(options).await,
    }
    .map_err(CopyError::OpenTarget)?;
    if let Err(error) = side.prepare_target().await {
        side.close().await;
        return Err(CopyError::Target {
            url: redact_url(&options.url),
            what: "setting up the session".into(),
            reason: error.to_string(),
        });
    }
    Ok(side)
}

async fn migrated<DB: Driver>(options: &StoreOptions) -> Result<Box<dyn Side>, OpenError> {
    let (_, mut conn) = connect_once::<DB>(options).await?;
    schema_on::<DB>(options, &mut conn).await?;
    Ok(Box::new(Conn::<DB>::new(conn)))
}

/// Where one table's copy starts.
#[derive(Debug)]
struct Start {
    /// Rows the target holds already (the source's first ones).
    present: u64,
    /// Rows in the source.
    total: u64,
    /// The key of the last row present.
    after: Option<Row>,
}

/// One run of a copy between two open sides.
struct CopyRun {
    source_url: String,
    target_url: String,
    batch: usize,
}

impl CopyRun {
    async fn run(
        &self,
        source: &mut dyn Side,
        target: &mut dyn Side,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<CopyReport, CopyError> {
        let started = Instant::now();
        let mut starts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            starts.push(self.plan(source, target, table).await?);
        }
        let resumed = resume_points(&starts);
        let is_resume = !resumed.is_empty();
        if is_resume {
            progress(Progress::Resuming(resumed));
        }
        let mut copied_now = Vec::with_capacity(TABLES.len());
        for (table, start) in TABLES.iter().zip(&starts) {
            copied_now.push(
                self.copy_table(source, target, table, start, progress)
                    .await?,
            );
        }
        for table in TABLES.iter().filter(|t| t.identity) {
            target.reset_ids(table).await.map_err(|e| {
                self.target_error(
                    format!(
                        "moving the id sequence of {} past the ids copied",
                        table.name
                    ),
                    e,
                )
            })?;
        }
        progress(Progress::Verifying);
        let (tables, source_checksum, target_checksum) =
            self.verify(source, target, &starts, &copied_now).await?;
        Ok(CopyReport {
            source: source.backend(),
            target: target.backend(),
            tables,
            source_checksum,
            target_checksum,
            resumed: is_resume,
            elapsed: started.elapsed(),
        })
    }

    /// Where `table`'s copy starts: at the beginning when the target's
    /// table is empty, after the last row when it holds the source's first
    /// rows exactly; anything else is refused.
    async fn plan(
        &self,
        source: &mut dyn Side,
        target: &mut dyn Side,
        table: &'static Table,
    ) -> Result<Start, CopyError> {
        let total = source
            .count(table)
            .await
            .map_err(|e| self.source_error(format!("counting {}", table.name), e))?;
        let present = target
            .count(table)
            .await
            .map_err(|e| self.target_error(format!("counting {}", table.name), e))?;
        if present == 0 {
            return Ok(Start {
                present,
                total,
                after: None,
            });
        }
        if present > total {
            return Err(self.not_empty(
                table,
                format!("holds {present} rows, the source only {total}"),
            ));
        }
        let after = self.matching_prefix(source, target, table, present).await?;
        Ok(Start {
            present,
            total,
            after: Some(after),
        })
    }

    /// Checks that the target's `present` rows of `table` are the source's
    /// first ones, equal column by column; returns the last one's key.
    async fn matching_prefix(
        &self,
        source: &mut dyn Side,
        target: &mut dyn Side,
        table: &'static Table,
        present: u64,
    ) -> Result<Row, CopyError> {
        let mut after: Option<Row> = None;
        let mut seen = 0u64;
        while seen < present {
            let theirs = target
                .read(table, after.as_deref(), self.batch)
                .await
                .map_err(|e| {
                    self.target_error(
                        format!("reading {} to compare it with the source", table.name),
                        e,
                    )
                })?;
            let ours = source
                .read(table, after.as_deref(), theirs.len().max(1))
                .await
                .map_err(|e| self.source_error(format!("reading {}", table.name), e))?;
            if let Some(detail) = first_difference(table, &theirs, &ours) {
                return Err(self.not_empty(table, detail));
            }
            let Some(last) = theirs.last() else {
                break;
            };
            seen += theirs.len() as u64;
            after = Some(key_of(table, last));
        }
        after.ok_or_else(|| self.not_empty(table, "changed while it was being read".into()))
    }

    /// Copies what the target lacks of `table`; returns the rows copied.
    async fn copy_table(
        &self,
        source: &mut dyn Side,
        target: &mut dyn Side,
        table: &'static Table,
        start: &Start,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<u64, CopyError> {
        let started = Instant::now();
        let mut after = start.after.clone();
        let mut copied_now = 0u64;
        let report = |copied_now: u64| {
            Progress::Table(TableProgress {
                table: table.name,
                copied: start.present + copied_now,
                total: start.total,
                copied_now,
                elapsed: started.elapsed(),
            })
        };
        progress(report(0));
        if start.present >= start.total {
            return Ok(0);
        }
        loop {
            let rows = source
                .read(table, after.as_deref(), self.batch)
                .await
                .map_err(|e| self.source_error(format!("reading {}", table.name), e))?;
            let Some(last) = rows.last() else {
                break;
            };
            target
                .write(table, &rows)
                .await
                .map_err(|e| self.target_error(format!("writing {}", table.name), e))?;
            after = Some(key_of(table, last));
            copied_now += rows.len() as u64;
            progress(report(copied_now));
        }
        Ok(copied_now)
    }

    /// Compares every table's row count and the ledger's checksum.
    async fn verify(
        &self,
        source: &mut dyn Side,
        target: &mut dyn Side,
        starts: &[Start],
        copied_now: &[u64],
    ) -> Result<(Vec<TableReport>, String, String), CopyError> {
        let mut tables = Vec::with_capacity(TABLES.len());
        let mut mismatches = Vec::new();
        for ((table, start), copied_now) in TABLES.iter().zip(starts).zip(copied_now) {
            let target_rows = target
                .count(table)
                .await
                .map_err(|e| self.target_error(format!("counting {}", table.name), e))?;
            if target_rows != start.total {
                mismatches.push(format!(
                    "{}: {} rows in the source, {target_rows} in the target",
                    table.name, start.total
                ));
            }
            tables.push(TableReport {
                table: table.name,
                source_rows: start.total,
                target_rows,
                copied_now: *copied_now,
            });
        }
        let ledger: &'static Table = &LEDGER;
        let source_checksum = ledger_checksum(source, ledger, self.batch)
            .await
            .map_err(|e| self.source_error(format!("checksumming {}", ledger.name), e))?;
        let target_checksum = ledger_checksum(target, ledger, self.batch)
            .await
            .map_err(|e| self.target_error(format!("checksumming {}", ledger.name), e))?;
        if source_checksum != target_checksum {
            mismatches.push("the ledger checksums differ".into());
        }
        if mismatches.is_empty() {
            Ok((tables, source_checksum, target_checksum))
        } else {
            Err(CopyError::Verification {
                mismatches,
                source_checksum,
                target_checksum,
            })
        }
    }

    /// The source failed while doing `what` (`reading customers`).
    fn source_error(&self, what: String, error: sqlx::Error) -> CopyError {
        CopyError::Source {
            url: self.source_url.clone(),
            what,
            reason: error.to_string(),
        }
    }

    /// The target failed while doing `what` (`writing customers`).
    fn target_error(&self, what: String, error: sqlx::Error) -> CopyError {
        CopyError::Target {
            url: self.target_url.clone(),
            what,
            reason: error.to_string(),
        }
    }

    fn not_empty(&self, table: &'static Table, detail: String) -> CopyError {
        CopyError::TargetNotEmpty {
            url: self.target_url.clone(),
            table: table.name,
            detail,
        }
    }
}

/// The tables an interrupted copy already started.
fn resume_points(starts: &[Start]) -> Vec<ResumePoint> {
    TABLES
        .iter()
        .zip(starts)
        .filter(|(_, start)| start.present > 0)
        .map(|(table, start)| ResumePoint {
            table: table.name,
            present: start.present,
            total: start.total,
            after: start
                .after
                .as_deref()
                .map(|key| describe_key(table, key))
                .unwrap_or_default(),
        })
        .collect()
}

/// How the target's rows (`theirs`) first differ from the source's rows
/// read after the same key (`ours`), if they do.
fn first_difference(table: &Table, theirs: &[Row], ours: &[Row]) -> Option<String> {
    for (n, row) in theirs.iter().enumerate() {
        let theirs_key = describe_key(table, &key_of(table, row));
        match ours.get(n) {
            None => {
                return Some(format!(
                    "holds the row {theirs_key}, which the source lacks"
                ));
            }
            Some(ours) if key_of(table, ours) != key_of(table, row) => {
                return Some(format!(
                    "holds the row {theirs_key} where the source has {}",
                    describe_key(table, &key_of(table, ours))
                ));
            }
            Some(ours) if ours != row => {
                return Some(format!(
                    "holds the row {theirs_key} with other values than the source's"
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// The primary-key cells of a row.
fn key_of(table: &Table, row: &[Cell]) -> Row {
    row[..table.key.min(row.len())].to_vec()
}

/// A key for people: `id 40000`, `call_id "c1"`, `(customer_id "cus_1",
/// charge_key "k")`.
fn describe_key(table: &Table, key: &[Cell]) -> String {
    let parts: Vec<String> = table
        .key_columns()
        .iter()
        .zip(key)
        .map(|(column, cell)| format!("{} {}", column.name, describe_cell(cell)))
        .collect();
    if parts.len() == 1 {
        parts.concat()
    } else {
        format!("({})", parts.join(", "))
    }
}

fn describe_cell(cell: &Cell) -> String {
    match cell {
        Cell::Null => "NULL".into(),
        Cell::Int(value) => value.to_string(),
        Cell::Text(text) => format!("{text:?}"),
        Cell::Bytes(bytes) => format!("x'{}'", hex(bytes)),
    }
}

/// SHA-256, in lower-case hex, over the ledger entries in id order: for
/// each row, its columns in the order of the schema (`id, customer_id,
/// kind, amount, unit, balance_after, call_id, plan_id, tool,
/// idempotency_key, reason, created_at`), each as one tag byte and its
/// value — `0` for `NULL`; `1` and the 8-byte big-endian two's complement
/// for an integer; `2`, the 8-byte big-endian length and the UTF-8 bytes
/// for text; `3`, the length and the bytes for a byte string. The same
/// rows give the same checksum on every backend.
async fn ledger_checksum(
    side: &mut dyn Side,
    table: &'static Table,
    batch: usize,
) -> Result<String, sqlx::Error> {
    let mut hasher = Sha256::new();
    let mut after: Option<Row> = None;
    loop {
        let rows = side.read(table, after.as_deref(), batch).await?;
        let Some(last) = rows.last() else {
            break;
        };
        for row in &rows {
            hash_row(&mut hasher, table, row);
        }
        after = Some(key_of(table, last));
    }
    Ok(hex(&hasher.finalize()))
}

fn hash_row(hasher: &mut Sha256, table: &Table, row: &[Cell]) {
    debug_assert_eq!(row.len(), table.columns.len());
    for cell in row {
        match cell {
            Cell::Null => hasher.update([0u8]),
            Cell::Int(value) => {
                hasher.update([1u8]);
                hasher.update(value.to_be_bytes());
            }
            Cell::Text(text) => hash_bytes(hasher, 2, text.as_bytes()),
            Cell::Bytes(bytes) => hash_bytes(hasher, 3, bytes),
        }
    }
}

fn hash_bytes(hasher: &mut Sha256, tag: u8, bytes: &[u8]) {
    hasher.update([tag]);
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_row(id: i64, reason: Option<&str>) -> Row {
        vec![
            Cell::Int(id),
            Cell::Text("cus_1".into()),
            Cell::Text("grant".into()),
            Cell::Int(i64::MIN),
            Cell::Text("credits".into()),
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Text("k".into()),
            reason.map_or(Cell::Null, |r| Cell::Text(r.into())),
            Cell::Int(0),
        ]
    }

    #[test]
    fn checksum_encoding_tells_null_from_empty_and_splits_unambiguously() {
        let digest = |rows: &[Row]| {
            let mut hasher = Sha256::new();
            for row in rows {
                hash_row(&mut hasher, &LEDGER, row);
            }
            hex(&hasher.finalize())
        };
        let a = digest(&[ledger_row(1, None)]);
        let b = digest(&[ledger_row(1, Some(""))]);
        assert_ne!(a, b);
        assert_eq!(a, digest(&[ledger_row(1, None)]));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn keys_are_described_for_operators() {
        let ledger: &'static Table = &LEDGER;
        assert_eq!(describe_key(ledger, &[Cell::Int(40_000)]), "id 40000");
        let charges = TABLES.iter().find(|t| t.name == "call_charges").unwrap();
        assert_eq!(
            describe_key(
                charges,
                &[Cell::Text("cus_1".into()), Cell::Text("k\"1".into())]
            ),
            "(customer_id \"cus_1\", charge_key \"k\\\"1\")"
        );
        let point = ResumePoint {
            table: "ledger_entries",
            present: 40_000,
            total: 52_000,
            after: "id 40000".into(),
        };
        assert_eq!(
            point.to_string(),
            "ledger_entries after id 40000 (40000 of 52000 rows)"
        );
        let done = ResumePoint {
            present: 52_000,
            ..point
        };
        assert_eq!(done.to_string(), "ledger_entries complete");
    }

    #[test]
    fn differences_are_found() {
        let ledger: &'static Table = &LEDGER;
        let same = vec![ledger_row(1, None), ledger_row(2, None)];
        assert_eq!(first_difference(ledger, &same, &same), None);
        let other = vec![ledger_row(1, None), ledger_row(2, Some("x"))];
        assert!(
            first_difference(ledger, &same, &other)
                .unwrap()
                .contains("id 2 with other values")
        );
        let shifted = vec![ledger_row(1, None), ledger_row(3, None)];
        assert!(
            first_difference(ledger, &same, &shifted)
                .unwrap()
                .contains("where the source has id 3")
        );
        assert!(
            first_difference(ledger, &same, &same[..1])
                .unwrap()
                .contains("which the source lacks")
        );
    }
}
