//! The management API over real HTTP: the real proxy (over its demo
//! upstream) with `[api]`, driven with reqwest, on SQLite, PostgreSQL and
//! MariaDB — what an operator does from the API, what a customer sees on
//! `/me`, and every kind of bad request answered in the one error shape.

mod common;

use common::api::{PLANS, TOKEN};
#[path = "common/stripe_sign.rs"]
mod stripe_sign;

use std::collections::BTreeSet;
use std::time::Duration;

use common::billing::call;
use common::db::TestDb;
use common::{Proxy, RawClient, bin};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use reqwest::Method;
use serde_json::{Value, json};

fn start(dir: &std::path::Path, db: &str) -> Proxy {
    common::api::start(dir, db, 2048)
}

/// The API at the proxy's address.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(proxy: &Proxy) -> Api {
        let base = proxy
            .url
            .strip_suffix("/mcp")
            .expect("the MCP URL ends with /mcp");
        Api {
            http: reqwest::Client::new(),
            base: format!("{base}/api/v1"),
        }
    }

    /// Sends a request with `token` (admin when `Some(TOKEN)`), a JSON
    /// body and extra headers; returns the status and the JSON answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("API request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(Method::GET, path, Some(TOKEN), None, &[]).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(TOKEN), Some(&body), &[])
            .await
    }
}

/// Asserts the API's error shape and returns the code.
fn error_code(body: &Value) -> String {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error message: {body}"
    );
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error code: {body}"))
        .to_owned()
}

