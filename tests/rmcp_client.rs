//! The Rust SDK (rmcp) as the client: the same operations against the
//! official reference server, once direct (stdio) and once through
//! `mcp-meter wrap --listen` (Streamable HTTP), give the same results —
//! tools, resources, prompts, ping, progress, sampling and roots (server→
//! client requests answered by this client), a 1 MB argument, non-ASCII
//! text, 50 concurrent calls on one session and 20 concurrent sessions —
//! and two sessions never see each other's server→client requests.

// Sampling and roots are deprecated for the stateless revision (SEP-2577) but
// are part of the handshake revisions this proxy relays, so they are tested.
#![allow(deprecated)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Proxy, everything_stdio};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, CreateMessageRequestParams,
    CreateMessageResult, GetPromptRequestParams, Implementation, ListRootsResult,
    ReadResourceRequestParams, Role, Root, SamplingMessage, SamplingMessageContentBlock,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// A client that answers sampling and roots requests with fixed answers
/// tagged with its own name, and counts them.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    samplings: Arc<AtomicUsize>,
    roots: Arc<AtomicUsize>,
}

impl Recorder {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            samplings: Arc::default(),
            roots: Arc::default(),
        }
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder()
                .enable_sampling()
                .enable_roots()
                .build(),
            Implementation::new("rmcp-parity", "1.0.0"),
        )
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.samplings.fetch_add(1, Ordering::SeqCst);
        let asked = serde_json::to_string(&params.messages).unwrap_or_default();
        Ok(CreateMessageResult::new(
            SamplingMessage::new(
                Role::Assistant,
                SamplingMessageContentBlock::text(format!(
                    "{} answers {} chars",
                    self.name,
                    asked.len()
                )),
            ),
            "fixed-model".into(),
        ))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.roots.fetch_add(1, Ordering::SeqCst);
        Ok(ListRootsResult::new(vec![Root::new(format!(
            "file:///roots/{}",
            self.name
        ))]))
    }
}

type Client = RunningService<RoleClient, Recorder>;

async fn direct(handler: Recorder) -> Client {
    let cmd = everything_stdio();
    let mut command = tokio::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    handler
        .serve(TokioChildProcess::new(command).unwrap())
        .await
        .unwrap()
}

async fn through(proxy: &Proxy, handler: Recorder) -> Client {
    handler
        .serve(StreamableHttpClientTransport::from_uri(proxy.url.clone()))
        .await
        .unwrap()
}

fn args(value: Value) -> CallToolRequestParams {
    let (name, arguments) = (value["name"].as_str().unwrap().to_owned(), &value["args"]);
    CallToolRequestParams::new(name).with_arguments(arguments.as_object().unwrap().clone())
}

async fn call(client: &Client, name: &str, arguments: Value) -> Value {
    let result = client
        .call_tool(args(json!({"name": name, "args": arguments})))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::to_value(result).unwrap()
}

/// Everything one client observes, in a form that can be compared.
async fn observe(client: &Client) -> Value {
    let mut tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    let big = "ü".repeat(512 * 1024); // 1 MiB of UTF-8
    let echo_big = call(client, "echo", json!({"message": big})).await;
    let resources = serde_json::to_value(client.list_resources(None).await.unwrap()).unwrap();
    let templates =
        serde_json::to_value(client.list_resource_templates(None).await.unwrap()).unwrap();
    let first_uri = resources["resources"][0]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = serde_json::to_value(
        client
            .read_resource(ReadResourceRequestParams::new(first_uri.clone()))
            .await
            .unwrap(),
    )
    .unwrap();
    let prompts = serde_json::to_value(client.list_prompts(None).await.unwrap()).unwrap();
    let prompt = serde_json::to_value(
        client
            .get_prompt(GetPromptRequestParams::new("simple-prompt"))
            .await
            .unwrap(),
    )
    .unwrap();
    client.send_request_ping().await.unwrap();
    json!({
        "server": client.peer_info().and_then(|i| i.server_info.as_ref().map(|s| s.name.clone())),
        "tools": tools,
        "echo_non_ascii": call(client, "echo", json!({"message": "héllo wörld — 你好 🌍"})).await,
        "echo_big_len": echo_big["content"][0]["text"].as_str().map(str::len),
        "echo_big_equal": echo_big["content"][0]["text"].as_str().map(|t| t.ends_with(&big)),
        "sum": call(client, "get-sum", json!({"a": 19, "b": 23})).await,
        "sampling": call(client, "trigger-sampling-request", json!({"prompt": "say hi", "maxTokens": 5})).await,
        "roots": call(client, "get-roots-list", json!({})).await,
        "long_running": call(client, "trigger-long-running-operation", json!({"duration": 0.2, "steps": 2})).await,
        "resources": resources,
        "templates": templates,
        "read": read,
        "prompts": prompts,
        "prompt": prompt,
    })
}

