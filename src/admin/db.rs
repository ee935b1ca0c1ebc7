//! `mcp-meter db copy --from URL --to URL [--batch N]`: moves a whole store
//! into another database ([`crate::store::copy_database`]). Progress goes
//! to stderr (per table: rows copied of the total, and the rate); the
//! report — rows per table and both ledger checksums — to stdout. URLs are
//! shown with their password hidden.

use std::io::Write;
use std::time::{Duration, Instant};

use super::{AdminError, table};
use crate::cli::DbAction;
use crate::store::{
    self, CopyOptions, CopyReport, Progress, StoreOptions, TableProgress, redact_url,
};

/// How often a table's progress line is printed while it is copied.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How long to wait for a connection to either database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `mcp-meter db …`.
pub async fn run(action: &DbAction) -> Result<(), AdminError> {
    match action {
        DbAction::Copy { from, to, batch } => copy(from, to, *batch).await,
    }
}

async fn copy(from: &str, to: &str, batch: u32) -> Result<(), AdminError> {
    eprintln!("copying {} to {}", redact_url(from), redact_url(to));
    let options = CopyOptions {
        batch: usize::try_from(batch).unwrap_or(CopyOptions::default().batch),
    };
    let mut printer = ProgressPrinter::default();
    let report = store::copy_database(
        &copy_options(from),
        &copy_options(to),
        options,
        &mut |progress| printer.show(&progress),
    )
    .await?;
    print!("{}", describe(&report, from, to));
    Ok(())
}

fn copy_options(url: &str) -> StoreOptions {
    StoreOptions {
        url: url.to_owned(),
        max_connections: 1,
        acquire_timeout: CONNECT_TIMEOUT,
    }
}

/// Prints progress on stderr: a table's line at most once a
/// [`PROGRESS_EVERY`], and always when it is done.
#[derive(Default)]
struct ProgressPrinter {
    last: Option<(&'static str, Instant)>,
}

impl ProgressPrinter {
    fn show(&mut self, progress: &Progress) {
        let line = match progress {
            Progress::Resuming(points) => Some(format!(
                "resuming: {}",
                points
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Progress::Table(table) => self.table_line(table),
            Progress::Verifying => {
                Some("verifying: row counts of every table, ledger checksums".to_owned())
            }
        };
        if let Some(line) = line {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{line}");
        }
    }

    fn table_line(&mut self, progress: &TableProgress) -> Option<String> {
        let now = Instant::now();
        let due = match self.last {
            Some((table, at)) => table != progress.table || now - at >= PROGRESS_EVERY,
            None => true,
        };
        let starting = progress.copied_now == 0 && !progress.done();
        if !(progress.done() || (due && !starting)) {
            return None;
        }
        self.last = Some((progress.table, now));
        Some(progress_line(progress))
    }
}

/// `ledger_entries: 40000/52000 rows (12000 rows/s)`, or, when done,
/// `… done in 1.2s`.
fn progress_line(progress: &TableProgress) -> String {
    let mut line = format!(
        "{}: {}/{} rows",
        progress.table, progress.copied, progress.total
    );
    if progress.copied_now == 0 {
        if progress.total > 0 {
            line.push_str(" (copied before)");
        }
        return line;
    }
    line.push_str(&format!(" ({:.0} rows/s)", progress.rate()));
    if progress.done() {
        line.push_str(&format!(" done in {:.1}s", progress.elapsed.as_secs_f64()));
    }
    line
}

/// The final report: what was copied where, per table, and the checksums.
fn describe(report: &CopyReport, from: &str, to: &str) -> String {
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.to_owned(),
                t.source_rows.to_string(),
                t.target_rows.to_string(),
                t.copied_now.to_string(),
            ]
        })
        .collect();
    format!(
        "copied {} ({}) to {} ({}){}: {} rows in {} tables, {} copied by this run, in {:.1}s\n\
         {}\
         ledger checksum (sha256), source: {}\n\
         ledger checksum (sha256), target: {}\n\
         verified: every table's row count and the ledger checksum match\n",
        redact_url(from),
        report.source,
        redact_url(to),
        report.target,
        if report.resumed { " (resumed)" } else { "" },
        report.rows(),
        report.tables.len(),
        report.copied_now(),
        report.elapsed.as_secs_f64(),
        table::render(&["TABLE", "SOURCE", "TARGET", "COPIED NOW"], &rows),
        report.source_checksum,
        report.target_checksum,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(copied: u64, total: u64, copied_now: u64) -> TableProgress {
        TableProgress {
            table: "ledger_entries",
            copied,
            total,
            copied_now,
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn progress_lines_show_rows_and_rate() {
        assert_eq!(
            progress_line(&at(4_000, 10_000, 4_000)),
            "ledger_entries: 4000/10000 rows (2000 rows/s)"
        );
        assert_eq!(
            progress_line(&at(10_000, 10_000, 6_000)),
            "ledger_entries: 10000/10000 rows (3000 rows/s) done in 2.0s"
        );
        assert_eq!(
            progress_line(&at(5, 5, 0)),
            "ledger_entries: 5/5 rows (copied before)"
        );
    }

    #[test]
    fn a_table_prints_when_done_and_at_most_once_a_second() {
        let mut printer = ProgressPrinter::default();
        assert!(printer.table_line(&at(0, 10, 0)).is_none());
        assert!(printer.table_line(&at(5, 10, 5)).is_some());
        assert!(printer.table_line(&at(6, 10, 6)).is_none());
        assert!(printer.table_line(&at(10, 10, 10)).is_some());
    }
}
