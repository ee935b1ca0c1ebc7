//! How many usage records per second `record_usage` stores, batch by batch,
//! daily roll-up included (`cargo bench --bench usage_store`).
//!
//! With no argument it writes into a fresh SQLite file in a temporary
//! directory; pass database URLs to measure those instead (each must be an
//! empty, disposable database, e.g. `postgres://postgres@127.0.0.1/bench`).
//! A plain binary, not libtest or criterion: it prints its own table.

use std::time::Instant;

use mcp_meter::store::{self, StoreOptions};
use mcp_meter_plugin::identity::{CallId, CustomerId, KeyId, UnixMillis};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};

/// Records written per configuration (`USAGE_BENCH_TOTAL` overrides).
const TOTAL: usize = 200_000;
/// Batch sizes measured.
const BATCHES: [usize; 3] = [100, 500, 1_000];

fn record(n: usize, run: usize) -> UsageRecord {
    let started = 1_773_446_400_000 + (n as i64) * 10;
    UsageRecord {
        call_id: CallId::new(format!("call_{run}x{n:09}")),
        customer_id: Some(CustomerId::new(format!("cus_bench{:03}", n % 50))),
        key_id: Some(KeyId::new(format!("key_bench{:03}", n % 50))),
        session_id: Some(format!("session-{}", n % 200)),
        method: "tools/call".into(),
        tool: Some(["search", "echo", "fetch", "summarize"][n % 4].into()),
        started_at: UnixMillis(started),
        duration_us: 1_500 + (n % 700) as i64,
        bytes_in: 180,
        bytes_out: 2_400,
        outcome: if n.is_multiple_of(20) {
            UsageOutcome::ToolError
        } else {
            UsageOutcome::Ok
        },
        reason: None,
        units: 1,
    }
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("USAGE_BENCH_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TOTAL);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut urls: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.contains(':') && !a.starts_with("--"))
        .collect();
    if urls.is_empty() {
        urls.push(format!(
            "sqlite://{}",
            dir.path().join("usage-bench.db").display()
        ));
    }
    println!(
        "{:<10} {:>7} {:>10} {:>12}",
        "backend", "batch", "records", "records/s"
    );
    for url in urls {
        let store = match store::open(&StoreOptions::new(url.as_str())).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        };
        for (run, batch) in BATCHES.into_iter().enumerate() {
            let records: Vec<UsageRecord> = (0..total).map(|n| record(n, run)).collect();
            let started = Instant::now();
            for chunk in records.chunks(batch) {
                if let Err(error) = store.record_usage(chunk).await {
                    eprintln!("record_usage: {error}");
                    std::process::exit(1);
                }
            }
            let elapsed = started.elapsed();
            println!(
                "{:<10} {:>7} {:>10} {:>12.0}",
                store.backend().as_str(),
                batch,
                total,
                total as f64 / elapsed.as_secs_f64()
            );
        }
    }
}
