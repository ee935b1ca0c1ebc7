//! Parity with the Rust SDK (rmcp) as the client: every feature of the
//! reference server (`@modelcontextprotocol/server-everything`) gives the same
//! result through `mcp-meter` as it does when the client talks to the server
//! directly. Each case runs against two upstreams:
//!
//! - stdio: `mcp-meter wrap --listen` in front of `node index.js stdio`; the
//!   direct client runs its own `node index.js stdio` child;
//! - Streamable HTTP: `mcp-meter serve` in front of `node index.js
//!   streamableHttp`; the direct client talks to that same node server.
//!
//! The client through the proxy is always rmcp's `StreamableHttpClientTransport`.
//! Each case records a transcript (labelled, normalised JSON values) on both
//! paths and compares them. Normalisation (see `scrub`) removes only what is
//! volatile by construction: session ids (random UUIDs the HTTP server embeds
//! in tool texts), the wall-clock time the dynamic resources embed, and
//! rmcp's own progress tokens (a per-connection counter).

// rmcp marks sampling, roots, logging and resources/subscribe deprecated (SEP-2577,
// protocol 2026-07-28); server-everything speaks 2025-11-25, where they are current.
#![allow(deprecated)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Proxy, everything_stdio};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientConfig, ClientRequest,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ListRootsResult, LoggingMessageNotificationParam, PingRequest, ProgressNotificationParam,
    ResourceUpdatedNotificationParam, ServerResult,
};
use rmcp::service::{
    NotificationContext, PeerRequestOptions, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData as McpError, ServiceError, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// The client handler: answers server→client requests deterministically and
// records everything the server sends.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    progress: Mutex<Vec<Value>>,
    logs: Mutex<Vec<Value>>,
    updated: Mutex<Vec<String>>,
    sampling: Mutex<Vec<Value>>,
    elicitation: Mutex<Vec<Value>>,
    roots: AtomicUsize,
}

#[derive(Clone)]
struct Handler {
    seen: Arc<Seen>,
    changed: Arc<watch::Sender<u64>>,
}

const ROOTS: &str = r#"{"roots":[{"uri":"file:///tmp/parity-wörk","name":"Parity root ✓"},{"uri":"file:///srv/data"}]}"#;

impl Handler {
    fn new() -> Self {
        Self {
            seen: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits (event-driven) until `cond` holds; panics after `within`.
    async fn wait_until(&self, what: &str, within: Duration, cond: impl Fn(&Seen) -> bool) {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            rx.borrow_and_update();
            if cond(&self.seen) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("timed out after {within:?} waiting for {what}");
            }
        }
    }

    fn simulated_logs(&self) -> usize {
        self.seen
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| is_simulated_log(l))
            .count()
    }
}

/// The messages `toggle-simulated-logging` sends (random level, fixed text).
fn is_simulated_log(log: &Value) -> bool {
    log["data"]
        .as_str()
        .is_some_and(|d| d.contains("-level message") || d.contains("level-message"))
}

impl ClientHandler for Handler {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.seen
            .sampling
            .lock()
            .unwrap()
            .push(serde_json::to_value(&params).unwrap());
        self.bump();
        Ok(serde_json::from_value(json!({
            "model": "parity-model",
            "role": "assistant",
            "stopReason": "endTurn",
            "content": {"type": "text", "text": "Sampled: ☕ naïve 日本語"}
        }))
        .unwrap())
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        self.seen
            .elicitation
            .lock()
            .unwrap()
            .push(serde_json::to_value(&request).unwrap());
        self.bump();
        Ok(serde_json::from_value(json!({
            "action": "accept",
            "content": {
                "name": "Zoë 山田",
                "check": true,
                "email": "zoe@example.com",
                "integer": 7,
                "number": 2.5
            }
        }))
        .unwrap())
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        self.seen.roots.fetch_add(1, Ordering::SeqCst);
        self.bump();
        Ok(serde_json::from_str(ROOTS).unwrap())
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen
            .progress
            .lock()
            .unwrap()
            .push(serde_json::to_value(&params).unwrap());
        self.bump();
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen
            .logs
            .lock()
            .unwrap()
            .push(serde_json::to_value(&params).unwrap());
        self.bump();
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen
            .updated
            .lock()
            .unwrap()
            .push(params.uri.to_string());
        self.bump();
    }

    fn get_info(&self) -> ClientConfig {
        serde_json::from_value(json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {
                "roots": {"listChanged": true},
                "sampling": {},
                "elicitation": {}
            },
            "clientInfo": {"name": "rmcp-parity", "version": "1.0.0"}
        }))
        .unwrap()
    }
}

