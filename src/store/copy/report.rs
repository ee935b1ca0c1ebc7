//! What a copy tells its caller: [`Progress`] while it runs, a
//! [`CopyReport`] when it is done.

use std::fmt;
use std::time::Duration;

use crate::store::Backend;

/// How a copy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// Rows per batch: each batch is read from the source, then written to
    /// the target in one transaction (at least 1).
    pub batch: usize,
}

impl Default for CopyOptions {
    /// Batches of 1000 rows.
    fn default() -> Self {
        Self { batch: 1_000 }
    }
}

/// What a copy reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The target holds what an interrupted copy left: the tables that
    /// already have rows, and where each continues.
    Resuming(Vec<ResumePoint>),
    /// A table's copy moved on (sent once when the table starts and after
    /// every batch).
    Table(TableProgress),
    /// Every table is copied; the counts and checksums are being compared.
    Verifying,
}

/// Where an interrupted copy continues in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The table.
    pub table: &'static str,
    /// Rows the target already holds (the source's first ones).
    pub present: u64,
    /// Rows in the source.
    pub total: u64,
    /// The last key present, described (`id 40000`).
    pub after: String,
}

impl fmt::Display for ResumePoint {
    /// `customers complete` or `ledger_entries after id 40000 (40000 of
    /// 52000 rows)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.present >= self.total {
            write!(f, "{} complete", self.table)
        } else {
            write!(
                f,
                "{} after {} ({} of {} rows)",
                self.table, self.after, self.present, self.total
            )
        }
    }
}

/// How far one table's copy is.
#[derive(Debug, Clone, PartialEq)]
pub struct TableProgress {
    /// The table.
    pub table: &'static str,
    /// Rows in the target so far (including those an interrupted run
    /// copied).
    pub copied: u64,
    /// Rows in the source.
    pub total: u64,
    /// Rows copied by this run.
    pub copied_now: u64,
    /// Time spent on this table by this run.
    pub elapsed: Duration,
}

impl TableProgress {
    /// Rows copied by this run per second.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.copied_now as f64 / seconds
        } else {
            0.0
        }
    }

    /// Whether the table is fully copied.
    pub fn done(&self) -> bool {
        self.copied >= self.total
    }
}

/// One table of a finished copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// The table.
    pub table: &'static str,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the target after the copy (equal, or the copy failed).
    pub target_rows: u64,
    /// Rows this run copied (less than `source_rows` on a resumed copy).
    pub copied_now: u64,
}

/// A finished, verified copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The source's backend.
    pub source: Backend,
    /// The target's backend.
    pub target: Backend,
    /// Every table, in the order copied.
    pub tables: Vec<TableReport>,
    /// SHA-256 of the source's ledger entries in id order, hex (see
    /// [`copy_database`](crate::store::copy_database)).
    pub source_checksum: String,
    /// SHA-256 of the target's ledger, hex (equal to the source's).
    pub target_checksum: String,
    /// Whether the run continued an interrupted copy.
    pub resumed: bool,
    /// How long the run took.
    pub elapsed: Duration,
}

impl CopyReport {
    /// Rows in the source, all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.source_rows).sum()
    }

    /// Rows copied by this run, all tables.
    pub fn copied_now(&self) -> u64 {
        self.tables.iter().map(|t| t.copied_now).sum()
    }
}
