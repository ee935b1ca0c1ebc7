//! Customers, API keys and usage records through the real proxy, on each of
//! the three databases: the auth bypass matrix (the upstream never sees a
//! refused call — asserted on the upstream's own input), revocation and
//! suspension applied on the very next call from another process, usage
//! records for every call with the right outcome, roll-ups equal to the
//! records, and no record lost when the proxy is stopped under load.

mod common;

use std::path::Path;
use std::time::Duration;

use common::db::TestDb;
use common::{Proxy, RawClient, first_text};
use mcp_meter_auth::key::ApiKey;
use serde_json::{Value, json};

use common::{admin_json as cli_json, admin_text as cli_text};

fn add_customer(db: &str, name: &str) -> String {
    let created = cli_json(db, &["customers", "add", "--name", name, "--json"]);
    created[0]["id"].as_str().unwrap().to_owned()
}

fn create_key(db: &str, customer: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create", "--customer", customer, "--json"];
    args.extend_from_slice(extra);
    let created = cli_json(db, &args);
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

/// The upstream: server-everything behind `tee`, so the test can read
/// exactly what reached the server.
fn everything_behind_tee(log: &Path) -> (String, Vec<String>) {
    let server = common::everything_stdio()
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    (
        "sh".into(),
        vec![
            "-c".into(),
            format!("tee -a '{}' | exec {server}", log.display()),
        ],
    )
}

fn config(db: &str, command: &str, args: &[String]) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {command:?}\nargs = {args:?}\n\
         [database]\nurl = {db:?}\n[auth]\nlast_used_flush_secs = 1\n"
    )
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
}

fn echo(id: u64, message: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"message":message}}})
}

/// A client on `session` that sends `headers` instead of the session's key.
fn on_session(proxy: &Proxy, session: &RawClient, headers: &[(&str, &str)]) -> RawClient {
    let mut client = RawClient::new(&proxy.url);
    client.session = session.session.clone();
    client.headers = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    client
}

/// A credential refused with 401: a name, the headers sent, the reason.
type HttpRefusalCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