type Client = RunningService<RoleClient, Handler>;

// ---------------------------------------------------------------------------
// Upstreams.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stdio,
    Http,
}

/// `node index.js streamableHttp` on a free port, killed when dropped.
struct NodeHttp {
    child: Child,
    url: String,
    /// Everything node wrote to stderr, shown if the test fails.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl NodeHttp {
    fn start() -> NodeHttp {
        let script = everything_stdio()[1].clone();
        let mut last = Vec::new();
        // A free port can be taken between probing and node's bind; retry.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("node")
                .arg(&script)
                .arg("streamableHttp")
                .env("PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn node streamableHttp");
            let stderr = child.stderr.take().unwrap();
            let log = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = std::sync::mpsc::channel();
            let kept = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                // Drain stderr for as long as node runs, not just until the
                // readiness line: once the pipe's read end is closed, node's
                // next console.error fails with EPIPE, an unhandled 'error'
                // event that kills the server mid-test (it logs a line
                // whenever a session closes with a roots/list request still
                // pending).
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    kept.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(line.clone());
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) if line.contains("listening on port") => {
                        return NodeHttp {
                            child,
                            url: format!("http://127.0.0.1:{port}/mcp"),
                            stderr: log,
                        };
                    }
                    Ok(line) => last.push(line),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        panic!(
            "server-everything streamableHttp did not start:\n{}",
            last.join("\n")
        );
    }
}

impl Drop for NodeHttp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.child.try_wait() {
                Ok(Some(status)) => format!("exited early ({status})"),
                _ => "still running".to_owned(),
            };
            let log = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "server-everything streamableHttp {state}; its stderr:\n{}",
                log.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One upstream (stdio or HTTP) with mcp-meter in front of it.
struct Fixture {
    kind: Kind,
    proxy: Proxy,
    http: Option<NodeHttp>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start(kind: Kind) -> Fixture {
        Fixture::start_with(kind, everything_stdio())
    }

    /// `stdio_command` is what `wrap` runs for a stdio upstream.
    fn start_with(kind: Kind, stdio_command: Vec<String>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        match kind {
            Kind::Stdio => Fixture {
                kind,
                proxy: Proxy::wrap(&stdio_command),
                http: None,
                _dir: dir,
            },
            Kind::Http => {
                let http = NodeHttp::start();
                let toml = format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n",
                    http.url
                );
                let proxy = Proxy::serve(dir.path(), &toml);
                Fixture {
                    kind,
                    proxy,
                    http: Some(http),
                    _dir: dir,
                }
            }
        }
    }

    /// An rmcp client straight to server-everything.
    async fn direct(&self, handler: Handler) -> Client {
        match self.kind {
            Kind::Stdio => {
                let cmd = everything_stdio();
                let mut command = tokio::process::Command::new(&cmd[0]);
                command.args(&cmd[1..]).stderr(Stdio::null());
                let transport = TokioChildProcess::new(command).expect("spawn node stdio");
                handler.serve(transport).await.expect("direct initialize")
            }
            Kind::Http => {
                let url = self.http.as_ref().unwrap().url.clone();
                handler
                    .serve(StreamableHttpClientTransport::from_uri(url))
                    .await
                    .expect("direct initialize")
            }
        }
    }

    /// An rmcp Streamable HTTP client to mcp-meter.
    async fn through(&self, handler: Handler) -> Client {
        handler
            .serve(StreamableHttpClientTransport::from_uri(
                self.proxy.url.clone(),
            ))
            .await
            .expect("initialize through mcp-meter")
    }
}

// ---------------------------------------------------------------------------
// Normalisation and transcripts.
// ---------------------------------------------------------------------------

fn is_uuid_at(b: &[u8], i: usize) -> bool {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let mut j = i;
    for (k, len) in SHAPE.iter().enumerate() {
        for _ in 0..*len {
            if j >= b.len() || !b[j].is_ascii_hexdigit() {
                return false;
            }
            j += 1;
        }
        if k < 4 {
            if j >= b.len() || b[j] != b'-' {
                return false;
            }
            j += 1;
        }
    }
    true
}

