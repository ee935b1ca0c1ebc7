//! Interop with the official Python MCP SDK (`mcp`, pinned in
//! `tests/python/requirements.txt`), with real processes on both sides.
//!
//! `tests/python/client_check.py` is a scripted SDK client that prints one
//! JSON document of what it saw (tool names, echo results including
//! non-ASCII text and a ~1 MB argument, resources, prompts, progress,
//! elicitation / input_required round trips, errors, the negotiated
//! version). Each case runs it straight at a server and again through
//! mcp-meter and asserts the two documents are equal and non-trivial.
//! `tests/python/modern_server.py` is an SDK server that speaks the
//! stateless revision (2026-07-28) and the handshake revisions over
//! Streamable HTTP.
//!
//! The interpreter comes from `MCP_METER_PYTHON` (`scripts/test` sets it),
//! else `<repo>/.venv/bin/python`; a missing interpreter or SDK fails the
//! test, it is never skipped.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use common::{Proxy, RawClient, bin, everything_stdio, root};
use serde_json::{Value, json};

const HANDSHAKE_REVISIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const NON_ASCII: &str =
    "héllo wörld — ünïcödé ✓ 日本語テキスト 🚀🦀 \u{e9}\u{301} \u{2028} \"quotes\" \\ back";

/// The Python interpreter with the SDK installed; panics with a fix otherwise.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var("MCP_METER_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| root().join(".venv/bin/python").display().to_string());
        let fix = "run `bash scripts/test`, or: python3 -m venv .venv && \
                   .venv/bin/pip install -r tests/python/requirements.txt, \
                   then set MCP_METER_PYTHON=$PWD/.venv/bin/python";
        match Command::new(&python)
            .args(["-c", "import mcp, mcp_types, uvicorn"])
            .output()
        {
            Ok(out) if out.status.success() => python,
            Ok(out) => panic!(
                "the Python MCP SDK is not importable with {python} \
                 (MCP_METER_PYTHON={:?}): {}\n{fix}",
                std::env::var("MCP_METER_PYTHON").ok(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "cannot run the Python interpreter {python} \
                 (MCP_METER_PYTHON={:?}): {e}\n{fix}",
                std::env::var("MCP_METER_PYTHON").ok()
            ),
        }
    })
}

fn script(name: &str) -> String {
    root().join("tests/python").join(name).display().to_string()
}

/// Runs `command` to completion within `within`; returns (success, stdout, stderr).
fn run(mut command: Command, within: Duration) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {within:?}; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

/// Where `client_check.py` connects.
enum Target<'a> {
    Url(&'a str),
    Stdio(Vec<String>),
}

/// Runs `client_check.py` and returns its JSON document.
fn client_check(mode: &str, profile: &str, target: Target<'_>) -> Value {
    let mut command = Command::new(python());
    command
        .arg(script("client_check.py"))
        .args(["--mode", mode, "--profile", profile])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8");
    match target {
        Target::Url(url) => {
            command.args(["--url", url]);
        }
        Target::Stdio(argv) => {
            command.arg("--stdio").arg("--").args(argv);
        }
    }
    let (ok, stdout, stderr) = run(command, Duration::from_secs(90));
    assert!(ok, "client_check.py failed:\n{stderr}");
    let document: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("client_check.py printed no JSON ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        document.get("fatal").is_none(),
        "the Python client could not connect or crashed: {}\nstderr:\n{stderr}",
        document["fatal"]
    );
    document
}

/// Drops what may legitimately differ between two runs (the mode label
/// only: everything else the client records must survive the proxy).
fn normalized(mut document: Value) -> Value {
    document.as_object_mut().unwrap().remove("mode");
    document
}

