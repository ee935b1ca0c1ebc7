//! Bad input, limits and upstream faults on the Streamable HTTP downstream,
//! asserted on what the client receives and on what reached the upstream.

mod common;

use std::time::Duration;

use common::{Proxy, RawClient, eventually, first_text, misbehaving_stdio};
use serde_json::{Value, json};

fn misbehaving_config(
    dir: &std::path::Path,
    log: &std::path::Path,
    server_extra: &str,
    upstream_extra: &str,
) -> String {
    let cmd = misbehaving_stdio();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[upstream]\ncommand = {:?}\nargs = [{:?}]\ncwd = {:?}\n{upstream_extra}\n[upstream.env]\nMISBEHAVING_LOG = {:?}\n",
        cmd[0],
        cmd[1],
        dir.display().to_string(),
        log.display().to_string()
    )
}

fn upstream_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn cancelled_ids(log: &std::path::Path) -> Vec<Value> {
    upstream_lines(log)
        .into_iter()
        .filter(|m| m["method"] == "notifications/cancelled")
        .map(|m| m["params"]["requestId"].clone())
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
    proxy: Proxy,
}

fn misbehaving(server_extra: &str, upstream_extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("upstream.log");
    let toml = misbehaving_config(dir.path(), &log, server_extra, upstream_extra);
    let proxy = Proxy::serve(dir.path(), &toml);
    Fixture {
        _dir: dir,
        log,
        proxy,
    }
}

#[tokio::test]
async fn malformed_json_is_a_parse_error_and_the_session_goes_on() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let answer = client
        .post_bytes("{\"jsonrpc\":\"2.0\",\"id\":1,", &[])
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.response()["error"]["code"], -32700);
    assert_eq!(answer.response()["id"], Value::Null);
    let ok = client
        .call_tool(json!(2), "echo", json!({"message":"still here"}))
        .await;
    assert_eq!(first_text(&ok.response()), "still here");
}

#[tokio::test]
async fn json_that_is_not_json_rpc_is_an_invalid_request() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    for body in [
        r#"{"hello":"world"}"#,
        r#"42"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
    ] {
        let answer = client.post_bytes(body, &[]).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.response()["error"]["code"], -32600, "{body}");
    }
    // None of them reached the upstream.
    let methods: Vec<Value> = upstream_lines(&f.log)
        .into_iter()
        .map(|m| m["method"].clone())
        .collect();
    assert_eq!(
        methods,
        vec![json!("initialize"), json!("notifications/initialized")]
    );
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_without_harming_sessions() {
    let f = misbehaving("max_message_bytes = 65536", "");
    let mut a = RawClient::new(&f.proxy.url);
    a.initialize("2025-11-25").await;
    let mut b = RawClient::new(&f.proxy.url);
    b.initialize("2025-11-25").await;
    let big = "x".repeat(100_000);
    let answer = a.call_tool(json!(1), "echo", json!({"message": big})).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.response()["error"]["code"], -32600);
    assert!(
        answer.response()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("65536")
    );
    let small = a
        .call_tool(json!(2), "echo", json!({"message": "fits"}))
        .await;
    assert_eq!(first_text(&small.response()), "fits");
    let other = b
        .call_tool(json!(1), "echo", json!({"message": "other"}))
        .await;
    assert_eq!(first_text(&other.response()), "other");
    assert!(!upstream_lines(&f.log).iter().any(|m| {
        m["params"]["arguments"]["message"]
            .as_str()
            .is_some_and(|s| s.len() > 1000)
    }));
}

#[tokio::test]
async fn batches_follow_the_negotiated_revision() {
    let f = misbehaving("", "");
    let mut modern = RawClient::new(&f.proxy.url);
    modern.initialize("2025-11-25").await;
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"ping"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"b"}}}
    ]);
    let refused = modern.post(&batch).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.response()["error"]["code"], -32600);
    assert!(refused.body.contains("2025-11-25"));

    let mut old = RawClient::new(&f.proxy.url);
    old.initialize("2025-03-26").await;
    let answered = old.post(&batch).await;
    assert_eq!(answered.status, 200, "{}", answered.body);
    let messages = answered.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["id"], 1);
    assert_eq!(messages[1]["id"], 2);
    assert_eq!(first_text(&messages[1]), "b");
}