/// Replaces UUIDs (HTTP session ids the server puts into texts) and cuts the
/// wall-clock time after "created at " (dynamic resources).
fn scrub_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if (i == 0 || !b[i - 1].is_ascii_hexdigit()) && is_uuid_at(b, i) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    if let Some(pos) = out.find("created at ") {
        out.truncate(pos + "created at ".len());
        out.push_str("<time>");
    }
    out
}

fn scrub(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(scrub_str(s)),
        Value::Array(items) => Value::Array(items.iter().map(scrub).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    // A blob holds base64 text with a timestamp: compare the
                    // decoded, scrubbed text instead.
                    if k == "blob"
                        && let Some(b64) = v.as_str()
                    {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .expect("blob is base64");
                        let text = String::from_utf8_lossy(&bytes);
                        return (k.clone(), json!({ "decoded": scrub_str(&text) }));
                    }
                    (k.clone(), scrub(v))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[derive(Default, Debug)]
struct Transcript(Vec<(String, Value)>);

impl Transcript {
    fn push(&mut self, label: impl Into<String>, value: impl serde::Serialize) {
        let value = serde_json::to_value(value).unwrap();
        self.0.push((label.into(), scrub(&value)));
    }

    fn outcome<T: serde::Serialize>(&mut self, label: &str, r: Result<T, ServiceError>) {
        match r {
            Ok(v) => self.push(label, v),
            Err(ServiceError::McpError(e)) => self.push(label, json!({ "mcp_error": e })),
            Err(other) => panic!("{label}: transport-level failure: {other}"),
        }
    }
}

fn assert_same(kind: Kind, direct: &Transcript, through: &Transcript) {
    let d: Vec<&str> = direct.0.iter().map(|(l, _)| l.as_str()).collect();
    let t: Vec<&str> = through.0.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(d, t, "{kind:?}: the two transcripts have different steps");
    for ((label, dv), (_, tv)) in direct.0.iter().zip(&through.0) {
        assert!(
            dv == tv,
            "{kind:?}: step {label:?} differs\n direct: {}\nthrough: {}",
            short(dv),
            short(tv)
        );
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char.
fn prefix(s: &str, max: usize) -> &str {
    let end = (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 3000 {
        format!("{}… ({} bytes)", prefix(&s, 3000), s.len())
    } else {
        s
    }
}

fn params(name: &str, arguments: Value) -> CallToolRequestParams {
    serde_json::from_value(json!({"name": name, "arguments": arguments})).unwrap()
}

async fn call(client: &Client, name: &str, arguments: Value) -> Result<Value, ServiceError> {
    client
        .peer()
        .call_tool(params(name, arguments))
        .await
        .map(|r| serde_json::to_value(r).unwrap())
}

async fn ping(client: &Client) {
    let r = client
        .peer()
        .send_request(ClientRequest::PingRequest(PingRequest::default()))
        .await
        .expect("ping");
    assert!(matches!(r, ServerResult::EmptyResult(_)), "ping: {r:?}");
}

fn text_of(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const WAIT: Duration = Duration::from_secs(10);

type Scenario = fn(Client, Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>>;

/// Runs `scenario` direct and through mcp-meter (one after the other, to keep
/// the load on a small machine low) and compares the transcripts.
async fn parity(kind: Kind, scenario: Scenario) {
    let fixture = Fixture::start(kind);
    let h = Handler::new();
    let direct = scenario(fixture.direct(h.clone()).await, h).await;
    let h = Handler::new();
    let through = scenario(fixture.through(h.clone()).await, h).await;
    assert!(!direct.0.is_empty());
    if std::env::var_os("PARITY_DUMP").is_some() {
        for (label, value) in &direct.0 {
            let v = value.to_string();
            eprintln!("{kind:?} {label}: {}", prefix(&v, 300));
        }
    }
    assert_same(kind, &direct, &through);
}

macro_rules! parity_tests {
    ($($name:ident => $scenario:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_stdio() {
                parity(Kind::Stdio, $scenario).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_http() {
                parity(Kind::Http, $scenario).await
            }
        }
    )*};
}

parity_tests! {
    tools => tools_scenario,
    resources => resources_scenario,
    prompts => prompts_scenario,
    logging => logging_scenario,
    progress => progress_scenario,
    sampling => sampling_scenario,
    elicitation => elicitation_scenario,
    roots => roots_scenario,
    fifty_concurrent_calls => concurrent_calls_scenario,
}

// ---------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------

const NON_ASCII: &str =
    "héllo wörld — ünïcödé ✓ 日本語テキスト 🚀👩‍💻 \u{202e}rtl\u{202c} \"quoted\" \\ \n\t end";

fn tools_scenario(c: Client, _h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        // The whole initialize result (server info, capabilities,
        // instructions, protocol version) as the client saw it.
        t.push("peer_info", c.peer().peer_info().expect("peer info"));
        let mut tools = c.peer().list_all_tools().await.expect("tools/list");
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        t.push("tools/list", &tools);
        t.outcome(
            "echo non-ascii",
            call(&c, "echo", json!({"message": NON_ASCII})).await,
        );
        // 1 MB argument (multi-byte characters included), echoed back.
        let unit = "0123456789abcdé€🚀";
        let big: String = unit.repeat(1_000_000 / unit.len() + 1);
        assert!(big.len() >= 1_000_000);
        let r = call(&c, "echo", json!({"message": big}))
            .await
            .expect("1 MB echo");
        assert_eq!(
            text_of(&r),
            format!("Echo: {big}"),
            "1 MB echo came back changed"
        );
        t.push("echo 1MB", &r);
        t.outcome(
            "get-sum",
            call(&c, "get-sum", json!({"a": 19.5, "b": -7})).await,
        );
        t.outcome(
            "get-tiny-image",
            call(&c, "get-tiny-image", json!({})).await,
        );
        t.outcome(
            "get-structured-content",
            call(
                &c,
                "get-structured-content",
                json!({"location": "New York"}),
            )
            .await,
        );
        t.outcome(
            "get-annotated-message",
            call(
                &c,
                "get-annotated-message",
                json!({"messageType": "error", "includeImage": true}),
            )
            .await,
        );
        t.outcome(
            "get-resource-links",
            call(&c, "get-resource-links", json!({"count": 3})).await,
        );
        t.outcome(
            "get-resource-reference",
            call(
                &c,
                "get-resource-reference",
                json!({"resourceType": "Text", "resourceId": 2}),
            )
            .await,
        );
        // Invalid arguments and an unknown tool: the error shapes must match too.
        t.outcome(
            "get-sum bad args",
            call(&c, "get-sum", json!({"a": "x"})).await,
        );
        t.outcome("unknown tool", call(&c, "no-such-tool", json!({})).await);
        ping(&c).await;
        t.push("ping", "ok");
        c.cancel().await.unwrap();
        t
    })
}

fn resources_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let resources = c.peer().list_all_resources().await.expect("resources/list");
        assert!(!resources.is_empty());
        t.push("resources/list", &resources);
        let templates = c
            .peer()
            .list_all_resource_templates()
            .await
            .expect("resources/templates/list");
        t.push("resources/templates/list", &templates);
        for r in &resources {
            let read = c
                .peer()
                .read_resource(serde_json::from_value(json!({"uri": r.uri})).unwrap())
                .await;
            t.outcome(&format!("read {}", r.uri), read);
        }
        for uri in [
            "demo://resource/dynamic/text/1",
            "demo://resource/dynamic/blob/7",
            "demo://resource/dynamic/text/0",
            "demo://resource/nope",
        ] {
            let read = c
                .peer()
                .read_resource(serde_json::from_value(json!({"uri": uri})).unwrap())
                .await;
            t.outcome(&format!("read {uri}"), read);
        }
        let uri = "demo://resource/dynamic/text/3";
        let sub = c
            .peer()
            .subscribe(serde_json::from_value(json!({"uri": uri})).unwrap())
            .await;
        t.outcome("subscribe", sub);
        // The server acknowledges a subscription with a log message.
        h.wait_until("the subscribe log message", WAIT, |s| {
            s.logs.lock().unwrap().iter().any(|l| {
                l["data"]
                    .as_str()
                    .is_some_and(|d| d.contains("Subscribe Resource request"))
            })
        })
        .await;
        t.outcome(
            "toggle-subscriber-updates on",
            call(&c, "toggle-subscriber-updates", json!({})).await,
        );
        // It sends one update immediately for each subscribed URI.
        h.wait_until("notifications/resources/updated", WAIT, |s| {
            !s.updated.lock().unwrap().is_empty()
        })
        .await;
        t.push("updated uri", h.seen.updated.lock().unwrap()[0].clone());
        t.outcome(
            "toggle-subscriber-updates off",
            call(&c, "toggle-subscriber-updates", json!({})).await,
        );
        let unsub = c
            .peer()
            .unsubscribe(serde_json::from_value(json!({"uri": uri})).unwrap())
            .await;
        t.outcome("unsubscribe", unsub);
        let acks: Vec<Value> = h
            .seen
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["data"].as_str().is_some_and(|d| d.contains("Subscribe")))
            .cloned()
            .collect();
        t.push("subscribe acknowledgements", acks);
        c.cancel().await.unwrap();
        t
    })
}

fn prompts_scenario(c: Client, _h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let prompts = c.peer().list_all_prompts().await.expect("prompts/list");
        assert!(prompts.len() >= 3);
        t.push("prompts/list", &prompts);
        for (name, args) in [
            ("simple-prompt", json!({})),
            ("args-prompt", json!({"city": "Zürich", "state": "ZH ✓"})),
            ("args-prompt", json!({"city": "東京"})),
            (
                "completable-prompt",
                json!({"department": "Engineering", "name": "Zoë"}),
            ),
            (
                "resource-prompt",
                json!({"resourceType": "Text", "resourceId": "4"}),
            ),
            (
                "resource-prompt",
                json!({"resourceType": "Blob", "resourceId": "5"}),
            ),
            ("no-such-prompt", json!({})),
            ("args-prompt", json!({})),
        ] {
            let get = c
                .peer()
                .get_prompt(
                    serde_json::from_value(json!({"name": name, "arguments": args})).unwrap(),
                )
                .await;
            t.outcome(&format!("prompts/get {name} {args}"), get);
        }
        for (value, arg) in [("E", "department"), ("", "department"), ("Al", "name")] {
            let complete = c
                .peer()
                .complete(
                    serde_json::from_value(json!({
                        "ref": {"type": "ref/prompt", "name": "completable-prompt"},
                        "argument": {"name": arg, "value": value},
                        "context": {"arguments": {"department": "Engineering"}}
                    }))
                    .unwrap(),
                )
                .await;
            t.outcome(&format!("completion/complete {arg}={value:?}"), complete);
        }
        c.cancel().await.unwrap();
        t
    })
}