/// Asserts two client documents are equal, naming the first differing key.
fn assert_same(direct: &Value, proxied: &Value) {
    let (direct, proxied) = (normalized(direct.clone()), normalized(proxied.clone()));
    if direct != proxied {
        let empty = serde_json::Map::new();
        let d = direct.as_object().unwrap_or(&empty);
        let p = proxied.as_object().unwrap_or(&empty);
        let mut keys: Vec<&String> = d.keys().chain(p.keys()).collect();
        keys.sort();
        keys.dedup();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| d.get(*k) != p.get(*k))
            .map(|k| {
                let show = |v: Option<&Value>| {
                    let s = v.map(Value::to_string).unwrap_or_else(|| "<absent>".into());
                    s.chars().take(600).collect::<String>()
                };
                format!(
                    "  {k}:\n    direct:  {}\n    proxied: {}",
                    show(d.get(k)),
                    show(p.get(k))
                )
            })
            .collect();
        panic!(
            "the Python client saw different results through mcp-meter:\n{}",
            diffs.join("\n")
        );
    }
}

fn ok<'a>(document: &'a Value, key: &str) -> &'a Value {
    let entry = &document[key];
    assert!(
        entry.get("ok").is_some(),
        "{key} failed: {entry}\n(document mode {})",
        document["mode"]
    );
    &entry["ok"]
}

fn text(result: &Value, index: usize) -> &str {
    result["content"][index]["text"]
        .as_str()
        .unwrap_or_default()
}

/// The checks every document must pass, so equality is not equality of failures.
fn assert_nontrivial(document: &Value, profile: &str) {
    let tools = ok(document, "tools").as_array().unwrap();
    assert!(tools.contains(&json!("echo")), "tools: {tools:?}");
    assert_eq!(
        text(ok(document, "echo_ascii"), 0),
        "Echo: hello through the meter"
    );
    assert_eq!(
        text(ok(document, "echo_non_ascii"), 0),
        format!("Echo: {NON_ASCII}")
    );
    let big = &ok(document, "echo_1mb")["content"][0]["text"];
    assert_eq!(big["bytes"], 1_000_006, "{big}");
    let unknown = ok(document, "unknown_tool");
    assert_eq!(unknown["isError"], true, "{unknown}");
    assert!(!ok(document, "resources").as_array().unwrap().is_empty());
    assert!(!ok(document, "read_resource").as_array().unwrap().is_empty());
    assert!(!ok(document, "prompts").as_array().unwrap().is_empty());
    assert!(!ok(document, "get_prompt").as_array().unwrap().is_empty());
    assert!(
        document["read_unknown_resource"]["error"]["code"].is_i64(),
        "{}",
        document["read_unknown_resource"]
    );
    let progress = ok(document, "progress");
    assert_eq!(
        progress["progress"].as_array().map(Vec::len),
        Some(3),
        "{progress}"
    );
    match profile {
        "everything" => {
            let bigger = &ok(document, "echo_1_2mb")["content"][0]["text"];
            assert_eq!(bigger["bytes"], 1_200_006, "{bigger}");
            assert_eq!(text(ok(document, "sum"), 0), "The sum of 2 and 40 is 42.");
            let elicited = ok(document, "elicitation");
            assert!(
                elicited.to_string().contains("Zoë 🦀"),
                "the elicitation answer did not reach the tool: {elicited}"
            );
            assert_eq!(document["server_name"], "mcp-servers/everything");
        }
        _ => {
            assert_eq!(text(ok(document, "add"), 0), "42");
            assert_eq!(text(ok(document, "ask_name"), 0), "Hallo, Zoë 🦀!");
            assert_eq!(text(ok(document, "non_ascii_tool"), 0), "Grüße, Zoë!");
            assert_eq!(text(ok(document, "slow"), 0), "slept 1.2");
            assert_eq!(
                text(ok(document, "header_param"), 0),
                "Sunny in Zürich ☀ for 2 day(s)"
            );
        }
    }
}

/// `tests/python/modern_server.py` on a free port, killed when dropped.
struct PythonServer {
    child: Child,
    url: String,
}