async fn auth_matrix(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("upstream-input.log");
    let acme = add_customer(url, "Acme");
    let (key, _) = create_key(url, &acme, &["--name", "main"]);
    let (scoped, _) = create_key(url, &acme, &["--tools", "echo"]);
    let (expired, _) = create_key(url, &acme, &["--expires-at", "2020-01-01T00:00:00Z"]);
    let (revoked, revoked_id) = create_key(url, &acme, &[]);
    assert!(cli_text(url, &["keys", "revoke", &revoked_id]).0);
    let shady = add_customer(url, "Shady");
    let (suspended, _) = create_key(url, &shady, &[]);
    assert!(cli_text(url, &["customers", "suspend", &shady]).0);

    let (command, args) = everything_behind_tee(&log);
    let proxy = Proxy::serve(dir.path(), &config(url, &command, &args));
    let mut client = RawClient::with_bearer(&proxy.url, &key);
    client.initialize("2025-11-25").await;
    let ok = client.post(&echo(1, "allowed-1")).await.response();
    assert_eq!(first_text(&ok), "Echo: allowed-1", "{ok}");

    // An initialize with a bad key gets 401 and no session.
    let unknown = ApiKey::generate();
    let stranger = RawClient::with_bearer(&proxy.url, unknown.expose());
    let init = stranger.post(&initialize(0)).await;
    assert_eq!(init.status, 401, "{init:?}");
    assert!(init.headers.get("mcp-session-id").is_none());

    let mut typo = key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let bearer = |k: &str| format!("Bearer {k}");
    let http_refusals: Vec<HttpRefusalCase> = vec![
        ("none", vec![], "missing_credential"),
        (
            "malformed",
            vec![("authorization", bearer("mcp_short"))],
            "malformed_api_key",
        ),
        (
            "checksum",
            vec![("authorization", bearer(&typo))],
            "malformed_api_key",
        ),
        (
            "unknown",
            vec![("authorization", bearer(unknown.expose()))],
            "invalid_api_key",
        ),
        (
            "revoked",
            vec![("x-api-key", revoked.clone())],
            "invalid_api_key",
        ),
        (
            "expired",
            vec![("authorization", bearer(&expired))],
            "invalid_api_key",
        ),
        (
            "basic",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "malformed_credential",
        ),
        (
            "jwt",
            vec![("authorization", bearer("e30.e30.sig"))],
            "jwt_disabled",
        ),
    ];
    for (i, (name, headers, reason)) in http_refusals.iter().enumerate() {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let other = on_session(&proxy, &client, &headers);
        let answer = other
            .post(&echo(10 + i as u64, &format!("refused-{name}")))
            .await;
        assert_eq!(answer.status, 401, "{name}: {answer:?}");
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        let body = answer.response();
        assert_eq!(body["error"]["code"], -32010, "{name}: {body}");
        assert_eq!(body["error"]["data"]["reason"], *reason, "{name}: {body}");
        assert_eq!(body["id"], 10 + i as u64);
    }
    // Unknown, revoked and expired keys cannot be told apart.
    let mut messages = Vec::new();
    for k in [unknown.expose(), revoked.as_str(), expired.as_str()] {
        let other = on_session(&proxy, &client, &[("authorization", &bearer(k))]);
        messages.push(other.post(&echo(30, "refused-same")).await.response()["error"].clone());
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");

    // Authenticated but not allowed: a JSON-RPC error inside the session.
    let in_scope = on_session(&proxy, &client, &[("authorization", &bearer(&scoped))]);
    let allowed = in_scope.post(&echo(40, "allowed-scoped")).await.response();
    assert_eq!(first_text(&allowed), "Echo: allowed-scoped");
    let outside = in_scope
        .post(&json!({"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1,"b":2}}}))
        .await;
    assert_eq!(outside.status, 200);
    assert_eq!(
        outside.response()["error"]["data"]["reason"],
        "out_of_scope"
    );
    // A suspended customer cannot even open a session.
    let shady_client = RawClient::with_bearer(&proxy.url, &suspended);
    let refused = shady_client.post(&initialize(42)).await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert!(refused.headers.get("mcp-session-id").is_none());
    let refused = refused.response();
    assert_eq!(refused["error"]["code"], -32011, "{refused}");
    assert_eq!(refused["error"]["data"]["reason"], "customer_suspended");

    // A session belongs to the customer who opened it: another customer's
    // valid key is refused on it, and so are GET and DELETE without Acme's.
    let other = add_customer(url, "Other");
    let (other_key, _) = create_key(url, &other, &[]);
    let intruder = on_session(&proxy, &client, &[("authorization", &bearer(&other_key))]);
    let answer = intruder.post(&echo(43, "refused-intruder")).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.response()["error"]["data"]["reason"],
        "session_owner_mismatch"
    );
    let session_id = client.session.clone().unwrap();
    let http = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let mut request = http
            .get(&proxy.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session_id);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some(&other_key)).await.unwrap().status(), 403);
    let delete = http
        .delete(&proxy.url)
        .header("mcp-session-id", &session_id)
        .header("authorization", format!("Bearer {other_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);

    // Another process suspends and revokes: the very next call is refused.
    assert!(cli_text(url, &["customers", "suspend", &acme]).0);
    let now_suspended = client
        .post(&echo(50, "refused-after-suspend"))
        .await
        .response();
    assert_eq!(
        now_suspended["error"]["data"]["reason"],
        "customer_suspended"
    );
    assert!(cli_text(url, &["customers", "resume", &acme]).0);
    let resumed = client
        .post(&echo(51, "allowed-after-resume"))
        .await
        .response();
    assert_eq!(first_text(&resumed), "Echo: allowed-after-resume");
    let keys = cli_json(url, &["keys", "list", "--customer", &acme, "--json"]);
    let main_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "main")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // last_used_at is written behind the calls, within the flush interval.
    let mut used = false;
    for _ in 0..100 {
        let keys = cli_json(url, &["keys", "list", "--customer", &acme, "--json"]);
        if keys
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == main_id.as_str() && k["last_used_at"].is_number())
        {
            used = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(used, "last_used_at was never recorded");
    assert!(cli_text(url, &["keys", "revoke", &main_id]).0);
    let after_revoke = client.post(&echo(52, "refused-after-revoke")).await;
    assert_eq!(after_revoke.status, 401, "{after_revoke:?}");

    // The upstream saw the allowed calls and none of the refused ones.
    assert!(proxy.terminate().success());
    let seen = std::fs::read_to_string(&log).unwrap();
    for allowed in ["allowed-1", "allowed-scoped", "allowed-after-resume"] {
        assert!(
            seen.contains(allowed),
            "{allowed} did not reach the upstream"
        );
    }
    assert!(
        !seen.contains("refused-"),
        "a refused call reached the upstream:\n{seen}"
    );
    assert!(
        !seen.contains("get-sum"),
        "an out-of-scope call reached the upstream"
    );

    // The usage records hold the in-stack refusals with their reasons.
    let records = cli_json(url, &["usage", "--customer", &shady, "--json"]);
    let reasons: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["customer_suspended"], "{records}");
}

#[tokio::test]
async fn auth_matrix_on_sqlite() {
    let db = TestDb::sqlite().await;
    auth_matrix(&db).await;
    // The SQLite file (and its WAL) never holds a key in clear.
    let customer = add_customer(db.url(), "Grep");
    let (key, _) = create_key(db.url(), &customer, &[]);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(db.dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(key.len()).any(|w| w == key.as_bytes())
            || bytes.windows(20).any(|w| w == &key.as_bytes()[20..40])
        {
            found.push(path);
        }
    }
    assert!(found.is_empty(), "the key is stored in clear in {found:?}");
}

#[tokio::test]
async fn auth_matrix_on_postgres() {
    auth_matrix(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn auth_matrix_on_mysql() {
    auth_matrix(&TestDb::mysql().await).await;
}

/// A proxy in front of the demo upstream on `db`, and an initialized client
/// of a new customer (its id is returned).
struct MeteredDemo {
    _dir: tempfile::TempDir,
    proxy: Proxy,
    client: RawClient,
    customer: String,
}

async fn metered_demo(db: &TestDb, name: &str) -> MeteredDemo {
    let dir = tempfile::tempdir().unwrap();
    let customer = add_customer(db.url(), name);
    let (key, _) = create_key(db.url(), &customer, &[]);
    let proxy = Proxy::serve(
        dir.path(),
        &config(db.url(), common::bin(), &["demo-upstream".to_owned()]),
    );
    let mut client = RawClient::with_bearer(&proxy.url, &key);
    client.initialize("2025-11-25").await;
    MeteredDemo {
        _dir: dir,
        proxy,
        client,
        customer,
    }
}

/// Mixed outcomes through the demo upstream: every call has one record with
/// its outcome, and the daily roll-ups add up to the records.
async fn usage_records(db: &TestDb) {
    let url = db.url();
    let MeteredDemo {
        _dir,
        proxy,
        client,
        customer,
    } = metered_demo(db, "Counted").await;
    let (scoped, _) = create_key(url, &customer, &["--tools", "echo"]);
    let scoped_client = on_session(
        &proxy,
        &client,
        &[("authorization", &format!("Bearer {scoped}"))],
    );
    let mut expected: Vec<(&str, &str)> = vec![("initialize", "ok")];
    for i in 0..5 {
        let r = client
            .call_tool(json!(100 + i), "echo", json!({"message": "hi"}))
            .await
            .response();
        assert!(r["result"].is_object(), "{r}");
        expected.push(("echo", "ok"));
    }
    for i in 0..3 {
        let r = client
            .call_tool(json!(200 + i), "fail", json!({}))
            .await
            .response();
        assert_eq!(r["result"]["isError"], true);
        expected.push(("fail", "tool_error"));
    }
    for i in 0..2 {
        let r = client
            .call_tool(json!(300 + i), "slow", json!({"steps": 1_000_000}))
            .await
            .response();
        assert_eq!(r["error"]["code"], -32602, "{r}");
        expected.push(("slow", "upstream_error"));
    }
    for i in 0..2 {
        let r = scoped_client
            .call_tool(json!(400 + i), "add", json!({"a": 1, "b": 2}))
            .await
            .response();
        assert_eq!(r["error"]["data"]["reason"], "out_of_scope");
        expected.push(("add", "refused"));
    }
    let listed = client
        .post(&json!({"jsonrpc":"2.0","id":500,"method":"tools/list"}))
        .await
        .response();
    assert!(listed["result"]["tools"].is_array());
    expected.push(("tools/list", "ok"));
    assert!(proxy.terminate().success());

    let records = cli_json(
        url,
        &[
            "usage",
            "--customer",
            &customer,
            "--json",
            "--limit",
            "1000",
        ],
    );
    let records = records.as_array().unwrap();
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let what = r["tool"].as_str().unwrap_or(r["method"].as_str().unwrap());
            (what.to_owned(), r["outcome"].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    for r in records {
        assert!(r["call_id"].as_str().unwrap().starts_with("call_"));
        assert!(r["session_id"].is_string(), "{r}");
        assert!(r["bytes_in"].as_i64().unwrap() > 0);
        assert!(r["duration_us"].as_i64().unwrap() > 0);
        if r["outcome"] == "refused" {
            assert_eq!(r["reason"], "out_of_scope");
            assert!(r["key_id"].is_string());
        }
    }
    // Roll-ups equal the records they summarise.
    let daily = cli_json(
        url,
        &["usage", "--customer", &customer, "--daily", "--json"],
    );
    let calls = total(&daily, "calls");
    let errors = total(&daily, "errors");
    let bytes_in = total(&daily, "bytes_in");
    assert_eq!(calls as usize, records.len());
    assert_eq!(
        errors as usize,
        records.iter().filter(|r| r["outcome"] != "ok").count()
    );
    assert_eq!(
        bytes_in,
        records
            .iter()
            .map(|r| r["bytes_in"].as_i64().unwrap())
            .sum::<i64>()
    );
}

#[tokio::test]
async fn usage_records_on_sqlite() {
    usage_records(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn usage_records_on_postgres() {
    usage_records(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn usage_records_on_mysql() {
    usage_records(&TestDb::mysql().await).await;
}

/// The sum of one integer field over a JSON array of rows.
fn total(rows: &Value, field: &str) -> i64 {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row[field].as_i64().unwrap())
        .sum()
}

/// SIGTERM while calls are in flight: every call that got an answer has its
/// usage record.
async fn no_record_lost_on_sigterm(db: &TestDb) {
    let url = db.url();
    let MeteredDemo {
        _dir,
        proxy,
        client,
        customer,
    } = metered_demo(db, "Busy").await;
    let client = std::sync::Arc::new(client);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut calls = Vec::new();
    for i in 0..300u64 {
        let client = client.clone();
        let answered = answered.clone();
        calls.push(tokio::spawn(async move {
            let answer = client
                .call_tool(
                    json!(i),
                    "slow",
                    json!({"steps": 1, "delay_ms": 5 + i % 20}),
                )
                .await;
            if answer.status == 200
                && answer
                    .messages()
                    .last()
                    .is_some_and(|m| m["result"].is_object())
            {
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    // Let part of the load finish, then stop the proxy mid-flight.
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .unwrap();
    assert!(status.success());
    for call in calls {
        let _ = call.await;
    }
    let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
    let records = cli_json(
        url,
        &[
            "usage",
            "--customer",
            &customer,
            "--json",
            "--limit",
            "10000",
        ],
    );
    let ok = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == "slow" && r["outcome"] == "ok")
        .count();
    assert!(
        ok >= answered,
        "{answered} calls were answered but only {ok} have a record"
    );
}

#[tokio::test]
async fn no_record_lost_on_sigterm_on_sqlite() {
    no_record_lost_on_sigterm(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn no_record_lost_on_sigterm_on_postgres() {
    no_record_lost_on_sigterm(&TestDb::postgres().await).await;
}
