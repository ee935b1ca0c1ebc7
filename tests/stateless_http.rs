//! The stateless revision (2026-07-28) on the HTTP downstream: the
//! validation ladder that runs before any plugin, how a client is steered to
//! the handshake when the upstream is a stdio server, and how requests reach
//! an HTTP upstream (bytes, headers, streams, cancellation by closing the
//! stream).
//!
//! The HTTP upstream here is a small axum server inside the test, so the
//! test can see exactly what arrived upstream and when a connection closed;
//! the end-to-end runs against the official Python SDK's 2026-07-28 server
//! are in `python_sdk.rs`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use common::{Proxy, RawClient};
use serde_json::{Value, json};
use tokio::sync::Notify;

const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

/// A stateless request body with the envelope, and the headers that mirror it.
fn stateless(id: Value, method: &str, params: &str) -> (String, Vec<(&'static str, String)>) {
    let params = if params.is_empty() {
        format!("{{{META}}}")
    } else {
        format!("{{{params},{META}}}")
    };
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
    let headers = vec![
        ("mcp-protocol-version", "2026-07-28".to_owned()),
        ("mcp-method", method.to_owned()),
    ];
    (body, headers)
}

async fn post(
    client: &RawClient,
    body: &str,
    headers: &[(&'static str, String)],
) -> common::Answer {
    let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    client.post_bytes(body.to_owned(), &extra).await
}

fn demo_wrap() -> Proxy {
    Proxy::wrap(&[common::bin().to_owned(), "demo-upstream".to_owned()])
}

#[tokio::test]
async fn a_stdio_upstream_steers_stateless_clients_to_the_handshake() {
    let proxy = demo_wrap();
    let mut client = RawClient::new(&proxy.url);
    let (body, headers) = stateless(json!("probe-1"), "server/discover", "");
    let answer = post(&client, &body, &headers).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let error = answer.response();
    assert_eq!(error["id"], "probe-1");
    assert_eq!(error["error"]["code"], -32022);
    assert_eq!(error["error"]["data"]["requested"], "2026-07-28");
    assert_eq!(
        error["error"]["data"]["supported"],
        json!(["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]),
        "only handshake revisions, so a dual-era client falls back to initialize"
    );
    // A tools/call made statelessly is steered the same way, never run.
    let (body, mut headers) = stateless(
        json!(7),
        "tools/call",
        r#""name":"echo","arguments":{"message":"x"}"#,
    );
    headers.push(("mcp-name", "echo".into()));
    let answer = post(&client, &body, &headers).await;
    assert_eq!(answer.response()["error"]["code"], -32022);
    // The fallback the error asks for works on the same endpoint.
    let init = client.initialize("2025-11-25").await;
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "mcp-meter-demo-upstream"
    );
    let call = client
        .call_tool(json!(1), "echo", json!({"message": "after fallback"}))
        .await;
    assert_eq!(common::first_text(&call.response()), "after fallback");
}

#[tokio::test]
async fn the_validation_ladder_runs_before_the_request_goes_anywhere() {
    let proxy = demo_wrap();
    let client = RawClient::new(&proxy.url);
    let call = r#""name":"echo","arguments":{"message":"x"}"#;

    // Mcp-Name contradicts the body: -32020, even though the upstream would
    // have steered (-32022): the header check comes first.
    let (body, mut headers) = stateless(json!(1), "tools/call", call);
    headers.push(("mcp-name", "some_free_tool".into()));
    let answer = post(&client, &body, &headers).await;
    assert_eq!(answer.status, 400);
    let error = answer.response();
    assert_eq!(error["error"]["code"], -32020, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Name")
    );
    assert_eq!(error["id"], 1);

    // Mcp-Method contradicts the body.
    let (body, mut headers) = stateless(json!(2), "tools/call", call);
    headers[1].1 = "tools/list".into();
    headers.push(("mcp-name", "echo".into()));
    let error = post(&client, &body, &headers).await.response();
    assert_eq!(error["error"]["code"], -32020);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Method")
    );

    // Mcp-Method missing altogether.
    let (body, headers) = stateless(json!(3), "tools/list", "");
    let error = post(&client, &body, &headers[..1]).await.response();
    assert_eq!(error["error"]["code"], -32020);

    // The envelope lacks the client capabilities: invalid params.
    let body = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let (_, headers) = stateless(json!(4), "tools/list", "");
    let answer = post(&client, body, &headers).await;
    assert_eq!(answer.status, 400);
    let error = answer.response();
    assert_eq!(error["error"]["code"], -32602);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clientCapabilities")
    );

    // A version from the future: -32022 naming what the proxy relays.
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let answer = client
        .post_bytes(body, &[("mcp-method", "server/discover")])
        .await;
    // The header says nothing about the version, so it is a mismatch first.
    assert_eq!(answer.response()["error"]["code"], -32020);
}

/// What the fake upstream saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, Bytes)>,
    stream_dropped: bool,
}

#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Seen>>,
    dropped: Arc<Notify>,
}