fn logging_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let set = c
            .peer()
            .set_level(serde_json::from_value(json!({"level": "debug"})).unwrap())
            .await;
        t.outcome("logging/setLevel debug", set);
        t.outcome(
            "toggle-simulated-logging on",
            call(&c, "toggle-simulated-logging", json!({})).await,
        );
        // One message is sent at once, then one every 5 s. Its level is
        // random (so is its text, which names the level): only its shape is
        // compared.
        h.wait_until("a simulated log message", WAIT, |_| h.simulated_logs() > 0)
            .await;
        let first = h
            .seen
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| is_simulated_log(l))
            .cloned()
            .unwrap();
        let mut keys: Vec<String> = first.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        t.push("simulated log keys", keys);
        t.push(
            "simulated log level is valid",
            [
                "debug",
                "info",
                "notice",
                "warning",
                "error",
                "critical",
                "alert",
                "emergency",
            ]
            .contains(&first["level"].as_str().unwrap_or_default()),
        );
        t.outcome(
            "toggle-simulated-logging off",
            call(&c, "toggle-simulated-logging", json!({})).await,
        );
        // Level filtering: at "emergency" the server drops (almost) all.
        let set = c
            .peer()
            .set_level(serde_json::from_value(json!({"level": "emergency"})).unwrap())
            .await;
        t.outcome("logging/setLevel emergency", set);
        let bad = c
            .peer()
            .set_level(serde_json::from_value(json!({"level": "debug"})).unwrap())
            .await;
        t.outcome("logging/setLevel debug again", bad);
        c.cancel().await.unwrap();
        t
    })
}

