//! `kill -9` of the proxy under load, then a restart on the same database,
//! on SQLite, PostgreSQL and MariaDB: the recovery sweep refunds the
//! reservations the killed process held and writes the usage records it
//! lost, so that every credit debited belongs to a recorded call, no call
//! is charged twice and none stays held (the ledger reconciles with the
//! usage records).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::billing::{add_customer, balance, call, client, create_key, everything, grant};
use common::db::TestDb;
use common::{Proxy, RawClient, admin_json};
use serde_json::{Value, json};

/// Credits granted at the start (far more than the calls use).
const GRANTED: i64 = 100_000;
/// Clients calling at once.
const CLIENTS: usize = 32;
/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_secs(1);
/// How long the restarted proxy gets to repair the ledger.
const REPAIR_WITHIN: Duration = Duration::from_secs(30);

/// A credits plan at 1 credit per call; usage records written behind the
/// calls in batches every 200 ms; calls time out after 2 s, so that a
/// reservation older than 3 s is abandoned.
fn config(db: &str) -> String {
    let (command, args) = everything();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 64\nrequest_timeout_secs = 2\n\
         [upstream]\ncommand = {command:?}\nargs = {args:?}\n\
         [database]\nurl = {db:?}\nmax_connections = 20\n\
         [usage]\nflush_interval_ms = 200\n\
         [billing]\nabandon_reservations_after_secs = 3\n\
         [[plans]]\nid = \"prepaid\"\nmodel = \"credits\"\n[plans.prices]\ndefault = 1\n"
    )
}

/// One `tools/call` of `echo`; `None` when no answer came (the proxy is
/// gone), `Some(true)` for a result, `Some(false)` for an error.
async fn try_echo(c: &RawClient, id: usize) -> Option<bool> {
    let mut request = c
        .http
        .post(&c.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(20))
        .body(call(json!(id), "echo", json!({"message": format!("m{id}")})).to_string());
    if let Some(session) = &c.session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", &c.version);
    }
    for (k, v) in &c.headers {
        request = request.header(k, v);
    }
    let response = request.send().await.ok()?;
    let body = response.text().await.ok()?;
    let last = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| !d.is_empty())
        .unwrap_or(body.trim());
    let message: Value = serde_json::from_str(last).ok()?;
    Some(message.get("result").is_some())
}

/// The customer's whole ledger.
fn ledger(db: &str, customer: &str) -> Vec<Value> {
    admin_json(
        db,
        &[
            "credits",
            "ledger",
            "--customer",
            customer,
            "--limit",
            "100000",
            "--json",
        ],
    )
    .as_array()
    .expect("a ledger is a list")
    .clone()
}

/// The customer's usage records: call id → outcome.
fn usage(db: &str, customer: &str) -> HashMap<String, String> {
    admin_json(
        db,
        &[
            "usage",
            "--customer",
            customer,
            "--limit",
            "100000",
            "--json",
        ],
    )
    .as_array()
    .expect("usage is a list")
    .iter()
    .map(|r| {
        (
            r["call_id"].as_str().unwrap_or_default().to_owned(),
            r["outcome"].as_str().unwrap_or_default().to_owned(),
        )
    })
    .collect()
}

/// How a ledger stands against the usage records.
#[derive(Debug, Default)]
struct Standing {
    /// Reservations (`key:attempt`) with neither a settlement nor a refund.
    held: Vec<String>,
    /// Settled reservations whose call has no usage record.
    unrecorded: Vec<String>,
}

/// Ends of each reservation (`key:attempt` → the entries that end it).
fn ends(entries: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut ends: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for entry in entries {
        let key = entry["idempotency_key"].as_str().unwrap_or_default();
        if let Some(reserved) = key.strip_prefix("reserve:") {
            ends.entry(reserved.to_owned()).or_default();
        }
    }
    for entry in entries {
        let key = entry["idempotency_key"].as_str().unwrap_or_default();
        if let Some(ended) = key
            .strip_prefix("settle:")
            .or_else(|| key.strip_prefix("refund:"))
        {
            match ends.get_mut(ended) {
                Some(list) => list.push(entry),
                None => panic!("{key} ends no reservation"),
            }
        }
    }
    ends
}