#[tokio::test]
async fn sessions_are_required_and_unknown_ones_are_not_found() {
    let f = misbehaving("", "");
    let no_session = RawClient::new(&f.proxy.url);
    let answer = no_session
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(answer.status, 400);
    let mut unknown = RawClient::new(&f.proxy.url);
    unknown.session = Some("0123456789abcdef".into());
    let answer = unknown
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.response()["error"]["code"], -32600);

    // DELETE ends a session; it is unknown afterwards.
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let deleted = client
        .http
        .delete(&f.proxy.url)
        .header("mcp-session-id", client.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let after = client
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .await;
    assert_eq!(after.status, 404);
}

#[tokio::test]
async fn accept_content_type_origin_and_version_headers_are_checked() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"}).to_string();
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let http = client.http.clone();
        let url = f.proxy.url.clone();
        let session = client.session.clone().unwrap();
        let body = ping.clone();
        async move {
            let mut request = http.post(url).header("mcp-session-id", session).body(body);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        send(vec![
            ("content-type", "application/json"),
            ("accept", "application/json")
        ])
        .await,
        406
    );
    assert_eq!(
        send(vec![
            ("content-type", "text/plain"),
            ("accept", "application/json, text/event-stream")
        ])
        .await,
        415
    );
    let good = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let mut evil = good.clone();
    evil.push(("origin", "http://evil.example"));
    assert_eq!(send(evil).await, 403);
    let mut local = good.clone();
    local.push(("origin", "http://localhost:6274"));
    assert_eq!(send(local).await, 200);
    let mut bad_version = good.clone();
    bad_version.push(("mcp-protocol-version", "1999-01-01"));
    assert_eq!(send(bad_version).await, 400);
    let get = client
        .http
        .get(&f.proxy.url)
        .header("mcp-session-id", client.session.clone().unwrap())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 406);
}

