//! The management API's OpenAPI 3.1 document, `GET /api/v1/openapi.json`,
//! on the real proxy over SQLite: it is served without a token, lists every
//! route the API has and none it has not, and Schemathesis (PyPI, from
//! `.venv`, pinned in tests/python/requirements.txt) finds no answer that
//! breaks it: no server error, and every status, content type, header and
//! body as documented, with an admin token and with a customer's key.

mod common;

use common::api::TOKEN;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::billing::call;
use common::db::TestDb;
use common::{Proxy, RawClient, root};
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ports::{UsageOutcome, UsageRecord};
use reqwest::Method;
use serde_json::{Value, json};

/// What the API answers for a route it does not have.
const NO_SUCH_ROUTE: &str = "there is no such API route";

/// Every route of `api::router()` and `api::me_router()`, as
/// `METHOD /api/v1/…`: the document must list each of them.
const ROUTES: &[&str] = &[
    "GET /api/v1/openapi.json",
    "GET /api/v1/customers",
    "POST /api/v1/customers",
    "GET /api/v1/customers/{id}",
    "PATCH /api/v1/customers/{id}",
    "DELETE /api/v1/customers/{id}",
    "GET /api/v1/customers/{id}/keys",
    "POST /api/v1/customers/{id}/keys",
    "DELETE /api/v1/keys/{id}",
    "GET /api/v1/customers/{id}/balance",
    "POST /api/v1/customers/{id}/credits",
    "GET /api/v1/customers/{id}/ledger",
    "GET /api/v1/usage",
    "GET /api/v1/usage/daily",
    "GET /api/v1/export/usage",
    "GET /api/v1/export/ledger",
    "GET /api/v1/plans",
    "GET /api/v1/plans/{id}",
    "GET /api/v1/customers/{id}/subscription",
    "PUT /api/v1/customers/{id}/subscription",
    "GET /api/v1/outbox",
    "POST /api/v1/outbox/{id}/retry",
    "GET /api/v1/invoices",
    "POST /api/v1/invoices/{id}/retry",
    "GET /api/v1/webhook-events",
    "GET /api/v1/webhook-events/{id}",
    "POST /api/v1/webhook-events/{id}/retry",
    "GET /api/v1/analytics/revenue",
    "GET /api/v1/analytics/usage",
    "GET /api/v1/analytics/top-customers",
    "GET /api/v1/analytics/active-customers",
    "GET /api/v1/analytics/refusals",
    "GET /api/v1/analytics/dashboard",
    "GET /api/v1/me",
    "GET /api/v1/me/usage",
    "POST /api/v1/me/checkout",
];

fn start(dir: &std::path::Path, db: &str) -> Proxy {
    common::api::start(dir, db, 4096)
}

/// The proxy's origin (`http://127.0.0.1:PORT`).
fn origin(proxy: &Proxy) -> String {
    proxy
        .url
        .strip_suffix("/mcp")
        .expect("the MCP URL ends with /mcp")
        .to_owned()
}

/// Sends `method path` with `token` and `body`; the status and the text.
async fn send(
    http: &reqwest::Client,
    origin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut request = http.request(method, format!("{origin}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("API request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `POST path` with the admin token; the status and the JSON answer.
async fn post(http: &reqwest::Client, origin: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = send(http, origin, Method::POST, path, Some(TOKEN), Some(&body)).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, value)
}

/// The document as served, without a token.
async fn document(http: &reqwest::Client, origin: &str) -> Value {
    let response = http
        .get(format!("{origin}/api/v1/openapi.json"))
        .send()
        .await
        .expect("GET openapi.json");
    assert_eq!(response.status().as_u16(), 200, "served without a token");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the document is not JSON ({e}): {text}"))
}

/// `METHOD path` of every operation of `document`.
fn operations(document: &Value) -> BTreeSet<String> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

/// The schema `value` names, following one `$ref`.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .expect("a local schema reference");
            &document["components"]["schemas"][name]
        }
        None => value,
    }
}

