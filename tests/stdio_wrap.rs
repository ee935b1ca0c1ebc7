//! `mcp-meter wrap --stdio`: a client launches mcp-meter in place of the
//! server and talks newline-delimited JSON-RPC on its stdin/stdout.

mod common;

use common::admin_json as cli_json;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

struct Wrapped {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Wrapped {
    fn start(extra: &[&str], server: &[String]) -> Wrapped {
        let mut args = vec!["wrap", "--stdio"];
        args.extend_from_slice(extra);
        args.push("--");
        let mut command = Command::new(common::bin());
        command
            .args(&args)
            .args(server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value =
                    serde_json::from_str(&line).expect("stdout carries only JSON-RPC");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Wrapped {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string());
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("an answer on stdout")
    }

    fn initialize(&mut self, version: &str) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":version,"capabilities":{},"clientInfo":{"name":"stdio-test","version":"1"}}}));
        let answer = self.next();
        self.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        answer
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn requests_pass_through_with_their_ids_and_bad_lines_get_errors() {
    let mut w = Wrapped::start(&[], &common::misbehaving_stdio());
    let init = w.initialize("2025-11-25");
    assert_eq!(init["result"]["serverInfo"]["name"], "misbehaving");
    w.send(json!({"jsonrpc":"2.0","id":"s-1","method":"tools/call","params":{"name":"echo","arguments":{"message":"héllo — 日本語 🚀"}}}));
    let answer = w.next();
    assert_eq!(answer["id"], "s-1");
    assert_eq!(answer["result"]["content"][0]["text"], "héllo — 日本語 🚀");

    w.send_raw("{not json");
    let parse = w.next();
    assert_eq!(parse["error"]["code"], -32700);
    assert_eq!(parse["id"], Value::Null);
    w.send_raw(r#"{"jsonrpc":"2.0","id":5}"#);
    assert_eq!(w.next()["error"]["code"], -32600);
    w.send_raw(r#"[{"jsonrpc":"2.0","id":6,"method":"ping"}]"#);
    let batch = w.next();
    assert_eq!(batch["error"]["code"], -32600);
    assert!(
        batch["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-11-25")
    );
    w.send(json!({"jsonrpc":"2.0","id":7,"method":"ping"}));
    assert_eq!(w.next()["id"], 7);
}

#[test]
fn a_slow_call_does_not_hold_up_the_next_line() {
    let mut w = Wrapped::start(&[], &common::misbehaving_stdio());
    w.initialize("2025-11-25");
    w.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","arguments":{"ms":1500}}}));
    w.send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"quick"}}}));
    assert_eq!(w.next()["id"], 2);
    assert_eq!(w.next()["id"], 1);
}

#[test]
fn an_oversized_line_is_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[server]\nmax_message_bytes = 10000\n").unwrap();
    let mut w = Wrapped::start(
        &["--config", config.to_str().unwrap()],
        &common::misbehaving_stdio(),
    );
    w.initialize("2025-11-25");
    w.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x".repeat(20_000)}}}));
    let refused = w.next();
    assert_eq!(refused["error"]["code"], -32600);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10000")
    );
    w.send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"small"}}}));
    assert_eq!(w.next()["result"]["content"][0]["text"], "small");
}

#[test]
fn closing_stdin_stops_the_child_and_exits_zero() {
    let mut w = Wrapped::start(&[], &common::misbehaving_stdio());
    w.initialize("2025-11-25");
    w.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pid","arguments":{}}}));
    let pid: i32 = w.next()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    drop(w.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mcp-meter did not exit on EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    // The upstream child is gone too.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still running"
    );
}

#[test]
fn wrap_stdio_checks_the_api_key_and_records_usage() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("meter.db").display());
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = {db:?}\n")).unwrap();
    let customer = cli_json(&db, &["customers", "add", "--name", "Local", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = cli_json(&db, &["keys", "create", "--customer", &customer, "--json"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = config.to_str().unwrap();

    let mut good = Wrapped::start(
        &["--config", config, "--api-key", &key],
        &common::misbehaving_stdio(),
    );
    good.initialize("2025-11-25");
    good.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"paid"}}}));
    assert_eq!(good.next()["result"]["content"][0]["text"], "paid");
    // Close stdin: the wrapper ends, flushing its usage records.
    good.stdin.take();
    assert!(good.child.wait().unwrap().success());

    let mut bad = Wrapped::start(
        &["--config", config, "--api-key", "mcp_not-a-valid-key"],
        &common::misbehaving_stdio(),
    );
    bad.send(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}));
    let refused = bad.next();
    assert_eq!(refused["error"]["code"], -32010, "{refused}");
    let mut none = Wrapped::start(&["--config", config], &common::misbehaving_stdio());
    none.initialize("2025-11-25");
    none.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"free?"}}}));
    let refused = none.next();
    assert_eq!(
        refused["error"]["data"]["reason"], "missing_credential",
        "{refused}"
    );

    let records = cli_json(&db, &["usage", "--customer", &customer, "--json"]);
    let tools: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["tool"].as_str())
        .collect();
    assert_eq!(tools, ["echo"], "{records}");
}
