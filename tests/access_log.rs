//! Access logs end to end: the real proxy with `[logging] format = "json"`
//! over the demo upstream, with auth, the admin API and `[stripe]`
//! configured. Every stderr line must be one JSON object; each HTTP request
//! gives one `mcp_meter::access` event with its status, customer and MCP
//! facts; and no secret (API key, bad key, admin token, pay token, a
//! query-string secret, Stripe keys) appears anywhere in the output, at
//! `info` or at `debug`.
//!
//! `[stripe]` points at a closed loopback port: the pay token used here is
//! not one the proxy signed, so `/pay/<token>` is refused (`400`) without
//! Stripe being asked; the fake Stripe is not needed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::{RawClient, admin_json, bin};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "adm_token_0123456789SECRETadmin";
const BAD_KEY: &str = "mcp_bad0123456789SECRETnotakey";
const PAY_TOKEN: &str = "ptok0123456789SECRETpaytoken";
const QUERY_SECRET: &str = "q0123456789SECRETinthequery";
const STRIPE_KEY: &str = "sk_test_0123456789SECRETstripe";
const WEBHOOK_SECRET: &str = "whsec_0123456789SECRETwebhook";
const PAY_LINK_SECRET: &str = "paylink0123456789SECRETsigning";

/// The proxy, with all of its stderr kept.
struct Running {
    child: Child,
    url: String,
    base: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(dir: &std::path::Path, toml: &str) -> Running {
        let path = dir.join("mcp-meter.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcp-meter");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Dropped on a panic below, which kills the process.
        let mut running = Running {
            child,
            url: String::new(),
            base: String::new(),
            lines,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = running.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "mcp-meter did not start; stderr:\n{}",
                    running.seen.join("\n")
                )
            });
            running.seen.push(line.clone());
            let parsed: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
            if let Some(url) = parsed["url"].as_str()
                && parsed["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("mcp-meter listening on"))
            {
                running.url = url.to_owned();
                running.base = url.trim_end_matches("/mcp").to_owned();
                return running;
            }
        }
    }

    /// Stops the proxy (SIGTERM) and returns every stderr line it wrote.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mcp-meter did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(db: &str, level: &str, access_log: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {bin:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\n\
         [logging]\nformat = \"json\"\nlevel = {level:?}\naccess_log = {access_log}\n\
         [api]\nadmin_tokens = [{ADMIN_TOKEN:?}]\n\
         [stripe]\nsecret_key = {STRIPE_KEY:?}\napi_base = \"http://127.0.0.1:9\"\nrequest_timeout_secs = 1\n\
         webhook_secrets = [{WEBHOOK_SECRET:?}]\npay_link_secret = {PAY_LINK_SECRET:?}\n\
         success_url = \"https://example.test/thanks\"\ncancel_url = \"https://example.test/pricing\"\n\
         public_url = \"https://tools.example.test\"\n",
        bin = bin(),
    )
}

