//! Exports of usage records and ledger entries as CSV or JSON lines, shared
//! by `GET /api/v1/export/{usage,ledger}` and `mcp-meter export`.
//!
//! The rows are read in key order in batches of [`BATCH_ROWS`] with the
//! store's keyset cursors (usage after `(started_at, call_id)`, the ledger
//! after `id`), and each batch is formatted into one chunk of bytes: memory
//! stays flat however large the table is.
//!
//! Columns, in this order (the CSV header, and the keys of each JSON line):
//!
//! * usage: [`USAGE_COLUMNS`];
//! * ledger: [`LEDGER_COLUMNS`].
//!
//! Times are RFC 3339 UTC with milliseconds (`2026-11-01T09:30:00.123Z`).
//! CSV follows RFC 4180: a header row, CRLF line ends, a field with a comma,
//! a quote, CR or LF quoted and its quotes doubled; a missing value is an
//! empty field. JSON lines: one object per row, LF-terminated, a missing
//! value is `null`, numbers are numbers.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::Stream;
use futures_util::stream;
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{LedgerEntry, LedgerFilter};
use mcp_meter_plugin::ports::{StoreError, UsageOutcome, UsageRecord};

use crate::store::{Store, UsageFilter};

/// Rows read (and written) per batch.
pub const BATCH_ROWS: u32 = 5_000;

/// The columns of a usage export, in order.
pub const USAGE_COLUMNS: [&str; 13] = [
    "call_id",
    "started_at",
    "customer_id",
    "key_id",
    "session_id",
    "method",
    "tool",
    "outcome",
    "reason",
    "units",
    "duration_us",
    "bytes_in",
    "bytes_out",
];

/// The columns of a ledger export, in order.
pub const LEDGER_COLUMNS: [&str; 12] = [
    "id",
    "created_at",
    "customer_id",
    "kind",
    "amount",
    "unit",
    "balance_after",
    "plan_id",
    "tool",
    "call_id",
    "idempotency_key",
    "reason",
];

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// `csv` or `jsonl`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// The file extension (`csv`, `jsonl`).
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// The HTTP content type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Usage records, by `started_at` then `call_id`.
    Usage,
    /// Ledger entries, by id.
    Ledger,
}

impl Table {
    /// `usage` or `ledger`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Table::Usage => "usage",
            Table::Ledger => "ledger",
        }
    }

    /// The columns, in order.
    pub fn columns(&self) -> &'static [&'static str] {
        match self {
            Table::Usage => &USAGE_COLUMNS,
            Table::Ledger => &LEDGER_COLUMNS,
        }
    }
}

/// An export: the table, the format and the filters (`tool` and `outcome`
/// apply to usage only; times are on `started_at` for usage, `created_at`
/// for the ledger; `since` inclusive, `until` exclusive).
#[derive(Debug, Clone)]
pub struct Export {
    /// Which rows.
    pub table: Table,
    /// How they are written.
    pub format: Format,
    /// Only this customer's.
    pub customer: Option<CustomerId>,
    /// Only calls of this tool (usage).
    pub tool: Option<String>,
    /// Only calls with this outcome (usage).
    pub outcome: Option<UsageOutcome>,
    /// From this instant on.
    pub since: Option<UnixMillis>,
    /// Before this instant.
    pub until: Option<UnixMillis>,
}

impl Export {
    /// A file name for this export made at `now`:
    /// `usage-20261101T093000Z.csv`.
    pub fn file_name(&self, now: UnixMillis) -> String {
        let stamp = DateTime::<Utc>::from_timestamp_millis(now.0)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_else(|| now.0.to_string());
        format!(
            "{}-{stamp}.{}",
            self.table.as_str(),
            self.format.extension()
        )
    }

    /// The export as a stream of chunks: the CSV header first (CSV only),
    /// then one chunk per batch of rows. A database failure ends the stream
    /// with the error.
    pub fn stream(
        self,
        store: Arc<dyn Store>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let header = match self.format {
            Format::Csv => {
                let mut out = Vec::new();
                let names: Vec<Value<'_>> = self
                    .table
                    .columns()
                    .iter()
                    .copied()
                    .map(Value::Text)
                    .collect();
                csv_row(&names, &mut out);
                Some(Bytes::from(out))
            }
            Format::Jsonl => None,
        };
        let state = Cursor {
            export: self,
            store,
            header,
            usage_after: None,
            ledger_after: None,
            done: false,
        };
        stream::try_unfold(state, |mut state| async move {
            if let Some(header) = state.header.take() {
                return Ok(Some((header, state)));
            }
            if state.done {
                return Ok(None);
            }
            let chunk = state.next_batch().await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            Ok(Some((Bytes::from(chunk), state)))
        })
    }
}

/// Where an export stands.
struct Cursor {
    export: Export,
    store: Arc<dyn Store>,
    header: Option<Bytes>,
    usage_after: Option<(UnixMillis, CallId)>,
    ledger_after: Option<i64>,
    done: bool,
}

