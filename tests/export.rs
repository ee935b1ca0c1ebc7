//! Exports of usage and the ledger as CSV and JSON lines, over the API
//! (`GET /api/v1/export/{usage,ledger}` on the real proxy) and the CLI
//! (`mcp-meter export`), on SQLite, PostgreSQL and MariaDB: every row
//! parsed back and compared with what the store holds, the filters, empty
//! results, refusals; and a million rows exported with flat memory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::{Proxy, bin};
use mcp_meter::store::{Store, UsageFilter};
use mcp_meter_plugin::identity::{CallId, CustomerId, KeyId, UnixMillis};
use mcp_meter_plugin::ledger::{BalanceChange, EntryKind, LedgerEntry, LedgerFilter};
use mcp_meter_plugin::ports::{NewCustomer, UsageOutcome, UsageRecord};
use serde_json::Value;

const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";

/// 2026-09-21T14:13:20Z.
const BASE: i64 = 1_790_000_000_000;

const USAGE_COLUMNS: [&str; 13] = [
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

const LEDGER_COLUMNS: [&str; 12] = [
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

/// Tools with what CSV must quote, and non-ASCII.
const TOOLS: [Option<&str>; 5] = [
    Some("echo"),
    Some("say, \"hi\""),
    Some("two\nlines"),
    Some("ünïcødé 日本語"),
    None,
];

/// Reasons likewise.
const REASONS: [Option<&str>; 4] = [
    None,
    Some("rate_limited"),
    Some("a, b and \"c\"\r\nnext line"),
    Some("prix épuisé — 残高"),
];

const OUTCOMES: [UsageOutcome; 3] = [
    UsageOutcome::Ok,
    UsageOutcome::Refused,
    UsageOutcome::ToolError,
];

async fn customer(store: &Arc<dyn Store>, name: &str) -> CustomerId {
    store
        .create_customer(NewCustomer {
            name: name.into(),
            email: None,
            plan_id: None,
            external_subject: None,
            metadata: Default::default(),
        })
        .await
        .expect("customer")
        .id
}

fn record(i: i64, customers: &[CustomerId]) -> UsageRecord {
    let customer = match i % 3 {
        2 => None,
        n => Some(customers[n as usize].clone()),
    };
    UsageRecord {
        call_id: CallId::new(format!("call_exp{i:06}")),
        key_id: customer
            .as_ref()
            .map(|_| KeyId::new(format!("key_k{}", i % 4))),
        customer_id: customer,
        session_id: (i % 2 == 0).then(|| format!("sess-{}", i % 7)),
        method: "tools/call".into(),
        tool: TOOLS[(i % 5) as usize].map(str::to_owned),
        // Pairs share a start time: the order is then by call id.
        started_at: UnixMillis(BASE + (i / 2) * 1_000 + 7),
        duration_us: 100 + i,
        bytes_in: 10 + i % 13,
        bytes_out: 20 * i,
        outcome: OUTCOMES[(i % 3) as usize],
        reason: REASONS[(i % 4) as usize].map(str::to_owned),
        units: i % 5,
    }
}

/// Usage records and ledger entries of two customers (and a third with
/// nothing), returned as (customers, empty customer).
async fn seed(store: &Arc<dyn Store>, records: i64, changes: i64) -> (Vec<CustomerId>, CustomerId) {
    let customers = vec![customer(store, "Ada").await, customer(store, "Bob").await];
    let nobody = customer(store, "Nobody").await;
    let all: Vec<UsageRecord> = (0..records).map(|i| record(i, &customers)).collect();
    for chunk in all.chunks(2_000) {
        store.record_usage(chunk).await.expect("record usage");
    }
    for i in 0..changes {
        let who = &customers[(i % 2) as usize];
        let (kind, amount, reason) = if i < 4 || i % 3 != 0 {
            (
                EntryKind::Grant,
                10 + i,
                (i % 2 == 0).then(|| "welcome, \"friend\"\nline 2 — ü".to_owned()),
            )
        } else {
            (EntryKind::Adjustment, -3, Some(format!("fix #{i}, sorry")))
        };
        store
            .change_balance(&BalanceChange {
                customer_id: who.clone(),
                kind,
                amount,
                idempotency_key: format!("idem-{i}"),
                reason,
                at: UnixMillis(BASE + i * 60_000),
            })
            .await
            .expect("change balance");
    }
    (customers, nobody)
}

/// What the store holds, read in pages of 1,000.
async fn stored_usage(store: &Arc<dyn Store>, filter: UsageFilter) -> Vec<UsageRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .usage_records(&UsageFilter {
                limit: 1_000,
                after: after.clone(),
                ..filter.clone()
            })
            .await
            .expect("usage records");
        let done = page.len() < 1_000;
        after = page.last().map(|r| (r.started_at, r.call_id.clone()));
        all.extend(page);
        if done {
            return all;
        }
    }
}