async fn the_operator_runs_the_service_from_the_api(db: TestDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);

    let (status, created) = api
        .post(
            "/customers",
            json!({ "name": "Ada", "email": "ada@example.com", "plan": "starter",
                    "metadata": { "crm": "A-1" } }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("cus_"));
    assert_eq!(created["metadata"]["crm"], "A-1");
    let shown = api.get(&format!("/customers/{id}")).await;
    assert_eq!(shown["customer"]["email"], "ada@example.com");
    assert_eq!(shown["keys"], json!([]));

    // A key, shown once.
    let (status, key) = api
        .post(
            &format!("/customers/{id}/keys"),
            json!({ "name": "laptop" }),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["key"].as_str().expect("the key").to_owned();
    assert!(secret.starts_with("mcp_"));
    let key_id = key["id"].as_str().expect("key id").to_owned();
    let keys = api.get(&format!("/customers/{id}/keys")).await;
    assert_eq!(keys["data"].as_array().map(Vec::len), Some(1));
    assert!(
        !keys.to_string().contains(&secret),
        "lists never show the secret"
    );

    // Credits: a grant applies once per Idempotency-Key.
    let grant = json!({ "kind": "grant", "amount": 10, "reason": "welcome" });
    let path = format!("/customers/{id}/credits");
    let headers = [("idempotency-key", "welcome-1")];
    let (status, first) = api
        .send(Method::POST, &path, Some(TOKEN), Some(&grant), &headers)
        .await;
    assert_eq!((status, &first["balance"]), (201, &json!(10)), "{first}");
    let (status, again) = api
        .send(Method::POST, &path, Some(TOKEN), Some(&grant), &headers)
        .await;
    assert_eq!(
        (status, &again["applied"], &again["balance"]),
        (200, &json!(false), &json!(10))
    );
    let (status, refused) = api
        .post(
            &path,
            json!({ "kind": "adjustment", "amount": -20, "reason": "oops" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&refused).as_str()),
        (409, "insufficient_credits")
    );
    let (status, adjusted) = api
        .post(
            &path,
            json!({ "kind": "adjustment", "amount": -3, "reason": "refund" }),
        )
        .await;
    assert_eq!((status, &adjusted["balance"]), (201, &json!(7)));

    // Two calls with the key spend two credits.
    let mut mcp = RawClient::with_bearer(&proxy.url, &secret);
    mcp.initialize("2025-11-25").await;
    for n in 0..2 {
        let answer = mcp
            .post(&call(json!(n), "echo", json!({ "message": "hi" })))
            .await
            .response();
        assert!(answer.get("result").is_some(), "{answer}");
    }
    let balance = api.get(&format!("/customers/{id}/balance")).await;
    assert_eq!(balance["balance"], 5);
    let ledger = api.get(&format!("/customers/{id}/ledger")).await;
    let kinds: BTreeSet<&str> = ledger["data"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        ["grant", "adjustment", "reservation", "settlement"]
            .iter()
            .all(|k| kinds.contains(k)),
        "{kinds:?}"
    );

    // Usage, filtered; the usage recorder writes in the background.
    let usage_path = format!("/usage?customer={id}&tool=echo&outcome=ok");
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = api.get(&usage_path).await;
        if usage["data"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(usage["data"].as_array().map(Vec::len), Some(2), "{usage}");
    assert_eq!(usage["next_cursor"], Value::Null);
    let other_tool = api.get(&format!("/usage?customer={id}&tool=add")).await;
    assert_eq!(other_tool["data"], json!([]));
    let daily = api
        .get(&format!("/usage/daily?customer={id}&tool=echo"))
        .await;
    assert_eq!(daily["data"][0]["calls"].as_i64(), Some(2), "{daily}");

    // The customer sees their own facts with their key.
    let (status, me) = api.send(Method::GET, "/me", Some(&secret), None, &[]).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["customer"]["id"].as_str(), &me["balance"]),
        (Some(id.as_str()), &json!(5))
    );
    assert_eq!(me["plan"]["id"], "starter");
    let (status, mine) = api
        .send(Method::GET, "/me/usage?limit=1", Some(&secret), None, &[])
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1));
    let cursor = mine["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, rest) = api
        .send(
            Method::GET,
            &format!("/me/usage?limit=1&cursor={cursor}"),
            Some(&secret),
            None,
            &[],
        )
        .await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(1));
    assert_ne!(rest["data"][0]["call_id"], mine["data"][0]["call_id"]);

    // Plans and a subscription set by hand.
    let plans = api.get("/plans").await;
    let ids: Vec<&str> = plans["data"]
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["starter", "team", "payg"]);
    assert_eq!(api.get("/plans/payg").await["model"], "per_call");
    let (status, sub) = api
        .send(
            Method::PUT,
            &format!("/customers/{id}/subscription"),
            Some(TOKEN),
            Some(&json!({ "plan": "team", "status": "active" })),
            &[],
        )
        .await;
    assert_eq!((status, &sub["status"]), (200, &json!("active")), "{sub}");
    assert_eq!(
        api.get(&format!("/customers/{id}/subscription")).await["plan_id"],
        "team"
    );
    assert_eq!(
        api.get(&format!("/customers/{id}")).await["customer"]["plan_id"],
        "team"
    );

    // Plan, name, email and metadata change in place.
    let (status, changed) = api
        .send(
            Method::PATCH,
            &format!("/customers/{id}"),
            Some(TOKEN),
            Some(&json!({ "plan": "payg", "email": null, "metadata": { "tier": "gold" } })),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (
            &changed["plan_id"],
            &changed["email"],
            &changed["metadata"],
            &changed["name"]
        ),
        (
            &json!("payg"),
            &Value::Null,
            &json!({ "tier": "gold" }),
            &json!("Ada")
        )
    );

    // The queues answer (empty here).
    for queue in ["/outbox", "/invoices", "/webhook-events"] {
        assert_eq!(api.get(queue).await["data"], json!([]), "{queue}");
    }

    // Suspending refuses the customer's calls; revoking kills the key.
    let (status, suspended) = api
        .send(
            Method::PATCH,
            &format!("/customers/{id}"),
            Some(TOKEN),
            Some(&json!({ "status": "suspended" })),
            &[],
        )
        .await;
    assert_eq!((status, &suspended["status"]), (200, &json!("suspended")));
    let refused = mcp
        .post(&call(json!(9), "echo", json!({ "message": "still?" })))
        .await
        .response();
    assert!(refused.get("error").is_some(), "{refused}");
    let (status, revoked) = api
        .send(
            Method::DELETE,
            &format!("/keys/{key_id}"),
            Some(TOKEN),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_number(), "{revoked}");
    let (status, _) = api.send(Method::GET, "/me", Some(&secret), None, &[]).await;
    assert_eq!(status, 401);
    drop(proxy);
}