impl PythonServer {
    fn start() -> PythonServer {
        let mut child = Command::new(python())
            .arg(script("modern_server.py"))
            .args(["--port", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn modern_server.py");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the readiness line so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on ") {
                        let url = line[pos + "listening on ".len()..].trim().to_owned();
                        return PythonServer { child, url };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("modern_server.py did not start:\n{}", seen.join("\n"));
                }
            }
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mcp-meter serve` in front of an HTTP upstream.
fn serve_in_front_of(url: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = {url:?}\n");
    let proxy = Proxy::serve(dir.path(), &toml);
    (dir, proxy)
}

fn assert_handshake(document: &Value) {
    let version = document["protocol_version"].as_str().unwrap_or_default();
    assert!(
        HANDSHAKE_REVISIONS.contains(&version),
        "expected a handshake revision, negotiated {version:?}"
    );
}

// (a) Python client → Streamable HTTP → `mcp-meter wrap --listen` → server-everything (stdio),
//     against the same client launching server-everything over stdio directly.
#[test]
fn handshake_over_http_through_wrap_matches_direct_stdio() {
    let direct = client_check("legacy", "everything", Target::Stdio(everything_stdio()));
    assert_nontrivial(&direct, "everything");
    assert_eq!(direct["protocol_version"], "2025-11-25");

    let proxy = Proxy::wrap(&everything_stdio());
    let proxied = client_check("legacy", "everything", Target::Url(&proxy.url));
    assert_nontrivial(&proxied, "everything");
    assert_same(&direct, &proxied);
}

// (b) Python stdio client launching `mcp-meter wrap --stdio -- node …` vs launching the server.
#[test]
fn handshake_over_stdio_through_wrap_stdio_matches_direct() {
    let direct = client_check("legacy", "everything", Target::Stdio(everything_stdio()));
    assert_nontrivial(&direct, "everything");

    let mut wrapped = vec![
        bin().to_owned(),
        "wrap".into(),
        "--stdio".into(),
        "--".into(),
    ];
    wrapped.extend(everything_stdio());
    let proxied = client_check("legacy", "everything", Target::Stdio(wrapped));
    assert_nontrivial(&proxied, "everything");
    assert_same(&direct, &proxied);
}

// (c) Python client pinned to 2026-07-28 → `mcp-meter serve` → the Python SDK server,
//     against the same client straight at the server; includes an input_required round trip.
#[test]
fn stateless_through_serve_matches_direct() {
    let server = PythonServer::start();
    let direct = client_check("2026-07-28", "modern", Target::Url(&server.url));
    assert_nontrivial(&direct, "modern");
    assert_eq!(direct["protocol_version"], "2026-07-28");
    let manual = ok(&direct, "input_required_manual");
    assert_eq!(manual["round1"]["resultType"], "input_required");
    assert_eq!(manual["round1"]["hasRequestState"], true);
    assert_eq!(text(&manual["round2"], 0), "Bonjour, Zoë 🦀!");
    let listen = ok(&direct, "listen");
    assert_eq!(
        listen["events"],
        json!([{"type": "ResourceUpdated", "uri": "note://readme"}, {"type": "ToolsListChanged"}]),
        "{listen}"
    );

    let (_dir, proxy) = serve_in_front_of(&server.url);
    let proxied = client_check("2026-07-28", "modern", Target::Url(&proxy.url));
    assert_same(&direct, &proxied);
    assert_nontrivial(&proxied, "modern");
}

// (c') Auto mode against a 2026-07-28 HTTP upstream: `server/discover` passes through, so the
//      client adopts the stateless revision, exactly as it does straight at the server.
#[test]
fn auto_mode_discovers_the_stateless_revision_through_serve() {
    let server = PythonServer::start();
    let direct = client_check("auto", "modern", Target::Url(&server.url));
    assert_nontrivial(&direct, "modern");
    assert_eq!(direct["protocol_version"], "2026-07-28");
    assert_eq!(direct["server_name"], "python-modern-server");

    let (_dir, proxy) = serve_in_front_of(&server.url);
    let proxied = client_check("auto", "modern", Target::Url(&proxy.url));
    assert_same(&direct, &proxied);
}

// (c'') The handshake revision against the same Python server over an HTTP upstream
//       (sessions, SSE responses, a mid-call elicitation/create request, a
//       notification on the standalone GET stream).
#[test]
fn handshake_through_serve_to_python_server_matches_direct() {
    let server = PythonServer::start();
    let direct = client_check("legacy", "modern", Target::Url(&server.url));
    assert_nontrivial(&direct, "modern");
    assert_eq!(direct["protocol_version"], "2025-11-25");
    ok(&direct, "get_stream");

    let (_dir, proxy) = serve_in_front_of(&server.url);
    let proxied = client_check("legacy", "modern", Target::Url(&proxy.url));
    assert_same(&direct, &proxied);
}

// (d) Auto mode in front of a stdio upstream that only speaks the handshake revisions:
//     mcp-meter refuses 2026-07-28 with -32022 listing the handshake revisions, so the
//     client falls back to `initialize` and everything works.
#[test]
fn auto_mode_falls_back_to_the_handshake_on_a_stdio_upstream() {
    let direct = client_check("legacy", "everything", Target::Stdio(everything_stdio()));
    assert_nontrivial(&direct, "everything");

    let proxy = Proxy::wrap(&everything_stdio());
    // What the auto client's probe meets: HTTP 400, -32022, only handshake revisions.
    let probe = format!(
        r#"{{"jsonrpc":"2.0","id":"probe","method":"server/discover","params":{{{ENVELOPE}}}}}"#
    );
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(stateless_post(
            &proxy.url,
            &probe,
            &[("mcp-method", "server/discover")],
        ));
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "the SDK only reads a JSON-RPC error from a 4xx body that is application/json: {}",
        answer.content_type
    );
    let error = answer.response();
    assert_eq!(error["id"], "probe", "{error}");
    assert_eq!(error["error"]["code"], -32022, "{error}");
    assert_eq!(error["error"]["data"]["requested"], "2026-07-28", "{error}");
    assert_eq!(
        error["error"]["data"]["supported"],
        json!(HANDSHAKE_REVISIONS),
        "{error}"
    );

    let proxied = client_check("auto", "everything", Target::Url(&proxy.url));
    assert_handshake(&proxied);
    assert_nontrivial(&proxied, "everything");
    assert_same(&direct, &proxied);
}

const ENVELOPE: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw-test","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}"#;

/// Posts one stateless (sessionless) request with the given routing headers.
async fn stateless_post(url: &str, body: &str, headers: &[(&str, &str)]) -> common::Answer {
    let client = RawClient::new(url);
    let mut extra = vec![("mcp-protocol-version", "2026-07-28")];
    extra.extend_from_slice(headers);
    client.post_bytes(body.to_owned(), &extra).await
}

async fn assert_header_checks(url: &str, who: &str) {
    let list =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{ENVELOPE}}}}}"#);
    // Control: matching headers are served, so the refusals below are about the headers.
    let answer = stateless_post(url, &list, &[("mcp-method", "tools/list")]).await;
    assert_eq!(answer.status, 200, "{who}: {}", answer.body);
    assert!(
        answer.response()["result"]["tools"].is_array(),
        "{who}: {}",
        answer.body
    );

    let answer = stateless_post(url, &list, &[("mcp-method", "tools/call")]).await;
    assert_eq!(
        answer.status, 400,
        "{who}: Mcp-Method mismatch: {}",
        answer.body
    );
    let error = answer.response();
    assert_eq!(error["error"]["code"], -32020, "{who}: {error}");
    assert_eq!(error["id"], 1, "{who}: {error}");

    let call = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hi"}},{ENVELOPE}}}}}"#
        )
    };
    let answer = stateless_post(
        url,
        &call(2),
        &[("mcp-method", "tools/call"), ("mcp-name", "echo")],
    )
    .await;
    assert_eq!(answer.status, 200, "{who}: {}", answer.body);
    assert_eq!(common::first_text(&answer.response()), "Echo: hi", "{who}");

    let answer = stateless_post(
        url,
        &call(3),
        &[("mcp-method", "tools/call"), ("mcp-name", "add")],
    )
    .await;
    assert_eq!(
        answer.status, 400,
        "{who}: Mcp-Name mismatch: {}",
        answer.body
    );
    let error = answer.response();
    assert_eq!(error["error"]["code"], -32020, "{who}: {error}");
    assert_eq!(error["id"], 3, "{who}: {error}");

    // A non-ASCII name travels base64-wrapped (`=?base64?…?=`, as the SDK client sends it).
    let gruesse = format!(
        r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{{"name":"grüße","arguments":{{"name":"x"}},{ENVELOPE}}}}}"#
    );
    let answer = stateless_post(
        url,
        &gruesse,
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z3LDvMOfZQ==?="),
        ],
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "{who}: base64 Mcp-Name: {}",
        answer.body
    );
    assert_eq!(common::first_text(&answer.response()), "Grüße, x!", "{who}");
    let answer = stateless_post(
        url,
        &gruesse,
        // base64("grusse")
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z3J1c3Nl?="),
        ],
    )
    .await;
    assert_eq!(
        answer.status, 400,
        "{who}: wrong base64 Mcp-Name: {}",
        answer.body
    );
    assert_eq!(answer.response()["error"]["code"], -32020, "{who}");

    // An `x-mcp-header` argument mirrored into Mcp-Param-Region must match the body too.
    let weather = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"weather","arguments":{{"region":"Paris"}},{ENVELOPE}}}}}"#
    );
    let routing = [("mcp-method", "tools/call"), ("mcp-name", "weather")];
    let mut headers = routing.to_vec();
    headers.push(("mcp-param-region", "Paris"));
    let answer = stateless_post(url, &weather, &headers).await;
    assert_eq!(
        answer.status, 200,
        "{who}: Mcp-Param-Region: {}",
        answer.body
    );
    let mut headers = routing.to_vec();
    headers.push(("mcp-param-region", "Lyon"));
    let answer = stateless_post(url, &weather, &headers).await;
    assert_eq!(
        answer.status, 400,
        "{who}: Mcp-Param-Region mismatch: {}",
        answer.body
    );
    assert_eq!(answer.response()["error"]["code"], -32020, "{who}");
}

// (e) Raw 2026-07-28 requests whose Mcp-Method / Mcp-Name headers disagree with the body:
//     HTTP 400 with -32020, from the Python server directly and through mcp-meter.
#[tokio::test]
async fn header_body_mismatch_is_refused_with_32020() {
    let server = PythonServer::start();
    assert_header_checks(&server.url, "python server directly").await;
    let (_dir, proxy) = serve_in_front_of(&server.url);
    assert_header_checks(&proxy.url, "through mcp-meter").await;
}

/// Runs `billed_client.py` against `url` and returns its JSON document.
fn billed_client(url: &str, key: Option<&str>, calls: u32) -> Value {
    let mut command = Command::new(python());
    command
        .arg(script("billed_client.py"))
        .args(["--url", url, "--calls", &calls.to_string()])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8");
    if let Some(key) = key {
        command.args(["--key", key]);
    }
    let (ok, stdout, stderr) = run(command, Duration::from_secs(90));
    assert!(ok, "billed_client.py failed:\n{stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("billed_client.py printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The Python SDK as an authenticated, billed client: it connects with its
/// API key, sees prices in `tools/list`, gets each call's cost and balance
/// in `_meta`, and, when the credits run out, a JSON-RPC error whose data
/// says why. Without a key it cannot connect at all.
#[tokio::test]
async fn python_sdk_pays_with_credits_through_serve() {
    let db = common::db::TestDb::sqlite().await;
    let url = db.url();
    let customer = common::admin_json(
        url,
        &[
            "customers",
            "add",
            "--name",
            "Py",
            "--plan",
            "starter",
            "--json",
        ],
    )[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key =
        common::admin_json(url, &["keys", "create", "--customer", &customer, "--json"])["key"]
            .as_str()
            .unwrap()
            .to_owned();
    let (ok, out) = common::admin_text(
        url,
        &[
            "credits",
            "grant",
            "--customer",
            &customer,
            "--amount",
            "3",
            "--idempotency-key",
            "py",
        ],
    );
    assert!(ok, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {url:?}\n\
         [[plans]]\nid = \"starter\"\nmodel = \"credits\"\nupgrade_url = \"https://pay.example.com\"\n\
         [plans.prices]\ndefault = 1\n",
        bin()
    );
    let proxy = Proxy::serve(dir.path(), &toml);

    let document = billed_client(&proxy.url, Some(&key), 4);
    assert!(document.get("fatal").is_none(), "{document}");
    assert_eq!(document["tools"]["echo"]["price"], 1, "{document}");
    let calls = document["calls"].as_array().unwrap();
    for (n, balance) in [2, 1, 0].into_iter().enumerate() {
        assert_eq!(calls[n]["text"], format!("call {n}"), "{document}");
        assert_eq!(calls[n]["billing"]["charged"], 1, "{document}");
        assert_eq!(calls[n]["billing"]["balance"], balance, "{document}");
    }
    let refused = &calls[3]["error"];
    assert_eq!(refused["code"], -32030, "{document}");
    assert_eq!(refused["data"]["reason"], "insufficient_credits");
    assert_eq!(refused["data"]["upgrade_url"], "https://pay.example.com");

    let anonymous = billed_client(&proxy.url, None, 1);
    assert!(anonymous["fatal"].is_string(), "{anonymous}");
    assert!(anonymous.get("calls").is_none(), "{anonymous}");
}

/// The Python SDK as a client of the other models: it sees each model's
/// terms in `tools/list` and in each result's `_meta`, and gets the
/// refusals it can act on (`subscription_required`, `quota_exceeded` with
/// when the quota resets).
#[tokio::test]
async fn python_sdk_sees_each_models_terms_and_refusals() {
    use common::billing::{add_customer, create_key};

    let db = common::db::TestDb::postgres().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {url:?}\n\
         [[plans]]\nid = \"free\"\nmodel = \"freemium\"\nupgrade_url = \"https://pay.example.com\"\n\
         freemium = {{ free_calls = 2, window = \"month\" }}\n\
         [[plans]]\nid = \"team\"\nmodel = \"subscription\"\ncurrency = \"usd\"\n\
         subscription = {{ included_calls = 1 }}\n\
         [[plans]]\nid = \"metered\"\nmodel = \"usage\"\nusage = {{ event_name = \"calls\" }}\n",
        bin()
    );
    let proxy = Proxy::serve(dir.path(), &toml);

    let free = add_customer(url, "Free", "free");
    let document = billed_client(&proxy.url, Some(&create_key(url, &free)), 3);
    assert_eq!(document["tools"]["echo"]["free_calls"], 2, "{document}");
    let calls = document["calls"].as_array().unwrap();
    assert_eq!(calls[1]["billing"]["quota"]["remaining"], 0, "{document}");
    assert_eq!(
        calls[1]["billing"]["warnings"][0]["percent"], 100,
        "{document}"
    );
    let refused = &calls[2]["error"];
    assert_eq!(refused["data"]["reason"], "quota_exceeded", "{document}");
    assert!(refused["data"]["retry_after_ms"].as_i64().unwrap() > 0);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("https://pay.example.com")
    );

    let team = add_customer(url, "Team", "team");
    let key = create_key(url, &team);
    let unsubscribed = billed_client(&proxy.url, Some(&key), 1);
    assert_eq!(
        unsubscribed["calls"][0]["error"]["data"]["reason"], "subscription_required",
        "{unsubscribed}"
    );
    common::admin_json(
        url,
        &[
            "subscriptions",
            "set",
            "--customer",
            &team,
            "--plan",
            "team",
            "--status",
            "active",
            "--json",
        ],
    );
    let subscribed = billed_client(&proxy.url, Some(&key), 2);
    let calls = subscribed["calls"].as_array().unwrap();
    assert_eq!(
        calls[0]["billing"]["included"]["remaining"], 0,
        "{subscribed}"
    );
    assert_eq!(
        calls[1]["error"]["data"]["reason"], "quota_exceeded",
        "{subscribed}"
    );

    let metered = add_customer(url, "Metered", "metered");
    let document = billed_client(&proxy.url, Some(&create_key(url, &metered)), 2);
    assert_eq!(document["tools"]["echo"]["metered"], "calls", "{document}");
    for call in document["calls"].as_array().unwrap() {
        assert_eq!(call["billing"]["units"], 1, "{document}");
    }
}

// (h) Billing a 2026-07-28 `input_required` round trip: the Python SDK server asks for
//     input, the client resumes with `requestState`; the logical call is charged once.
#[tokio::test]
async fn an_input_required_round_trip_is_charged_once() {
    use common::billing::{META, add_customer, balance, create_key, grant, ledger};

    let server = PythonServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billing.db").display());
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n[database]\nurl = {db:?}\n\
         [[plans]]\nid = \"prepaid\"\nmodel = \"credits\"\nprices = {{ default = 2 }}\n",
        server.url
    );
    let proxy = Proxy::serve(dir.path(), &toml);
    let acme = add_customer(&db, "Acme", "prepaid");
    grant(&db, &acme, 10, "welcome");
    let client = RawClient::with_bearer(&proxy.url, &create_key(&db, &acme));
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}"#;
    let call = |id: u32, extra: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"ask_name","arguments":{{"greeting":"Bonjour"}}{extra},{meta}}}}}"#
        );
        let client = &client;
        async move {
            client
                .post_bytes(
                    body,
                    &[
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", "ask_name"),
                    ],
                )
                .await
                .response()
        }
    };

    // Round 1 asks for input: nothing is charged.
    let first = call(1, "").await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    assert_eq!(result["_meta"][META]["charged"], 0, "{first}");
    assert_eq!(balance(&db, &acme), 10);
    let state = result["requestState"].as_str().unwrap().to_owned();
    let answers: serde_json::Map<String, Value> = result["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            (
                k.clone(),
                json!({"action": "accept", "content": {"name": "Zoë"}}),
            )
        })
        .collect();
    let resume = format!(
        r#","inputResponses":{},"requestState":{}"#,
        Value::Object(answers),
        Value::from(state)
    );

    // Round 2 completes the call: charged once.
    let second = call(2, &resume).await;
    assert_eq!(
        second["result"]["content"][0]["text"], "Bonjour, Zoë!",
        "{second}"
    );
    let billing = &second["result"]["_meta"][META];
    assert_eq!(
        (billing["charged"].clone(), billing["balance"].clone()),
        (json!(2), json!(8)),
        "{second}"
    );
    // The client retries round 2 (another id, no session): the same call.
    let retried = call(3, &resume).await;
    assert_eq!(
        retried["result"]["content"][0]["text"], "Bonjour, Zoë!",
        "{retried}"
    );
    assert_eq!(
        retried["result"]["_meta"][META]["repeat"], true,
        "{retried}"
    );
    assert_eq!(balance(&db, &acme), 8);
    let moves: Vec<(String, i64)> = ledger(&db, &acme)
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("grant".into(), 10),
            ("reservation".into(), -2),
            ("refund".into(), 2),
            ("reservation".into(), -2),
            ("settlement".into(), 0),
        ]
    );
    let refund = &ledger(&db, &acme)[2];
    assert_eq!(refund["reason"], "input_required", "{refund}");
}