async fn stored_ledger(store: &Arc<dyn Store>) -> Vec<LedgerEntry> {
    store
        .entries(&LedgerFilter {
            customer: None,
            after_id: None,
            limit: 100_000,
        })
        .await
        .expect("entries")
}

fn time(at: UnixMillis) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at.0)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A cell: text, a number, or nothing.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Text(String),
    Int(i64),
    Null,
}

fn text(v: Option<&str>) -> Cell {
    v.map_or(Cell::Null, |s| Cell::Text(s.to_owned()))
}

fn usage_cells(r: &UsageRecord) -> Vec<Cell> {
    vec![
        Cell::Text(r.call_id.to_string()),
        Cell::Text(time(r.started_at)),
        text(r.customer_id.as_ref().map(|c| c.as_str())),
        text(r.key_id.as_ref().map(|k| k.as_str())),
        text(r.session_id.as_deref()),
        Cell::Text(r.method.clone()),
        text(r.tool.as_deref()),
        Cell::Text(r.outcome.as_str().to_owned()),
        text(r.reason.as_deref()),
        Cell::Int(r.units),
        Cell::Int(r.duration_us),
        Cell::Int(r.bytes_in),
        Cell::Int(r.bytes_out),
    ]
}

fn ledger_cells(e: &LedgerEntry) -> Vec<Cell> {
    vec![
        Cell::Int(e.id),
        Cell::Text(time(e.created_at)),
        Cell::Text(e.customer_id.to_string()),
        Cell::Text(e.kind.as_str().to_owned()),
        Cell::Int(e.amount),
        Cell::Text(e.unit.clone()),
        e.balance_after.map_or(Cell::Null, Cell::Int),
        text(e.plan_id.as_deref()),
        text(e.tool.as_deref()),
        text(e.call_id.as_ref().map(|c| c.as_str())),
        Cell::Text(e.idempotency_key.clone()),
        text(e.reason.as_deref()),
    ]
}

/// An RFC 4180 parser: records of fields (CRLF or LF line ends).
fn parse_csv(input: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = input.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                assert!(field.is_empty(), "a quote inside an unquoted field");
                quoted = true;
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            c => field.push(c),
        }
    }
    assert!(!quoted, "an unterminated quoted field");
    if any {
        record.push(field);
        records.push(record);
    }
    records
}

/// CSV cells of expected rows (a missing value is an empty field).
fn as_csv(rows: &[Vec<Cell>]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            row.iter()
                .map(|c| match c {
                    Cell::Text(s) => s.clone(),
                    Cell::Int(n) => n.to_string(),
                    Cell::Null => String::new(),
                })
                .collect()
        })
        .collect()
}

/// Checks a CSV export: the header, then exactly `rows`.
fn check_csv(body: &str, columns: &[&str], rows: &[Vec<Cell>]) {
    assert!(body.ends_with("\r\n"), "CRLF-terminated");
    let parsed = parse_csv(body);
    assert_eq!(parsed[0], columns, "the header");
    let expected = as_csv(rows);
    assert_eq!(parsed.len() - 1, expected.len(), "row count");
    for (i, (got, want)) in parsed[1..].iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "CSV row {i}");
    }
}

/// Checks a JSON-lines export: exactly `rows`, keys in column order.
fn check_jsonl(body: &str, columns: &[&str], rows: &[Vec<Cell>]) {
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), rows.len(), "line count");
    assert!(rows.is_empty() || body.ends_with('\n'));
    for (i, (line, want)) in lines.iter().zip(rows).enumerate() {
        // Keys in the documented order.
        let mut at = 0;
        for column in columns {
            let key = format!("\"{column}\":");
            let found = line[at..]
                .find(&key)
                .unwrap_or_else(|| panic!("line {i}: {column} after {at}: {line}"));
            at += found + key.len();
        }
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {i}: {e}: {line}"));
        assert_eq!(object.len(), columns.len(), "line {i}");
        for (column, cell) in columns.iter().zip(want) {
            let value = &object[*column];
            let ok = match cell {
                Cell::Text(s) => value.as_str() == Some(s.as_str()),
                Cell::Int(n) => value.as_i64() == Some(*n),
                Cell::Null => value.is_null(),
            };
            assert!(ok, "line {i} {column}: {value} is not {cell:?}");
        }
    }
}

