//! Shared helpers for the integration tests: start the real `mcp-meter`
//! binary, wait for its readiness line, find the test peers, and speak raw
//! Streamable HTTP where a test needs to see exactly what a client receives.
#![allow(dead_code)]

pub mod api;
pub mod billing;
pub mod db;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `mcp-meter` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-meter")
}

/// The command line of the official reference server over stdio. Fails the
/// test (never skips it) when the peers are not installed.
pub fn everything_stdio() -> Vec<String> {
    let script = root()
        .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "server-everything is not installed: run `npm ci --prefix tests/peers` (bash .ci/run does it)"
    );
    vec!["node".into(), script.display().to_string(), "stdio".into()]
}

/// The misbehaving stdio server (hang, crash, slow tools).
pub fn misbehaving_stdio() -> Vec<String> {
    vec![
        "python3".into(),
        root()
            .join("tests/peers/misbehaving_server.py")
            .display()
            .to_string(),
    ]
}

/// A running `mcp-meter` process, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub url: String,
    pub stderr: mpsc::Receiver<String>,
    pub stdout: mpsc::Receiver<String>,
}

impl Proxy {
    /// Runs `mcp-meter ARGS…`, waiting for `listening on URL` on stderr.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Proxy {
        let mut command = Command::new(bin());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn mcp-meter");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on ") {
                        // A text line ends with the URL; a JSON line
                        // (`[logging] format = "json"`) has it before a quote.
                        let rest = &line[pos + "listening on ".len()..];
                        let url = rest.split('"').next().unwrap_or(rest).trim().to_owned();
                        return Proxy {
                            child,
                            url,
                            stderr: rx,
                            stdout,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("mcp-meter did not start; stderr:\n{}", seen.join("\n"))
                }
            }
        }
    }

    /// `mcp-meter wrap --listen 127.0.0.1:0 -- COMMAND…`.
    pub fn wrap(command: &[String]) -> Proxy {
        let mut args = vec!["wrap", "--listen", "127.0.0.1:0", "--"];
        args.extend(command.iter().map(String::as_str));
        Proxy::start(&args, &[])
    }

    /// `mcp-meter serve --config FILE` with the given TOML.
    pub fn serve(dir: &Path, toml: &str) -> Proxy {
        let path = dir.join("mcp-meter.toml");
        std::fs::write(&path, toml).unwrap();
        Proxy::start(&["serve", "--config", path.to_str().unwrap()], &[])
    }

    /// Waits for a stderr line containing `needle` (returns it).
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within {within:?}"),
            }
        }
    }

    /// Kills the process with SIGKILL (no shutdown, nothing flushed) and
    /// waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mcp-meter did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The lines of a child's output, read on a thread.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw Streamable HTTP client: sends exactly what a test says and returns
/// what came back, status and all.
pub struct RawClient {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    pub version: String,
    /// Headers sent with every request (e.g. `authorization`).
    pub headers: Vec<(String, String)>,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    /// The JSON-RPC messages in the body (JSON or SSE `data:` lines).
    pub fn messages(&self) -> Vec<Value> {
        if self.content_type.starts_with("text/event-stream") {
            self.body
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter(|d| !d.trim().is_empty())
                .map(|d| serde_json::from_str(d.trim()).expect("SSE data is JSON"))
                .collect()
        } else if self.body.is_empty() {
            vec![]
        } else {
            let v: Value = serde_json::from_str(&self.body).expect("body is JSON");
            match v {
                Value::Array(items) => items,
                other => vec![other],
            }
        }
    }

    /// The last message (the response to the request).
    pub fn response(&self) -> Value {
        self.messages().pop().expect("a JSON-RPC message")
    }
}

impl RawClient {
    pub fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_owned(),
            session: None,
            version: "2025-11-25".into(),
            headers: Vec::new(),
        }
    }

    /// A client that sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_bearer(url: &str, token: &str) -> Self {
        let mut client = Self::new(url);
        client
            .headers
            .push(("authorization".into(), format!("Bearer {token}")));
        client
    }

    pub async fn post_bytes(
        &self,
        body: impl Into<reqwest::Body>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", &self.version);
        }
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            content_type,
            body,
        }
    }

    pub async fn post(&self, message: &Value) -> Answer {
        self.post_bytes(message.to_string(), &[]).await
    }

    /// initialize + notifications/initialized; keeps the session id.
    pub async fn initialize(&mut self, version: &str) -> Value {
        self.version = version.to_owned();
        let answer = self
            .post(
                &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name":"raw-test","version":"1"}}}),
            )
            .await;
        assert_eq!(answer.status, 200, "initialize failed: {}", answer.body);
        self.session = Some(
            answer
                .headers
                .get("mcp-session-id")
                .expect("session id")
                .to_str()
                .unwrap()
                .to_owned(),
        );
        let ack = self
            .post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        assert_eq!(ack.status, 202, "initialized: {}", ack.body);
        answer.response()
    }

    pub async fn call_tool(&self, id: Value, name: &str, arguments: Value) -> Answer {
        self.post(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":arguments}}))
            .await
    }
}

/// The text of the first content item of a tools/call result.
pub fn first_text(response: &Value) -> String {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// Runs an admin command (`customers`, `keys`, `usage`, …) against the
/// database at `db` and parses its `--json` output; fails the test on a
/// non-zero exit.
pub fn admin_json(db: &str, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = admin(db, args);
    assert!(ok, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

/// Runs an admin command against `db`; returns (exit ok, stdout + stderr).
pub fn admin_text(db: &str, args: &[&str]) -> (bool, String) {
    let (ok, stdout, stderr) = admin(db, args);
    (ok, format!("{stdout}{stderr}"))
}

fn admin(db: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(bin())
        .args(args)
        .args(["--database-url", db])
        .output()
        .expect("run mcp-meter");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