fn standing(entries: &[Value], records: &HashMap<String, String>) -> Standing {
    let mut standing = Standing::default();
    for (reservation, ended) in ends(entries) {
        if ended.is_empty() {
            standing.held.push(reservation);
        }
    }
    for entry in entries.iter().filter(|e| e["kind"] == "settlement") {
        let call = entry["call_id"].as_str().unwrap_or_default();
        if !records.contains_key(call) {
            standing.unrecorded.push(call.to_owned());
        }
    }
    standing
}

async fn kill_under_load_then_restart(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let customer = add_customer(url, "Busy", "prepaid");
    let key = create_key(url, &customer);
    grant(url, &customer, GRANTED, "start");

    let mut proxy = Proxy::serve(dir.path(), &config(url));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client(&proxy, &key).await);
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let sent = sent.clone();
            let served = served.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match try_echo(&c, i * 1_000_000 + n).await {
                        Some(true) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(false) => {}
                        None => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(LOAD).await;
    proxy.kill9();
    for task in load {
        task.await.expect("a client task");
    }
    let sent = sent.load(Ordering::Relaxed);
    let served = served.load(Ordering::Relaxed);

    // What the kill left: reservations held, settled calls not recorded.
    let before = standing(&ledger(url, &customer), &usage(url, &customer));
    eprintln!(
        "{:?}: {sent} calls sent, {served} answered before the kill; left {} reservations held \
         and {} settled calls without a usage record",
        db.kind(),
        before.held.len(),
        before.unrecorded.len()
    );

    // Restart on the same database; the recovery sweep repairs the rest.
    let restarted = Proxy::serve(dir.path(), &config(url));
    let deadline = Instant::now() + REPAIR_WITHIN;
    let (entries, records) = loop {
        let entries = ledger(url, &customer);
        let records = usage(url, &customer);
        let now = standing(&entries, &records);
        if now.held.is_empty() && now.unrecorded.is_empty() {
            break (entries, records);
        }
        if Instant::now() > deadline {
            let log: Vec<String> = restarted.stderr.try_iter().take(20).collect();
            panic!(
                "not repaired within {REPAIR_WITHIN:?}: {now:?}\nproxy log:\n{}",
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // (1) Every reservation ended exactly once: no call charged twice,
    // none left held.
    let ends = ends(&entries);
    for (reservation, ended) in &ends {
        assert_eq!(ended.len(), 1, "{reservation} ended {} times", ended.len());
    }
    let settled: Vec<&Value> = ends
        .values()
        .map(|ended| ended[0])
        .filter(|end| end["kind"] == "settlement")
        .collect();
    let abandoned = ends
        .values()
        .filter(|ended| ended[0]["kind"] == "refund" && ended[0]["reason"] == "abandoned")
        .count();
    let settled_calls: HashSet<&str> = settled
        .iter()
        .map(|e| e["call_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(settled_calls.len(), settled.len(), "a call settled twice");

    // (2) The balance is the sum of the ledger: what was granted less one
    // credit per settled call.
    let sum: i64 = entries.iter().filter_map(|e| e["amount"].as_i64()).sum();
    let now = balance(url, &customer);
    assert_eq!(now, sum, "the balance is the sum of the ledger");
    assert_eq!(
        now,
        GRANTED - settled.len() as i64,
        "one credit per settled call"
    );

    // (3) Every settled call has its usage record.
    let mut recovered = 0;
    for call in &settled_calls {
        match records.get(*call).map(String::as_str) {
            Some("recovered") => recovered += 1,
            Some(_) => {}
            None => panic!("settled call {call} has no usage record"),
        }
    }
    eprintln!(
        "{:?}: {sent} calls sent, {served} answered, {} reservations, {} settled; \
         after the restart {abandoned} refunded as abandoned, {recovered} usage records recovered",
        db.kind(),
        ends.len(),
        settled.len()
    );
    assert_eq!(
        abandoned,
        before.held.len(),
        "exactly the reservations the kill left were refunded as abandoned"
    );
    assert_eq!(
        recovered,
        before.unrecorded.len(),
        "exactly the records the kill lost were recovered"
    );
    restarted.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_sqlite() {
    kill_under_load_then_restart(&TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_postgres() {
    kill_under_load_then_restart(&TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_mysql() {
    kill_under_load_then_restart(&TestDb::mysql().await).await;
}