fn progress_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        // rmcp puts a progress token on every request.
        let r = call(
            &c,
            "trigger-long-running-operation",
            json!({"duration": 0.8, "steps": 4}),
        )
        .await;
        t.outcome("trigger-long-running-operation", r);
        h.wait_until("4 progress notifications", WAIT, |s| {
            s.progress.lock().unwrap().len() >= 4
        })
        .await;
        // The token is rmcp's per-connection counter: excluded.
        let progress: Vec<Value> = h
            .seen
            .progress
            .lock()
            .unwrap()
            .iter()
            .map(|p| json!({"progress": p["progress"], "total": p["total"], "message": p["message"]}))
            .collect();
        assert_eq!(progress.len(), 4, "{progress:?}");
        t.push("progress notifications", progress);
        c.cancel().await.unwrap();
        t
    })
}

fn sampling_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let r = call(
            &c,
            "trigger-sampling-request",
            json!({"prompt": "Résumé of 日本 🚀", "maxTokens": 42}),
        )
        .await;
        t.outcome("trigger-sampling-request", r);
        let requests = h.seen.sampling.lock().unwrap().clone();
        assert_eq!(
            requests.len(),
            1,
            "one sampling/createMessage: {requests:?}"
        );
        t.push("sampling/createMessage params", requests);
        c.cancel().await.unwrap();
        t
    })
}