trait SendPing {
    async fn send_request_ping(&self) -> Result<(), rmcp::ServiceError>;
}

impl SendPing for Client {
    async fn send_request_ping(&self) -> Result<(), rmcp::ServiceError> {
        self.send_request(rmcp::model::ClientRequest::PingRequest(Default::default()))
            .await
            .map(|_| ())
    }
}

#[tokio::test]
async fn results_through_mcp_meter_equal_results_direct() {
    let proxy = Proxy::wrap(&everything_stdio());
    let direct_client = direct(Recorder::new("client")).await;
    let expected = observe(&direct_client).await;
    direct_client.cancel().await.unwrap();

    let handler = Recorder::new("client");
    let proxied = through(&proxy, handler.clone()).await;
    let got = observe(&proxied).await;
    proxied.cancel().await.unwrap();

    assert_eq!(got, expected);
    // Non-trivial: the server called back into this client through the proxy.
    assert_eq!(handler.samplings.load(Ordering::SeqCst), 1);
    assert!(handler.roots.load(Ordering::SeqCst) >= 1);
    assert!(
        got["sampling"].to_string().contains("client answers"),
        "{}",
        got["sampling"]
    );
    assert_eq!(got["echo_big_equal"], true);
    assert!(got["tools"].as_array().unwrap().len() >= 10);
}

#[tokio::test]
async fn fifty_concurrent_calls_on_one_session_all_get_their_own_answer() {
    let proxy = Proxy::wrap(&everything_stdio());
    let client = Arc::new(through(&proxy, Recorder::new("one")).await);
    let calls = (0..50).map(|i| {
        let client = client.clone();
        async move {
            let sum = call(&client, "get-sum", json!({"a": i, "b": 1000})).await;
            (
                i,
                sum["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    });
    for (i, text) in futures_util::future::join_all(calls).await {
        assert!(
            text.contains(&(i + 1000).to_string()),
            "call {i} got {text:?}"
        );
    }
}

#[tokio::test]
async fn twenty_sessions_at_once_stay_apart() {
    let proxy = Proxy::wrap(&everything_stdio());
    let names: Vec<&'static str> = (0..20)
        .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
        .collect();
    let sessions = names.iter().map(|name| {
        let proxy = &proxy;
        async move {
            let handler = Recorder::new(name);
            let client = through(proxy, handler.clone()).await;
            let sampled = call(
                &client,
                "trigger-sampling-request",
                json!({"prompt": format!("from {name}"), "maxTokens": 5}),
            )
            .await;
            let echoed = call(&client, "echo", json!({"message": name})).await;
            client.cancel().await.unwrap();
            (name, handler, sampled, echoed)
        }
    });
    for (name, handler, sampled, echoed) in futures_util::future::join_all(sessions).await {
        // Each session's sampling request reached that session's client only.
        assert_eq!(handler.samplings.load(Ordering::SeqCst), 1, "{name}");
        assert!(
            sampled.to_string().contains(&format!("{name} answers")),
            "{name}: {sampled}"
        );
        assert!(echoed.to_string().contains(name), "{name}: {echoed}");
    }
}