fn check(format: &str, body: &str, columns: &[&str], rows: &[Vec<Cell>]) {
    match format {
        "csv" => check_csv(body, columns, rows),
        _ => check_jsonl(body, columns, rows),
    }
}

fn start(dir: &std::path::Path, db: &str) -> Proxy {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\nmax_connections = 5\n\
         [api]\nadmin_tokens = [\"{TOKEN}\"]\n",
        bin()
    );
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    Proxy::start(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(proxy: &Proxy) -> Api {
        let base = proxy.url.strip_suffix("/mcp").expect("/mcp");
        Api {
            http: reqwest::Client::new(),
            base: format!("{base}/api/v1"),
        }
    }

    /// GET `path` with `query`; the status, the headers and the body.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self.http.get(format!("{}{path}", self.base)).query(query);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body");
        (status, headers, body)
    }

    /// An export that must succeed; its body.
    async fn export(&self, table: &str, query: &[(&str, &str)]) -> String {
        let (status, headers, body) = self
            .get(&format!("/export/{table}"), query, Some(TOKEN))
            .await;
        assert_eq!(status, 200, "{table} {query:?}: {body}");
        let format = query
            .iter()
            .find(|(k, _)| *k == "format")
            .map(|(_, v)| *v)
            .expect("format");
        let content_type = headers["content-type"].to_str().expect("ascii");
        let disposition = headers["content-disposition"].to_str().expect("ascii");
        match format {
            "csv" => assert_eq!(content_type, "text/csv; charset=utf-8"),
            _ => assert_eq!(content_type, "application/x-ndjson"),
        }
        assert!(
            disposition.starts_with(&format!("attachment; filename=\"{table}-"))
                && disposition.ends_with(&format!(".{format}\"")),
            "{disposition}"
        );
        body
    }
}

/// `mcp-meter export ARGS… --database-url URL`; stdout (or the file of
/// `--output`, which the caller reads).
fn cli(db: &TestDb, args: &[&str]) -> String {
    let output = Command::new(bin())
        .arg("export")
        .args(args)
        .args(["--database-url", db.url()])
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-meter export");
    assert!(
        output.status.success(),
        "export {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn cli_fails(db: &TestDb, args: &[&str]) -> String {
    let output = Command::new(bin())
        .arg("export")
        .args(args)
        .args(["--database-url", db.url()])
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-meter export");
    assert!(!output.status.success(), "export {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn error_code(status: u16, body: &str) -> (u16, String) {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body}"));
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        value["error"]["code"].as_str().expect("code").to_owned(),
    )
}

/// An export request that must be refused: the table, the query, the
/// token, the status and the error code.
type Refusal<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
    u16,
    &'a str,
);