/// `n` usage records of `customer`, a second apart, some with the same
/// start time (the cursor orders by start time, then call id).
fn records(customer: &CustomerId, n: i64) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| UsageRecord {
            call_id: CallId::new(format!("call_page{i:06}")),
            customer_id: Some(customer.clone()),
            key_id: None,
            session_id: None,
            method: "tools/call".into(),
            tool: Some(if i % 2 == 0 { "echo" } else { "add" }.into()),
            started_at: UnixMillis(1_790_000_000_000 + (i / 3) * 1_000),
            duration_us: 100,
            bytes_in: 10,
            bytes_out: 20,
            outcome: UsageOutcome::Ok,
            reason: None,
            units: 1,
        })
        .collect()
}

async fn ten_thousand_records_page_without_gaps_or_repeats(db: TestDb) {
    let store = db.open().await;
    let customer = store
        .create_customer(mcp_meter_plugin::ports::NewCustomer {
            name: "Heavy".into(),
            email: None,
            plan_id: None,
            external_subject: None,
            metadata: Default::default(),
        })
        .await
        .expect("customer");
    let all = records(&customer.id, 10_000);
    for chunk in all.chunks(2_000) {
        store.record_usage(chunk).await.expect("records");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);
    for limit in [1_000, 333] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/usage?customer={}&limit={limit}&cursor={c}", customer.id),
                None => format!("/usage?customer={}&limit={limit}", customer.id),
            };
            let page = api.get(&path).await;
            let data = page["data"].as_array().expect("data");
            assert!(data.len() <= limit, "{limit}");
            seen.extend(
                data.iter()
                    .map(|r| r["call_id"].as_str().expect("id").to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let expected: Vec<String> = all.iter().map(|r| r.call_id.to_string()).collect();
        assert_eq!(seen, expected, "limit {limit}: every record once, in order");
    }
    // A filter pages too: half are echo calls.
    let echo = api
        .get(&format!(
            "/usage?customer={}&tool=echo&limit=1000",
            customer.id
        ))
        .await;
    assert_eq!(echo["data"].as_array().map(Vec::len), Some(1_000));
    // Customers page as well.
    for n in 0..25 {
        let (status, _) = api
            .post("/customers", json!({ "name": format!("c{n}") }))
            .await;
        assert_eq!(status, 201);
    }
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/customers?limit=7&cursor={c}"),
            None => "/customers?limit=7".to_owned(),
        };
        let page = api.get(&path).await;
        for c in page["data"].as_array().expect("data") {
            assert!(
                ids.insert(c["id"].as_str().expect("id").to_owned()),
                "no repeats"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(ids.len(), 26);
    drop(proxy);
}

each_backend!(
    the_operator_runs_the_service_from_the_api,
    ten_thousand_records_page_without_gaps_or_repeats,
);

#[tokio::test]
async fn bad_requests_get_the_error_shape_and_change_nothing() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);
    let (_, created) = api.post("/customers", json!({ "name": "Bob" })).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let (_, key) = api.post(&format!("/customers/{id}/keys"), json!({})).await;
    let secret = key["key"].as_str().expect("key").to_owned();

    // Authentication.
    for (token, status, code) in [
        (None, 401, "unauthenticated"),
        (
            Some("adm_wrong_0123456789abcdef0123456789"),
            401,
            "unauthenticated",
        ),
        (Some(secret.as_str()), 403, "forbidden"),
    ] {
        let (got, body) = api.send(Method::GET, "/customers", token, None, &[]).await;
        assert_eq!(
            (got, error_code(&body).as_str()),
            (status, code),
            "{token:?}"
        );
    }
    let (status, body) = api.send(Method::GET, "/me", Some(TOKEN), None, &[]).await;
    assert_eq!(status, 401, "an admin token is not a customer key: {body}");
    error_code(&body);

    // Validation.
    let long_name = "x".repeat(4_000);
    let cases: Vec<(Method, String, Option<Value>, u16, &str)> = vec![
        (
            Method::GET,
            "/customers/nope".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/customers/cus_missing0".into(),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/customers?limit=0".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/customers?limit=1001".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/customers?cursor=%%%".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/customers?color=red".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/usage?since=yesterday".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/usage?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/usage?outcome=great".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/usage?customer=bob".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/outbox?status=lost".into(),
            None,
            400,
            "invalid_request",
        ),
        (Method::GET, "/plans/none".into(), None, 404, "not_found"),
        (Method::GET, "/nothing/here".into(), None, 404, "not_found"),
        (
            Method::POST,
            "/customers".into(),
            Some(json!({ "name": "" })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/customers".into(),
            Some(json!({ "name": "A", "plan": "gold" })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/customers".into(),
            Some(json!({ "name": "A", "vip": true })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/customers".into(),
            Some(json!({ "name": long_name })),
            413,
            "too_large",
        ),
        (
            Method::POST,
            format!("/customers/{id}/credits"),
            Some(json!({ "kind": "grant", "amount": 0 })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/customers/{id}/credits"),
            Some(json!({ "kind": "gift", "amount": 5 })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/customers/{id}/credits"),
            Some(json!({ "kind": "adjustment", "amount": -1 })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/customers/{id}/credits"),
            Some(json!({ "kind": "grant", "amount": "5" })),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/customers/{id}/keys"),
            Some(json!({ "expires_at": "2000-01-01T00:00:00Z" })),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            format!("/customers/{id}"),
            Some(json!({ "status": "gone" })),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            format!("/customers/{id}"),
            Some(json!({})),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            format!("/customers/{id}"),
            Some(json!({ "plan": "gold" })),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/customers/cus_missing0".into(),
            Some(json!({ "name": "X" })),
            404,
            "not_found",
        ),
        (
            Method::PUT,
            format!("/customers/{id}/subscription"),
            Some(json!({ "plan": "starter", "status": "active" })),
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            format!("/customers/{id}/subscription"),
            Some(json!({ "plan": "team", "status": "happy" })),
            400,
            "invalid_request",
        ),
        (
            Method::DELETE,
            "/keys/nope".into(),
            None,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/outbox/12345/retry".into(),
            None,
            404,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = api
            .send(method.clone(), &path, Some(TOKEN), body.as_ref(), &[])
            .await;
        assert_eq!(
            (got, error_code(&answer).as_str()),
            (status, code),
            "{method} {path}: {answer}"
        );
    }
    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(format!("{}/customers", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{name:")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    error_code(&response.json::<Value>().await.expect("JSON error"));

    // Nothing changed: one customer, no credits.
    let customers = api.get("/customers").await;
    assert_eq!(customers["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        api.get(&format!("/customers/{id}/balance")).await["balance"],
        0
    );
    drop(proxy);
}

#[test]
fn check_refuses_weak_admin_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.toml");
    std::fs::write(
        &path,
        "[upstream]\ncommand = \"sh\"\n[api]\nadmin_tokens = [\"short\", \"mcp_0123456789abcdef0123456789\"]\n",
    )
    .expect("write");
    let output = std::process::Command::new(bin())
        .args(["check", "--config", path.to_str().expect("utf-8")])
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for needle in [
        "api: the management API needs a [database]",
        "api.admin_tokens[0]",
        "api.admin_tokens[1]",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

/// `/metrics` parsed by the official Prometheus Python client's parser.
fn scrape(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new(stripe_sign::python())
        .arg(common::root().join("tests/python/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run parse_metrics.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parse_metrics.py");
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("JSON")
        .as_array()
        .expect("samples")
        .clone()
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().expect("a number"))
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move_with_calls() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let api = Api::new(&proxy);
    let (_, created) = api
        .post("/customers", json!({ "name": "M", "plan": "starter" }))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let (_, key) = api.post(&format!("/customers/{id}/keys"), json!({})).await;
    let secret = key["key"].as_str().expect("key").to_owned();
    api.send(
        Method::POST,
        &format!("/customers/{id}/credits"),
        Some(TOKEN),
        Some(&json!({ "kind": "grant", "amount": 1 })),
        &[],
    )
    .await;
    let base = proxy.url.strip_suffix("/mcp").expect("mcp").to_owned();
    let get_metrics = || async {
        let response = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")),
        );
        scrape(&response.text().await.expect("text"))
    };
    let before = get_metrics().await;
    assert_eq!(
        sample(&before, "mcp_meter_calls_total", &[("tool", "echo")]),
        0.0
    );

    let mut mcp = RawClient::with_bearer(&proxy.url, &secret);
    mcp.initialize("2025-11-25").await;
    for n in 0..2 {
        mcp.post(&call(json!(n), "echo", json!({ "message": "m" })))
            .await;
    }
    let mut after = Vec::new();
    for _ in 0..100 {
        after = get_metrics().await;
        if sample(&after, "mcp_meter_calls_total", &[("tool", "echo")]) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ok = [
        ("method", "tools/call"),
        ("tool", "echo"),
        ("outcome", "ok"),
    ];
    assert_eq!(sample(&after, "mcp_meter_calls_total", &ok), 1.0);
    assert_eq!(
        sample(
            &after,
            "mcp_meter_refusals_total",
            &[("reason", "insufficient_credits")]
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "mcp_meter_call_duration_seconds_count",
            &[("method", "tools/call")]
        ) >= 2.0
    );
    assert!(sample(&after, "mcp_meter_usage_records_written_total", &[]) >= 3.0);
    assert_eq!(
        sample(
            &after,
            "mcp_meter_queue_rows",
            &[("queue", "meter"), ("status", "pending")]
        ),
        0.0
    );
    assert!(
        after
            .iter()
            .any(|s| s["name"] == "mcp_meter_queue_rows" && s["labels"]["queue"] == "webhook"),
        "the queue gauges are there"
    );
    assert!(
        !after.iter().any(|s| s["labels"]["customer"].is_string()),
        "no per-customer series unless enabled"
    );
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ready["checks"]["meter_queue"]["status"], "ok", "{ready}");
    assert_eq!(ready["checks"]["webhook_queue"]["failed"], 0, "{ready}");
    drop(proxy);
}

#[tokio::test]
async fn a_separate_admin_listener_serves_the_api_and_metrics() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {:?}\n{PLANS}\n\
         [api]\nadmin_tokens = [\"{TOKEN}\"]\nlisten = \"127.0.0.1:0\"\n",
        bin(),
        db.url()
    );
    let proxy = Proxy::serve(dir.path(), &toml);
    let line = proxy.wait_for_log("admin API listening on", Duration::from_secs(10));
    let admin = line
        .split("listening on ")
        .nth(1)
        .expect("an address")
        .trim()
        .to_owned();
    let main = proxy.url.strip_suffix("/mcp").expect("mcp").to_owned();
    let http = reqwest::Client::new();
    let status = |url: String| {
        let request = http.get(url).bearer_auth(TOKEN);
        async move { request.send().await.expect("GET").status().as_u16() }
    };
    assert_eq!(status(format!("{admin}/customers")).await, 200);
    assert_eq!(
        status(format!("{main}/api/v1/customers")).await,
        404,
        "not on the MCP listener"
    );
    // Customers keep /me on the proxy's listener (this token is no key: 401).
    assert_eq!(status(format!("{main}/api/v1/me")).await, 401);
    let admin_base = admin.strip_suffix("/api/v1").expect("/api/v1");
    assert_eq!(status(format!("{admin_base}/metrics")).await, 200);
    assert_eq!(status(format!("{admin_base}/mcp")).await, 404);
    drop(proxy);
}