fn elicitation_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let r = call(&c, "trigger-elicitation-request", json!({})).await;
        t.outcome("trigger-elicitation-request", r);
        let requests = h.seen.elicitation.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "one elicitation/create: {requests:?}");
        t.push("elicitation/create params", requests);
        c.cancel().await.unwrap();
        t
    })
}

fn roots_scenario(c: Client, h: Handler) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        // The server asks for the roots by itself 350 ms after initialization
        // (a server→client request outside any client request).
        h.wait_until("the initial roots/list", WAIT, |s| {
            s.roots.load(Ordering::SeqCst) >= 1
        })
        .await;
        h.wait_until("the roots log message", WAIT, |s| {
            s.logs.lock().unwrap().iter().any(|l| {
                l["data"]
                    .as_str()
                    .is_some_and(|d| d.contains("Roots updated"))
            })
        })
        .await;
        t.outcome(
            "get-roots-list",
            call(&c, "get-roots-list", json!({})).await,
        );
        // roots/list_changed makes the server ask again.
        c.peer().notify_roots_list_changed().await.unwrap();
        h.wait_until("a second roots/list", WAIT, |s| {
            s.roots.load(Ordering::SeqCst) >= 2
        })
        .await;
        h.wait_until("the second roots log message", WAIT, |s| {
            s.logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| {
                    l["data"]
                        .as_str()
                        .is_some_and(|d| d.contains("Roots updated"))
                })
                .count()
                >= 2
        })
        .await;
        t.outcome(
            "get-roots-list again",
            call(&c, "get-roots-list", json!({})).await,
        );
        t.push("roots/list requests", h.seen.roots.load(Ordering::SeqCst));
        let logs: Vec<Value> = h.seen.logs.lock().unwrap().clone();
        t.push("log messages", logs);
        c.cancel().await.unwrap();
        t
    })
}

fn concurrent_calls_scenario(
    c: Client,
    _h: Handler,
) -> Pin<Box<dyn Future<Output = Transcript> + Send>> {
    Box::pin(async move {
        let mut t = Transcript::default();
        let c = Arc::new(c);
        let calls = (0..50).map(|i| {
            let c = c.clone();
            async move {
                let r = if i % 2 == 0 {
                    call(
                        &c,
                        "echo",
                        json!({"message": format!("call {i} — ✓ {}", "ü".repeat(i))}),
                    )
                    .await
                } else {
                    call(&c, "get-sum", json!({"a": i, "b": i * 1000})).await
                };
                (i, r)
            }
        });
        let results = futures_util::future::join_all(calls).await;
        for (i, r) in results {
            let r = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
            let expected = if i % 2 == 0 {
                format!("Echo: call {i} — ✓ {}", "ü".repeat(i))
            } else {
                format!("The sum of {i} and {} is {}.", i * 1000, i * 1001)
            };
            assert_eq!(text_of(&r), expected, "call {i} got another call's answer");
            t.push(format!("call {i}"), r);
        }
        Arc::into_inner(c).unwrap().cancel().await.unwrap();
        t
    })
}

// ---------------------------------------------------------------------------
// Many sessions, isolation, cancellation.
// ---------------------------------------------------------------------------

/// What one session does in the concurrent-sessions case.
async fn session_work(c: Client, n: usize) -> Value {
    let echo = call(&c, "echo", json!({"message": format!("session {n} ✓")}))
        .await
        .expect("echo");
    let sum = call(&c, "get-sum", json!({"a": n, "b": 0.5}))
        .await
        .expect("get-sum");
    let mut tools: Vec<String> = c
        .peer()
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    c.cancel().await.unwrap();
    scrub(&json!({"echo": echo, "sum": sum, "tools": tools}))
}