/// A customer, an API key (returned), credits and a subscription, made
/// through the API; two calls with the key; and usage records of the last
/// days written to the store, so that lists and analytics have data.
async fn seed(http: &reqwest::Client, proxy: &Proxy, db: &TestDb) -> (CustomerId, String) {
    let origin = origin(proxy);
    let mut first = None;
    for (name, plan) in [("Ada", "starter"), ("Bob", "team"), ("Cy", "payg")] {
        let (status, customer) = post(
            http,
            &origin,
            "/api/v1/customers",
            json!({ "name": name, "plan": plan, "email": format!("{name}@example.com") }),
        )
        .await;
        assert_eq!(status, 201, "{customer}");
        let id = customer["id"].as_str().expect("an id").to_owned();
        first.get_or_insert(id);
    }
    let id = first.expect("a customer");
    let (status, key) = post(
        http,
        &origin,
        &format!("/api/v1/customers/{id}/keys"),
        json!({ "name": "laptop" }),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["key"].as_str().expect("the key").to_owned();
    let (status, granted) = post(
        http,
        &origin,
        &format!("/api/v1/customers/{id}/credits"),
        json!({ "kind": "grant", "amount": 1000, "reason": "welcome" }),
    )
    .await;
    assert_eq!(status, 201, "{granted}");

    let mut mcp = RawClient::with_bearer(&proxy.url, &secret);
    mcp.initialize("2025-11-25").await;
    for n in 0..2 {
        let answer = mcp
            .post(&call(json!(n), "echo", json!({ "message": "hi" })))
            .await
            .response();
        assert!(answer.get("result").is_some(), "{answer}");
    }

    let customer = CustomerId::new(id.clone());
    let now = UnixMillis::now().0;
    let records: Vec<UsageRecord> = (0..20)
        .map(|i| UsageRecord {
            call_id: CallId::new(format!("call_seed{i:04}")),
            customer_id: Some(customer.clone()),
            key_id: None,
            session_id: None,
            method: "tools/call".into(),
            tool: Some(if i % 2 == 0 { "echo" } else { "add" }.into()),
            started_at: UnixMillis(now - i * 3_600_000),
            duration_us: 100,
            bytes_in: 10,
            bytes_out: 20,
            outcome: match i % 5 {
                0 => UsageOutcome::Refused,
                1 => UsageOutcome::ToolError,
                _ => UsageOutcome::Ok,
            },
            reason: (i % 5 == 0).then(|| "insufficient_credits".into()),
            units: 1,
        })
        .collect();
    db.open()
        .await
        .record_usage(&records)
        .await
        .expect("records");
    (customer, secret)
}

#[tokio::test]
async fn the_document_is_served_and_lists_every_route_and_only_real_ones() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let origin = origin(&proxy);
    let http = reqwest::Client::new();
    let (customer, _) = seed(&http, &proxy, &db).await;

    let document = document(&http, &origin).await;
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi {version:?}");

    // Nothing is left out…
    let listed = operations(&document);
    let missing: Vec<&&str> = ROUTES.iter().filter(|r| !listed.contains(**r)).collect();
    assert!(missing.is_empty(), "not in the document: {missing:?}");

    // …and nothing listed is made up: every operation reaches a handler.
    // The fallback is told apart by its message (a handler's 404 says what
    // is missing), as an unknown route shows.
    let (status, text) = send(
        &http,
        &origin,
        Method::GET,
        "/api/v1/no-such-thing",
        Some(TOKEN),
        None,
    )
    .await;
    assert!(
        status == 404 && text.contains(NO_SUCH_ROUTE),
        "{status} {text}"
    );
    for operation in &listed {
        let (method, path) = operation.split_once(' ').expect("METHOD path");
        // Ids that parse nowhere (or name nothing) keep the calls harmless.
        let path = path.replace("{id}", "nothing0");
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        let (status, text) = send(&http, &origin, method, &path, Some(TOKEN), body.as_ref()).await;
        assert!(
            !text.contains(NO_SUCH_ROUTE),
            "{operation} is documented but not routed: {status} {text}"
        );
    }

    // Security: admin routes take the admin bearer token, /me the
    // customer's key, the document itself nothing.
    for scheme in ["admin_token", "customer_key"] {
        assert_eq!(
            document["components"]["securitySchemes"][scheme]["scheme"], "bearer",
            "{scheme}"
        );
    }
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let security = &operation["security"];
            let expected = if path == "/api/v1/openapi.json" {
                json!([{}])
            } else if path.starts_with("/api/v1/me") {
                json!([{ "customer_key": [] }])
            } else {
                json!([{ "admin_token": [] }])
            };
            assert_eq!(security, &expected, "{method} {path}");
            // Every operation says how it fails.
            let responses = operation["responses"].as_object().expect("responses");
            if path != "/api/v1/openapi.json" {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
        }
    }

    // Request bodies refuse unknown fields, as the API does.
    for (path, method) in [
        ("/api/v1/customers", "post"),
        ("/api/v1/customers/{id}", "patch"),
        ("/api/v1/customers/{id}/keys", "post"),
        ("/api/v1/customers/{id}/credits", "post"),
        ("/api/v1/customers/{id}/subscription", "put"),
    ] {
        let schema = &document["paths"][path][method]["requestBody"]["content"]["application/json"]
            ["schema"];
        let schema = resolve(&document, schema);
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "{method} {path}: {schema}"
        );
    }
    let (status, text) = send(
        &http,
        &origin,
        Method::POST,
        "/api/v1/customers",
        Some(TOKEN),
        Some(&json!({ "name": "Eve", "colour": "red" })),
    )
    .await;
    assert!(status == 400 && text.contains("colour"), "{status} {text}");
    // An array of the fields, or anything after the object, is no body
    // either (Schemathesis found `[null, null]` creating an API key).
    for body in [
        r#"["Eve"]"#,
        r#"{"name": "Eve"} {"name": "Mallory"}"#,
        "null",
    ] {
        let response = http
            .post(format!("{origin}/api/v1/customers"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(
            status == 400 && text.contains("invalid_request"),
            "{body}: {status} {text}"
        );
    }
    let (_, listed) = send(
        &http,
        &origin,
        Method::GET,
        "/api/v1/customers",
        Some(TOKEN),
        None,
    )
    .await;
    let names: BTreeSet<String> = serde_json::from_str::<Value>(&listed).expect("JSON")["data"]
        .as_array()
        .expect("customers")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["Ada", "Bob", "Cy"].map(String::from))
    );

    // The credits route documents the Idempotency-Key it honours.
    let parameters = document["paths"]["/api/v1/customers/{id}/credits"]["post"]["parameters"]
        .as_array()
        .expect("parameters");
    let key = parameters
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("Idempotency-Key is documented");
    assert_eq!(
        (&key["in"], &key["schema"]["maxLength"]),
        (&json!("header"), &json!(200))
    );

    // Exports document their file types; lists their limits.
    let export = &document["paths"]["/api/v1/export/usage"]["get"]["responses"]["200"]["content"];
    assert!(
        export.get("text/csv").is_some() && export.get("application/x-ndjson").is_some(),
        "{export}"
    );
    let limit = document["paths"]["/api/v1/usage"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit")
        .clone();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000))
    );

    // Every value a documented enum of a query parameter lists is one the
    // route takes (the enums are not free to drift from the handlers).
    let mut tried = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        let Some(parameters) = item["get"]["parameters"].as_array() else {
            continue;
        };
        if path.contains('{') || path.starts_with("/api/v1/me") {
            continue;
        }
        let required: Vec<String> = parameters
            .iter()
            .filter(|p| p["required"] == json!(true))
            .map(|p| {
                let values = resolve(&document, &p["schema"])["enum"].clone();
                format!(
                    "{}={}",
                    p["name"].as_str().unwrap_or_default(),
                    values[0].as_str().unwrap_or_default()
                )
            })
            .collect();
        for parameter in parameters.iter().filter(|p| p["in"] == "query") {
            let name = parameter["name"].as_str().expect("a name");
            let values = resolve(&document, &parameter["schema"])["enum"].clone();
            for value in values.as_array().into_iter().flatten() {
                let value = value.as_str().expect("a string enum");
                let mut query = required.clone();
                query.retain(|q| !q.starts_with(&format!("{name}=")));
                query.push(format!("{name}={value}"));
                let url = format!("{path}?{}", query.join("&"));
                let (status, text) =
                    send(&http, &origin, Method::GET, &url, Some(TOKEN), None).await;
                assert_eq!(status, 200, "GET {url}: {text}");
                tried += 1;
            }
        }
    }
    assert!(tried >= 20, "only {tried} enum values tried");

    // The seeded customer is really there (the document is of a live API).
    let (status, _) = send(
        &http,
        &origin,
        Method::GET,
        &format!("/api/v1/customers/{customer}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    drop(proxy);
}

/// The `schemathesis` command of the test virtualenv: next to
/// `MCP_METER_PYTHON` (or `.venv/bin/python`). Panics with the fix when it
/// is not installed: this test is never skipped.
fn schemathesis() -> PathBuf {
    let python = std::env::var("MCP_METER_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let command = python
        .parent()
        .map(|bin| bin.join("schemathesis"))
        .unwrap_or_else(|| PathBuf::from("schemathesis"));
    let fix = "run `bash scripts/test`, or: python3 -m venv .venv && \
               .venv/bin/pip install -r tests/python/requirements.txt \
               (it pins schemathesis), then set MCP_METER_PYTHON=$PWD/.venv/bin/python";
    match Command::new(&command).arg("--version").output() {
        Ok(out) if out.status.success() => command,
        Ok(out) => panic!(
            "schemathesis does not run ({}): {}\n{fix}",
            command.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "schemathesis is not installed ({}: {e}; MCP_METER_PYTHON={:?})\n{fix}",
            command.display(),
            std::env::var("MCP_METER_PYTHON").ok()
        ),
    }
}

/// The checks every Schemathesis run applies. `positive_data_acceptance`
/// is left out: the API refuses some schema-valid requests on purpose
/// (`since` after `until`, a range over 400 days, a cursor it did not give
/// out, a blank name, an unknown plan), which JSON Schema cannot express.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,ignored_auth";

/// Runs Schemathesis against the document at `url` with `token`, on the
/// operations `filter` selects; panics with its output unless it passes.
/// One worker: Python 3.11's `ast` module can fail under threads ("AST
/// constructor recursion depth mismatch"), which would make a flaky test.
fn run_schemathesis(
    command: &Path,
    dir: &Path,
    config: &Path,
    url: &str,
    token: &str,
    filter: [&str; 2],
    max_examples: u32,
) {
    let started = Instant::now();
    let mut child = Command::new(command)
        .current_dir(dir)
        .arg("--config-file")
        .arg(config)
        .args(["run", url, "--header"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--workers", "1", "--seed", "20261126"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--request-timeout", "30"])
        .args(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", command.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let limit = Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    eprintln!(
        "schemathesis {filter:?} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(status) if status.success() => {}
        Some(status) => {
            panic!("Schemathesis found mismatches ({status}) for {filter:?}:\n{out}\n{err}")
        }
        None => panic!("Schemathesis ran over {limit:?} for {filter:?}:\n{out}\n{err}"),
    }
}

#[tokio::test]
async fn schemathesis_finds_no_answer_that_breaks_the_document() {
    let command = schemathesis();
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(dir.path(), db.url());
    let origin = origin(&proxy);
    let http = reqwest::Client::new();
    let (customer, secret) = seed(&http, &proxy, &db).await;
    let url = format!("{origin}/api/v1/openapi.json");
    let work = dir.path().to_owned();
    // The routes under a customer get the seeded one as their `id`, so
    // that their answers are the customer's data, not all 404s (but
    // PATCH and DELETE, which would suspend it, each waiting out the
    // credential lease).
    let config = work.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[[operations]]\ninclude-path-regex = '^/api/v1/customers/\\{{id\\}}/'\n\
             parameters = {{ \"path.id\" = \"{customer}\" }}\n\
             [[operations]]\ninclude-path-regex = '^/api/v1/customers/\\{{id\\}}$'\n\
             include-method = \"GET\"\nparameters = {{ \"path.id\" = \"{customer}\" }}\n"
        ),
    )
    .expect("write the Schemathesis configuration");

    // The admin routes with the admin token…
    let (command_a, work_a, url_a, config_a) =
        (command.clone(), work.clone(), url.clone(), config.clone());
    tokio::task::spawn_blocking(move || {
        run_schemathesis(
            &command_a,
            &work_a,
            &config_a,
            &url_a,
            TOKEN,
            ["--exclude-path-regex", "^/api/v1/me"],
            30,
        )
    })
    .await
    .expect("the admin run");
    // …and the customer's own routes (and the document) with their key.
    tokio::task::spawn_blocking(move || {
        run_schemathesis(
            &command,
            &work,
            &config,
            &url,
            &secret,
            ["--include-path-regex", "^/api/v1/(me|openapi)"],
            60,
        )
    })
    .await
    .expect("the customer run");
    drop(proxy);
}