impl Cursor {
    /// Reads and formats the next batch; empty at the end.
    async fn next_batch(&mut self) -> Result<Vec<u8>, StoreError> {
        let export = &self.export;
        let mut out = Vec::new();
        match export.table {
            Table::Usage => {
                let filter = UsageFilter {
                    customer: export.customer.clone(),
                    since: export.since,
                    until: export.until,
                    limit: BATCH_ROWS,
                    tool: export.tool.clone(),
                    outcome: export.outcome,
                    after: self.usage_after.take(),
                };
                let rows = self.store.usage_records(&filter).await?;
                self.done = rows.len() < BATCH_ROWS as usize;
                out.reserve(rows.len() * 160);
                for row in &rows {
                    write_row(export.format, &USAGE_COLUMNS, &usage_values(row), &mut out);
                }
                self.usage_after = rows.last().map(|r| (r.started_at, r.call_id.clone()));
            }
            Table::Ledger => {
                let filter = LedgerFilter {
                    customer: export.customer.clone(),
                    after_id: self.ledger_after,
                    limit: BATCH_ROWS,
                };
                let rows = self
                    .store
                    .ledger_entries_between(&filter, export.since, export.until)
                    .await?;
                self.done = rows.len() < BATCH_ROWS as usize;
                out.reserve(rows.len() * 160);
                for row in &rows {
                    write_row(
                        export.format,
                        &LEDGER_COLUMNS,
                        &ledger_values(row),
                        &mut out,
                    );
                }
                self.ledger_after = rows.last().map(|e| e.id);
            }
        }
        Ok(out)
    }
}

/// One value of a row.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Time(UnixMillis),
    Null,
}

fn text(value: Option<&str>) -> Value<'_> {
    value.map_or(Value::Null, Value::Text)
}

fn usage_values(r: &UsageRecord) -> [Value<'_>; 13] {
    [
        Value::Text(r.call_id.as_str()),
        Value::Time(r.started_at),
        text(r.customer_id.as_ref().map(|c| c.as_str())),
        text(r.key_id.as_ref().map(|k| k.as_str())),
        text(r.session_id.as_deref()),
        Value::Text(&r.method),
        text(r.tool.as_deref()),
        Value::Text(r.outcome.as_str()),
        text(r.reason.as_deref()),
        Value::Int(r.units),
        Value::Int(r.duration_us),
        Value::Int(r.bytes_in),
        Value::Int(r.bytes_out),
    ]
}

fn ledger_values(e: &LedgerEntry) -> [Value<'_>; 12] {
    [
        Value::Int(e.id),
        Value::Time(e.created_at),
        Value::Text(e.customer_id.as_str()),
        Value::Text(e.kind.as_str()),
        Value::Int(e.amount),
        Value::Text(&e.unit),
        e.balance_after.map_or(Value::Null, Value::Int),
        text(e.plan_id.as_deref()),
        text(e.tool.as_deref()),
        text(e.call_id.as_ref().map(|c| c.as_str())),
        Value::Text(&e.idempotency_key),
        text(e.reason.as_deref()),
    ]
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn format_time(at: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| at.0.to_string())
}

fn write_row(format: Format, columns: &[&str], values: &[Value<'_>], out: &mut Vec<u8>) {
    match format {
        Format::Csv => csv_row(values, out),
        Format::Jsonl => json_row(columns, values, out),
    }
}

/// One CSV record, CRLF-terminated (RFC 4180).
fn csv_row(values: &[Value<'_>], out: &mut Vec<u8>) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match value {
            Value::Text(s) => csv_field(s, out),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Time(at) => out.extend_from_slice(format_time(*at).as_bytes()),
            Value::Null => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A CSV field: quoted, with its quotes doubled, when it holds a comma, a
/// quote, CR or LF.
fn csv_field(s: &str, out: &mut Vec<u8>) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        out.push(b'"');
        for (i, piece) in s.split('"').enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(piece.as_bytes());
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// One JSON object, LF-terminated, its keys in column order.
fn json_row(columns: &[&str], values: &[Value<'_>], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (column, value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(column, out);
        out.push(b':');
        match value {
            Value::Text(s) => json_string(s, out),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Time(at) => json_string(&format_time(*at), out),
            Value::Null => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_it_must() {
        let mut out = Vec::new();
        csv_row(
            &[
                Value::Text("plain"),
                Value::Text("a,b"),
                Value::Text("say \"hi\""),
                Value::Text("two\nlines\r"),
                Value::Null,
                Value::Int(-3),
                Value::Text("é ü"),
            ],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\r\",,-3,é ü\r\n"
        );
    }

    #[test]
    fn json_lines_keep_the_column_order() {
        let mut out = Vec::new();
        json_row(
            &["b", "a", "t", "n"],
            &[
                Value::Text("x\"\n"),
                Value::Int(7),
                Value::Time(UnixMillis(1_790_000_000_123)),
                Value::Null,
            ],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"b\":\"x\\\"\\n\",\"a\":7,\"t\":\"2026-09-21T14:13:20.123Z\",\"n\":null}\n"
        );
    }
}