async fn exports_match_the_store(db: TestDb) {
    let store = db.open().await;
    // Over two batches of 5,000.
    let (customers, nobody) = seed(&store, 11_000, 150).await;
    let usage = stored_usage(&store, UsageFilter::default()).await;
    assert_eq!(usage.len(), 11_000);
    let ledger = stored_ledger(&store).await;
    assert_eq!(ledger.len(), 150);
    let usage_rows: Vec<Vec<Cell>> = usage.iter().map(usage_cells).collect();
    let ledger_rows: Vec<Vec<Cell>> = ledger.iter().map(ledger_cells).collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);

    for format in ["csv", "jsonl"] {
        // Everything, over the API and the CLI (stdout and --output).
        let body = api.export("usage", &[("format", format)]).await;
        check(format, &body, &USAGE_COLUMNS, &usage_rows);
        check(
            format,
            &cli(&db, &["usage", "--format", format]),
            &USAGE_COLUMNS,
            &usage_rows,
        );
        let file = dir.path().join(format!("usage.{format}"));
        cli(
            &db,
            &[
                "usage",
                "--format",
                format,
                "--output",
                file.to_str().unwrap(),
            ],
        );
        let written = std::fs::read_to_string(&file).expect("the output file");
        assert_eq!(written, body, "the CLI writes what the API streams");

        let body = api.export("ledger", &[("format", format)]).await;
        check(format, &body, &LEDGER_COLUMNS, &ledger_rows);
        let file = dir.path().join(format!("ledger.{format}"));
        cli(
            &db,
            &["ledger", "--format", format, "-o", file.to_str().unwrap()],
        );
        assert_eq!(std::fs::read_to_string(&file).expect("output"), body);

        // Filters: customer, tool, outcome and a time range.
        let ada = customers[0].as_str();
        let since = time(UnixMillis(BASE + 1_000 * 1_000));
        let until = time(UnixMillis(BASE + 3_000 * 1_000 + 7));
        let tool = TOOLS[1].unwrap();
        let cases: Vec<(Vec<(&str, &str)>, UsageFilter)> = vec![
            (
                vec![("customer", ada)],
                UsageFilter {
                    customer: Some(customers[0].clone()),
                    ..UsageFilter::default()
                },
            ),
            (
                vec![("tool", tool), ("outcome", "refused")],
                UsageFilter {
                    tool: Some(tool.to_owned()),
                    outcome: Some(UsageOutcome::Refused),
                    ..UsageFilter::default()
                },
            ),
            (
                vec![
                    ("since", since.as_str()),
                    ("until", until.as_str()),
                    ("customer", ada),
                ],
                UsageFilter {
                    customer: Some(customers[0].clone()),
                    since: Some(UnixMillis(BASE + 1_000 * 1_000)),
                    until: Some(UnixMillis(BASE + 3_000 * 1_000 + 7)),
                    ..UsageFilter::default()
                },
            ),
        ];
        for (params, filter) in cases {
            let want: Vec<Vec<Cell>> = stored_usage(&store, filter)
                .await
                .iter()
                .map(usage_cells)
                .collect();
            assert!(
                !want.is_empty() && want.len() < usage_rows.len(),
                "{params:?}"
            );
            let mut query = params.clone();
            query.push(("format", format));
            let body = api.export("usage", &query).await;
            check(format, &body, &USAGE_COLUMNS, &want);
            let mut args = vec!["usage", "--format", format];
            for (k, v) in &params {
                args.push(match *k {
                    "customer" => "--customer",
                    "tool" => "--tool",
                    "outcome" => "--outcome",
                    "since" => "--since",
                    _ => "--until",
                });
                args.push(v);
            }
            assert_eq!(cli(&db, &args), body, "{args:?}");
        }
        // The time range is inclusive at `since`, exclusive at `until`.
        let exact = time(UnixMillis(BASE + 7));
        let next = time(UnixMillis(BASE + 8));
        let body = api
            .export(
                "usage",
                &[("format", format), ("since", &exact), ("until", &next)],
            )
            .await;
        check(format, &body, &USAGE_COLUMNS, &usage_rows[..2]);

        // The ledger by customer and time.
        let bob = customers[1].as_str();
        let since_at = UnixMillis(BASE + 20 * 60_000);
        let until_at = UnixMillis(BASE + 90 * 60_000);
        let want: Vec<Vec<Cell>> = ledger
            .iter()
            .filter(|e| {
                e.customer_id == customers[1]
                    && e.created_at.0 >= since_at.0
                    && e.created_at.0 < until_at.0
            })
            .map(ledger_cells)
            .collect();
        assert_eq!(want.len(), 35);
        let (since, until) = (time(since_at), time(until_at));
        let body = api
            .export(
                "ledger",
                &[
                    ("format", format),
                    ("customer", bob),
                    ("since", &since),
                    ("until", &until),
                ],
            )
            .await;
        check(format, &body, &LEDGER_COLUMNS, &want);
        let got = cli(
            &db,
            &[
                "ledger",
                "--format",
                format,
                "--customer",
                bob,
                "--since",
                &since,
                "--until",
                &until,
            ],
        );
        assert_eq!(got, body);

        // Nothing matches: a header-only CSV, an empty JSON-lines body.
        for table in ["usage", "ledger"] {
            let body = api
                .export(table, &[("format", format), ("customer", nobody.as_str())])
                .await;
            let columns: &[&str] = if table == "usage" {
                &USAGE_COLUMNS
            } else {
                &LEDGER_COLUMNS
            };
            match format {
                "csv" => assert_eq!(body, format!("{}\r\n", columns.join(","))),
                _ => assert_eq!(body, ""),
            }
            let got = cli(
                &db,
                &[table, "--format", format, "--customer", nobody.as_str()],
            );
            assert_eq!(got, body);
        }
    }

    // Refusals, in the API's error shape, before any byte of an export.
    let cases: Vec<Refusal<'_>> = vec![
        ("usage", vec![], Some(TOKEN), 400, "invalid_request"),
        (
            "usage",
            vec![("format", "xml")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "ledger",
            vec![("format", "CSV")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![("format", "csv"), ("since", "yesterday")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "ledger",
            vec![("format", "jsonl"), ("until", "2026-13-01T00:00:00Z")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![
                ("format", "csv"),
                ("since", "2026-02-01T00:00:00Z"),
                ("until", "2026-01-01T00:00:00Z"),
            ],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![("format", "csv"), ("outcome", "great")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![("format", "csv"), ("customer", "bob")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "ledger",
            vec![("format", "csv"), ("tool", "echo")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![("format", "csv"), ("limit", "5")],
            Some(TOKEN),
            400,
            "invalid_request",
        ),
        (
            "usage",
            vec![("format", "csv")],
            None,
            401,
            "unauthenticated",
        ),
        (
            "ledger",
            vec![("format", "csv")],
            None,
            401,
            "unauthenticated",
        ),
        (
            "ledger",
            vec![("format", "csv")],
            Some("adm_wrong_0123456789abcdef0123456789"),
            401,
            "unauthenticated",
        ),
    ];
    for (table, query, token, status, code) in cases {
        let (got, headers, body) = api.get(&format!("/export/{table}"), &query, token).await;
        assert_eq!(
            error_code(got, &body),
            (status, code.to_owned()),
            "{table} {query:?} {token:?}"
        );
        assert_eq!(headers["content-type"], "application/json");
    }
    // And on the command line.
    assert!(cli_fails(&db, &["usage", "--format", "xml"]).contains("xml"));
    assert!(cli_fails(&db, &["usage", "--format", "csv", "--since", "soon"]).contains("--since"));
    assert!(cli_fails(&db, &["ledger", "--format", "csv", "--customer", "bob"]).contains("bob"));
    drop(proxy);
}

each_backend!(exports_match_the_store);

/// Peak resident memory of the finished children of this process, in
/// bytes (`ru_maxrss` is in KiB on Linux).
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage(2) fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    usage.ru_maxrss as u64 * 1024
}

/// `VmHWM` (peak RSS) of a running process, in bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_export_with_flat_memory() {
    const ROWS: i64 = 1_000_000;
    const LIMIT: u64 = 200 * 1024 * 1024;
    let db = TestDb::sqlite().await;
    let store = db.open().await;
    let customer = customer(&store, "Heavy").await;
    let row = |i: i64| UsageRecord {
        call_id: CallId::new(format!("call_m{i:07}")),
        customer_id: Some(customer.clone()),
        key_id: None,
        session_id: None,
        method: "tools/call".into(),
        tool: Some("echo".into()),
        started_at: UnixMillis(BASE + i / 4),
        duration_us: i,
        bytes_in: 10,
        bytes_out: 20,
        outcome: UsageOutcome::Ok,
        reason: (i % 10 == 0).then(|| "a, \"b\"".to_owned()),
        units: 1,
    };
    let started = Instant::now();
    for start in (0..ROWS).step_by(10_000) {
        let batch: Vec<UsageRecord> = (start..start + 10_000).map(row).collect();
        store.record_usage(&batch).await.expect("record usage");
    }
    eprintln!("inserted {ROWS} rows in {:.1?}", started.elapsed());
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("usage.csv");
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["export", "usage", "--format", "csv", "--output"])
        .arg(&file)
        .args(["--database-url", db.url()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mcp-meter export");
    let pid = child.id();
    let mut polled = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm(pid) {
            polled = polled.max(hwm);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the export hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).ok();
    assert!(status.success(), "export failed: {stderr}");
    let peak = children_peak_rss().max(polled);
    eprintln!(
        "exported {ROWS} rows in {elapsed:.1?}: {:.0} rows/s, peak RSS {:.1} MiB (polled VmHWM {:.1} MiB)",
        ROWS as f64 / elapsed.as_secs_f64(),
        peak as f64 / 1048576.0,
        polled as f64 / 1048576.0,
    );
    assert!(peak > 0 && peak < LIMIT, "peak RSS {peak} bytes");

    let reader = BufReader::new(std::fs::File::open(&file).expect("the export"));
    let mut lines = 0_i64;
    let columns = USAGE_COLUMNS.join(",");
    for (n, line) in reader.lines().enumerate() {
        let line = line.expect("a line");
        if n == 0 {
            assert_eq!(line, columns);
        } else {
            let i = n as i64 - 1;
            if i == 0 || i == 123_457 || i == ROWS - 1 || i % 99_991 == 0 {
                let want = as_csv(&[usage_cells(&row(i))]).remove(0);
                let got = parse_csv(&format!("{line}\n")).remove(0);
                assert_eq!(got, want, "row {i}");
            }
        }
        lines += 1;
    }
    assert_eq!(lines, ROWS + 1, "a header and every row");
}