/// What the test does against a running proxy; returns the customer id
/// and the API key it used.
async fn exercise(proxy: &Running, db: &str) -> (String, String, String) {
    let customer = admin_json(db, &["customers", "add", "--name", "Acme", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = admin_json(db, &["keys", "create", "--customer", &customer, "--json"]);
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();

    // An MCP call with the API key.
    let mut client = RawClient::with_bearer(&proxy.url, &key);
    client.initialize("2025-11-25").await;
    let echoed = client
        .call_tool(json!(1), "echo", json!({"message": "hello"}))
        .await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);

    // A bad key: 401.
    let bad = RawClient::with_bearer(&proxy.url, BAD_KEY);
    let refused = bad
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    let http = reqwest::Client::new();
    // The admin API with the admin token.
    let listed = http
        .get(format!("{}/api/v1/customers", proxy.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    // The customer's own route with the key.
    let me = http
        .get(format!("{}/api/v1/me", proxy.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // A payment link that is not one of ours.
    let pay = http
        .get(format!("{}/pay/{PAY_TOKEN}", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(pay.status(), 400, "{:?}", pay.text().await);
    // A secret in a query string.
    let health = http
        .get(format!("{}/healthz?token={QUERY_SECRET}", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    (customer, key, key_id)
}

/// Every line parsed as JSON (a line that is not JSON fails the test).
fn parse_all(lines: &[String]) -> Vec<Value> {
    assert!(!lines.is_empty());
    lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
            assert!(value.is_object(), "not a JSON object: {line}");
            value
        })
        .collect()
}

fn access_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["target"] == "mcp_meter::access")
        .collect()
}

fn assert_no_secrets(lines: &[String], key: &str) {
    let whole = lines.join("\n");
    for secret in [
        key,
        BAD_KEY,
        ADMIN_TOKEN,
        PAY_TOKEN,
        QUERY_SECRET,
        STRIPE_KEY,
        WEBHOOK_SECRET,
        PAY_LINK_SECRET,
    ] {
        assert!(!whole.contains(secret), "the log holds the secret {secret}");
    }
    // Not even a long enough part of the key.
    assert!(
        !whole.contains(&key[..16]),
        "the log holds part of the API key"
    );
}

#[tokio::test]
async fn access_events_are_json_with_their_facts_and_no_secrets() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(dir.path(), &config(db.url(), "info", true));
    let (customer, key, key_id) = exercise(&proxy, db.url()).await;
    let lines = proxy.stop();
    let events = parse_all(&lines);
    let access = access_events(&events);

    // Each event is an info event with the request's facts.
    for event in &access {
        assert_eq!(event["level"], "INFO", "{event}");
        assert!(event["method"].is_string(), "{event}");
        assert!(event["status"].is_u64(), "{event}");
        assert!(event["duration_us"].is_u64(), "{event}");
        assert!(
            event["remote_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{event}"
        );
        assert!(
            !event["path"].as_str().unwrap().contains('?'),
            "a query string was logged: {event}"
        );
    }
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        access
            .iter()
            .find(|e| pred(e))
            .map(|e| (*e).clone())
            .unwrap_or_else(|| panic!("no access event for {what} in {access:#?}"))
    };
    let call = find("the tools/call", &|e| e["mcp_method"] == "tools/call");
    assert_eq!(call["method"], "POST");
    assert_eq!(call["path"], "/mcp");
    assert_eq!(call["status"], 200);
    assert_eq!(call["tool"], "echo");
    assert_eq!(call["customer_id"], customer.as_str());
    assert_eq!(call["key_id"], key_id.as_str());
    assert!(call["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(call["request_bytes"].as_u64().is_some_and(|n| n > 0));
    assert!(call["response_bytes"].as_u64().is_some_and(|n| n > 0));

    let initialize = find("initialize", &|e| e["mcp_method"] == "initialize");
    assert_eq!(initialize["status"], 200);
    assert_eq!(initialize["customer_id"], customer.as_str());
    // The new session's id, from the answer.
    assert_eq!(initialize["session_id"], call["session_id"]);

    let refused = find("the bad key", &|e| e["status"] == 401);
    assert_eq!(refused["path"], "/mcp");
    assert_eq!(refused["mcp_method"], "tools/list");
    assert!(refused.get("customer_id").is_none(), "{refused}");
    assert!(refused.get("key_id").is_none(), "{refused}");

    let admin = find("the admin API", &|e| e["path"] == "/api/v1/customers");
    assert_eq!(admin["status"], 200);
    assert_eq!(admin["method"], "GET");
    let me = find("/api/v1/me", &|e| e["path"] == "/api/v1/me");
    assert_eq!(me["status"], 200);
    let pay = find("the pay link", &|e| {
        e["path"].as_str().is_some_and(|p| p.starts_with("/pay/"))
    });
    assert_eq!(pay["path"], "/pay/…");
    assert_eq!(pay["status"], 400);
    let health = find("/healthz", &|e| e["path"] == "/healthz");
    assert_eq!(health["status"], 200);

    assert_no_secrets(&lines, &key);
}

#[tokio::test]
async fn no_secrets_at_debug_level_either() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(dir.path(), &config(db.url(), "debug", true));
    let (_, key, _) = exercise(&proxy, db.url()).await;
    let lines = proxy.stop();
    let events = parse_all(&lines);
    assert!(
        events.iter().any(|e| e["level"] == "DEBUG"),
        "the proxy logged nothing at debug level"
    );
    assert!(access_events(&events).len() >= 7);
    assert_no_secrets(&lines, &key);
}

#[tokio::test]
async fn access_log_false_turns_the_events_off() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(dir.path(), &config(db.url(), "info", false));
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let lines = proxy.stop();
    let events = parse_all(&lines);
    assert!(
        events.iter().any(|e| e["message"] == "stopped"),
        "the proxy did not log its stop"
    );
    assert!(access_events(&events).is_empty(), "{events:#?}");
}