async fn twenty_sessions(kind: Kind) {
    let fixture = Fixture::start(kind);
    // Direct: one session does the work of all twenty (same answers, and no
    // twenty extra node processes on a small machine).
    let direct = fixture.direct(Handler::new()).await;
    let mut expected = BTreeMap::new();
    for n in 0..20 {
        let c = direct.peer();
        let echo = c
            .call_tool(params("echo", json!({"message": format!("session {n} ✓")})))
            .await
            .expect("echo");
        let sum = c
            .call_tool(params("get-sum", json!({"a": n, "b": 0.5})))
            .await
            .expect("get-sum");
        expected.insert(n, (echo, sum));
    }
    let mut tools: Vec<String> = direct
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    direct.cancel().await.unwrap();

    let started = Instant::now();
    let sessions = (0..20).map(|n| {
        let fixture = &fixture;
        async move {
            let c = fixture.through(Handler::new()).await;
            (n, session_work(c, n).await)
        }
    });
    let results = futures_util::future::join_all(sessions).await;
    for (n, got) in results {
        let (echo, sum) = &expected[&n];
        let want = scrub(&json!({"echo": echo, "sum": sum, "tools": tools}));
        assert_eq!(got, want, "{kind:?}: session {n} differs from direct");
    }
    eprintln!("{kind:?}: 20 sessions in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sessions_over_stdio() {
    twenty_sessions(Kind::Stdio).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sessions_over_http() {
    twenty_sessions(Kind::Http).await
}

/// Session A triggers every kind of server→client traffic; session B, open
/// on the same proxy (and, over HTTP, the same upstream process), must see
/// none of it.
async fn isolation(kind: Kind) {
    let fixture = Fixture::start(kind);
    let ha = Handler::new();
    let hb = Handler::new();
    let a = fixture.through(ha.clone()).await;
    let b = fixture.through(hb.clone()).await;
    // Both get their own initial roots/list from their own server.
    for h in [&ha, &hb] {
        h.wait_until("the initial roots/list", WAIT, |s| {
            s.roots.load(Ordering::SeqCst) == 1
        })
        .await;
    }
    {
        a.peer()
            .set_level(serde_json::from_value(json!({"level": "debug"})).unwrap())
            .await
            .unwrap();
        a.peer()
            .subscribe(
                serde_json::from_value(json!({"uri": "demo://resource/dynamic/text/1"})).unwrap(),
            )
            .await
            .unwrap();
    }
    call(&a, "toggle-simulated-logging", json!({}))
        .await
        .unwrap();
    call(&a, "toggle-subscriber-updates", json!({}))
        .await
        .unwrap();
    let sampled = call(
        &a,
        "trigger-sampling-request",
        json!({"prompt": "only for A"}),
    )
    .await
    .unwrap();
    assert!(text_of(&sampled).contains("Sampled: ☕"), "{sampled}");
    let elicited = call(&a, "trigger-elicitation-request", json!({}))
        .await
        .unwrap();
    assert!(text_of(&elicited).contains("User provided"), "{elicited}");
    call(
        &a,
        "trigger-long-running-operation",
        json!({"duration": 0.3, "steps": 3}),
    )
    .await
    .unwrap();
    a.peer().notify_roots_list_changed().await.unwrap();
    ha.wait_until("all of A's traffic", WAIT, |s| {
        s.progress.lock().unwrap().len() >= 3
            && !s.updated.lock().unwrap().is_empty()
            && s.roots.load(Ordering::SeqCst) >= 2
            && s.sampling.lock().unwrap().len() == 1
            && s.elicitation.lock().unwrap().len() == 1
    })
    .await;
    ha.wait_until("a simulated log message for A", WAIT, |_| {
        ha.simulated_logs() > 0
    })
    .await;
    // B is alive and its own requests work...
    ping(&b).await;
    let echo = call(&b, "echo", json!({"message": "B"})).await.unwrap();
    assert_eq!(text_of(&echo), "Echo: B");
    // ...and B received none of A's traffic. Absence cannot be awaited: A's
    // traffic has all arrived at A by now, and B gets a grace period for
    // anything misrouted that is still in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = &hb.seen;
    assert_eq!(s.sampling.lock().unwrap().len(), 0, "B saw A's sampling");
    assert_eq!(
        s.elicitation.lock().unwrap().len(),
        0,
        "B saw A's elicitation"
    );
    assert_eq!(
        s.progress.lock().unwrap().len(),
        0,
        "B saw A's progress: {:?}",
        s.progress.lock().unwrap()
    );
    assert_eq!(
        s.updated.lock().unwrap().len(),
        0,
        "B saw A's resource updates"
    );
    assert_eq!(hb.simulated_logs(), 0, "B saw A's log messages");
    assert_eq!(
        s.roots.load(Ordering::SeqCst),
        1,
        "B got A's second roots/list"
    );
    // And B's logs are only its own "Roots updated" line.
    let b_logs = s.logs.lock().unwrap().clone();
    assert!(
        b_logs.iter().all(|l| l["data"]
            .as_str()
            .is_some_and(|d| d.contains("Roots updated"))),
        "B saw foreign log messages: {b_logs:?}"
    );
    call(&a, "toggle-simulated-logging", json!({}))
        .await
        .unwrap();
    call(&a, "toggle-subscriber-updates", json!({}))
        .await
        .unwrap();
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated_over_stdio() {
    isolation(Kind::Stdio).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated_over_http() {
    isolation(Kind::Http).await
}

/// Starts a long call, waits for its first progress notification (it is
/// running upstream), cancels it, and checks the session goes on. Returns
/// the JSON-RPC id rmcp used for the call.
async fn cancel_long_call(c: &Client, h: &Handler) -> Value {
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params(
        "trigger-long-running-operation",
        json!({"duration": 30, "steps": 60}),
    )));
    let handle = c
        .peer()
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
        .expect("send tools/call");
    let id = serde_json::to_value(&handle.id).unwrap();
    h.wait_until("the first progress notification", WAIT, |s| {
        !s.progress.lock().unwrap().is_empty()
    })
    .await;
    let started = Instant::now();
    handle
        .cancel(Some("parity test cancels".into()))
        .await
        .expect("send notifications/cancelled");
    // The session still works, promptly, with the long call abandoned.
    let echo = call(c, "echo", json!({"message": "after cancel"}))
        .await
        .expect("echo after cancel");
    assert_eq!(text_of(&echo), "Echo: after cancel");
    ping(c).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_a_stdio_upstream() {
    // The upstream's stdin is recorded with `tee`, so the test sees exactly
    // what mcp-meter wrote to it.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("upstream-stdin.jsonl");
    let everything = everything_stdio();
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "tee \"$0\" | exec node \"$1\" stdio".to_owned(),
        log.display().to_string(),
        everything[1].clone(),
    ];
    let fixture = Fixture::start_with(Kind::Stdio, cmd);
    let h = Handler::new();
    let c = fixture.through(h.clone()).await;
    cancel_long_call(&c, &h).await;
    // The upstream got notifications/cancelled for the id mcp-meter gave the
    // call (which need not be the client's id).
    let upstream_lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let lines = upstream_lines();
    let call = lines
        .iter()
        .find(|m| {
            m["method"] == "tools/call" && m["params"]["name"] == "trigger-long-running-operation"
        })
        .unwrap_or_else(|| panic!("the call never reached the upstream: {lines:?}"))
        .clone();
    let cancelled = lines
        .iter()
        .find(|m| m["method"] == "notifications/cancelled")
        .unwrap_or_else(|| panic!("notifications/cancelled never reached the upstream: {lines:?}"))
        .clone();
    assert_eq!(
        cancelled["params"]["requestId"], call["id"],
        "cancelled names another request: {cancelled}"
    );
    assert_eq!(cancelled["params"]["reason"], "parity test cancels");
    c.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_parity_over_stdio_and_http() {
    // Direct and through, both upstream kinds: the cancelled call ends, no
    // response to it is delivered, and the session goes on.
    for kind in [Kind::Stdio, Kind::Http] {
        let fixture = Fixture::start(kind);
        for through in [false, true] {
            let h = Handler::new();
            let c = if through {
                fixture.through(h.clone()).await
            } else {
                fixture.direct(h.clone()).await
            };
            cancel_long_call(&c, &h).await;
            c.cancel().await.unwrap();
        }
    }
}