#[tokio::test]
async fn an_upstream_that_never_answers_times_out_and_is_told_to_cancel() {
    let f = misbehaving("request_timeout_secs = 1", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let answer = client.call_tool(json!("h-1"), "hang", json!({})).await;
    assert_eq!(answer.status, 200);
    let response = answer.response();
    assert_eq!(response["id"], "h-1");
    assert_eq!(response["error"]["code"], -32001, "{response}");
    assert_eq!(response["error"]["data"]["reason"], "timeout");
    assert!(
        eventually(Duration::from_secs(5), || cancelled_ids(&f.log)
            .contains(&json!("h-1")))
        .await
    );
    // The session still works.
    let ok = client
        .call_tool(json!(2), "echo", json!({"message":"after"}))
        .await;
    assert_eq!(first_text(&ok.response()), "after");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_call_cancels_the_upstream_call() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let request = client
        .http
        .post(&f.proxy.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", client.session.clone().unwrap())
        .header("mcp-protocol-version", "2025-11-25")
        .timeout(Duration::from_millis(300))
        .body(json!({"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"hang","arguments":{}}}).to_string())
        .send()
        .await;
    assert!(
        request.is_err(),
        "the call should still be running when the client gives up"
    );
    assert!(
        eventually(Duration::from_secs(5), || cancelled_ids(&f.log)
            .contains(&json!(77)))
        .await,
        "the upstream was not told to cancel: {:?}",
        upstream_lines(&f.log)
    );
}

#[tokio::test]
async fn a_crashed_child_fails_its_calls_and_the_next_call_gets_a_fresh_child() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let first_pid = first_text(
        &client
            .call_tool(json!(1), "pid", json!({}))
            .await
            .response(),
    );
    let crashed = client
        .call_tool(json!(2), "crash", json!({"code": 7}))
        .await
        .response();
    assert_eq!(crashed["id"], 2);
    assert_eq!(crashed["error"]["code"], -32003, "{crashed}");
    assert_eq!(crashed["error"]["data"]["exitStatus"], "exit code 7");
    let second_pid = first_text(
        &client
            .call_tool(json!(3), "pid", json!({}))
            .await
            .response(),
    );
    assert_ne!(first_pid, second_pid);
    assert!(!second_pid.is_empty());
    // The new child got the client's handshake replayed before the call.
    let lines = upstream_lines(&f.log);
    let inits: Vec<&Value> = lines
        .iter()
        .filter(|m| m["method"] == "initialize")
        .collect();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[1]["params"]["clientInfo"]["name"], "raw-test");
    assert_eq!(
        lines
            .iter()
            .filter(|m| m["method"] == "notifications/initialized")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_child_that_keeps_crashing_is_backed_off_not_restarted_in_a_loop() {
    let f = misbehaving("", "restart_backoff_initial_ms = 5000");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let crash = client
        .call_tool(json!(1), "crash", json!({"code": 1}))
        .await
        .response();
    assert_eq!(crash["error"]["code"], -32003);
    // First crash: restarted at once. Second crash: backed off.
    let crash = client
        .call_tool(json!(2), "crash", json!({"code": 1}))
        .await
        .response();
    assert_eq!(crash["error"]["code"], -32003);
    let refused = client
        .call_tool(json!(3), "echo", json!({"message":"x"}))
        .await
        .response();
    assert_eq!(refused["error"]["code"], -32004, "{refused}");
    assert!(refused["error"]["data"]["retry_after"].as_u64().unwrap() >= 1);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 times in a row")
    );
    let starts = upstream_lines(&f.log)
        .iter()
        .filter(|m| m["method"] == "initialize")
        .count();
    assert_eq!(starts, 2, "no third child while backing off");
}

#[tokio::test]
async fn concurrent_calls_on_one_session_are_not_serialized() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let slow = client.call_tool(json!(1), "slow", json!({"ms": 1500}));
    let fast = async {
        let started = std::time::Instant::now();
        let answer = client
            .call_tool(json!(2), "echo", json!({"message":"fast"}))
            .await;
        (answer, started.elapsed())
    };
    let (slow, (fast, fast_took)) = tokio::join!(slow, fast);
    assert_eq!(first_text(&slow.response()), "slow done");
    assert_eq!(first_text(&fast.response()), "fast");
    assert!(
        fast_took < Duration::from_millis(1000),
        "echo waited for the slow call: {fast_took:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_then_exits_cleanly() {
    let f = misbehaving("", "");
    let mut client = RawClient::new(&f.proxy.url);
    client.initialize("2025-11-25").await;
    let call = tokio::spawn({
        let client = RawClient {
            http: client.http.clone(),
            url: client.url.clone(),
            session: client.session.clone(),
            version: client.version.clone(),
            headers: client.headers.clone(),
        };
        async move {
            client
                .call_tool(json!(1), "slow", json!({"ms": 1500}))
                .await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || upstream_lines(&f.log)
            .iter()
            .any(|m| m["params"]["name"] == "slow"))
        .await
    );
    let Fixture { proxy, _dir, .. } = f;
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .unwrap();
    let answer = call.await.unwrap();
    assert_eq!(first_text(&answer.response()), "slow done");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn a_missing_upstream_command_fails_serve_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = \"no-such-mcp-server-xyz\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(common::bin())
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-mcp-server-xyz"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}

#[tokio::test]
async fn health_and_readiness() {
    let f = misbehaving("", "");
    let base = f.proxy.url.trim_end_matches("/mcp").to_owned();
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = serde_json::from_str(
        &reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["upstream"]["status"], "ok");
}