/// Sets a flag when the SSE stream it lives in is dropped (the connection
/// closed).
struct DropFlag(Upstream);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.seen.lock().unwrap().stream_dropped = true;
        self.0.dropped.notify_one();
    }
}

async fn upstream_handler(
    State(upstream): State<Upstream>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    upstream
        .seen
        .lock()
        .unwrap()
        .requests
        .push((headers, body.clone()));
    let message: Value = serde_json::from_slice(&body).unwrap();
    let id = message["id"].clone();
    match message["method"].as_str().unwrap_or_default() {
        "tools/call" => {
            let args = &message["params"]["arguments"];
            (
                [("content-type", "application/json")],
                json!({"jsonrpc":"2.0","id":id,"result":{"resultType":"complete","content":[{"type":"text","text":args["text"]}]}}).to_string(),
            )
                .into_response()
        }
        "subscriptions/listen" => {
            // One notification now, then the stream stays open until the
            // client goes away.
            let flag = DropFlag(upstream.clone());
            let first = json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"});
            let stream = futures_util::stream::unfold(
                (Some(first), flag),
                |(next, flag)| async move {
                    match next {
                        Some(event) => Some((
                            Ok::<_, Infallible>(Event::default().data(event.to_string())),
                            (None, flag),
                        )),
                        None => {
                            std::future::pending::<()>().await;
                            None
                        }
                    }
                },
            );
            Sse::new(stream).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"no such method upstream"}}).to_string(),
        )
            .into_response(),
    }
}

async fn start_upstream() -> (Upstream, String) {
    let upstream = Upstream {
        seen: Arc::default(),
        dropped: Arc::new(Notify::new()),
    };
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(upstream_handler))
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (upstream, url)
}

fn proxy_for(url: &str, dir: &tempfile::TempDir) -> Proxy {
    Proxy::serve(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {url:?}\n[upstream.headers]\nAuthorization = \"Bearer upstream-secret\"\n"
        ),
    )
}

#[tokio::test]
async fn stateless_requests_reach_an_http_upstream_unchanged() {
    let (upstream, url) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&url, &dir);
    let client = RawClient::new(&proxy.url);
    let (body, mut headers) = stateless(
        json!("id-ü"),
        "tools/call",
        r#""name":"weather","arguments":{"text":"Grüße 🌦","region":"eu-west"}"#,
    );
    headers.push(("mcp-name", "weather".into()));
    headers.push(("mcp-param-region", "eu-west".into()));
    headers.push(("x-client-private", "not for upstream".into()));
    let answer = post(&client, &body, &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = answer.response();
    assert_eq!(response["id"], "id-ü");
    assert_eq!(response["result"]["content"][0]["text"], "Grüße 🌦");

    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 1);
    let (up_headers, up_body) = &seen.requests[0];
    assert_eq!(up_body.as_ref(), body.as_bytes(), "bytes unchanged");
    for (name, value) in [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "weather"),
        ("mcp-param-region", "eu-west"),
        ("authorization", "Bearer upstream-secret"),
    ] {
        assert_eq!(up_headers.get(name).unwrap(), value, "{name}");
    }
    assert!(
        up_headers.get("mcp-session-id").is_none(),
        "no session upstream"
    );
    assert!(up_headers.get("x-client-private").is_none());
}

#[tokio::test]
async fn an_upstream_refusal_keeps_its_status_and_body() {
    let (_upstream, url) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&url, &dir);
    let client = RawClient::new(&proxy.url);
    let (body, headers) = stateless(json!(9), "prompts/list", "");
    let answer = post(&client, &body, &headers).await;
    assert_eq!(answer.status, 404);
    let error = answer.response();
    assert_eq!(error["id"], 9);
    assert_eq!(error["error"]["code"], -32601);
    assert_eq!(error["error"]["message"], "no such method upstream");
}

#[tokio::test]
async fn subscriptions_stream_through_and_closing_the_stream_cancels_upstream() {
    let (upstream, url) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&url, &dir);
    let (body, headers) = stateless(json!(1), "subscriptions/listen", "");
    let mut request = reqwest::Client::new()
        .post(&proxy.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in &headers {
        request = request.header(*k, v);
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The notification arrives while the stream stays open (no request
    // timeout applies to a subscription).
    let mut received = String::new();
    while !received.contains("list_changed") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .expect("the stream stays open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!upstream.seen.lock().unwrap().stream_dropped);
    // The client closes its stream: the upstream's must close too.
    drop(response);
    tokio::time::timeout(Duration::from_secs(10), upstream.dropped.notified())
        .await
        .expect("the upstream stream is closed when the client closes its own");
    assert!(upstream.seen.lock().unwrap().stream_dropped);
}

#[tokio::test]
async fn stateless_notifications_are_acknowledged() {
    let proxy = demo_wrap();
    let client = RawClient::new(&proxy.url);
    let answer = client
        .post_bytes(
            format!(r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":1,{META}}}}}"#),
            &[("mcp-protocol-version", "2026-07-28")],
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}
