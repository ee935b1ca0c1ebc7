//! The built-in demo MCP server behind `mcp-meter demo`.
//!
//! `mcp-meter demo` launches `mcp-meter demo-upstream` as a real child process
//! and proxies it, so the quickstart exercises the same stdio upstream path as
//! any operator's server. It is also the fast upstream the benchmark measures
//! against. It speaks MCP over stdin/stdout (built on the `rmcp` SDK) and never
//! writes anything else to stdout.
//!
//! Tools:
//! * `echo` — returns its `message` unchanged;
//! * `add` — adds two integers (an overflow is a tool error, not a wrong sum);
//! * `slow` — waits `steps` × `delay_ms`, sending a progress notification after
//!   each step when the caller asked for progress;
//! * `fail` — always answers with a tool error (`isError: true`), for trying
//!   out how failed calls are logged and, later, not charged.

use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, RequestMetaObject,
    ServerCapabilities, ServerConfig,
};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The name the demo server reports in `serverInfo`.
pub const SERVER_NAME: &str = "mcp-meter-demo-upstream";

/// The most steps `slow` accepts, so a typo cannot tie up a session for hours.
const MAX_STEPS: u32 = 100;
/// The longest pause between two steps of `slow`.
const MAX_DELAY_MS: u64 = 10_000;

/// Why the demo server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DemoUpstreamError {
    /// The MCP session on stdin/stdout could not start (no valid `initialize`).
    #[error("the demo upstream could not start its MCP session: {0}")]
    Start(String),
    /// The MCP session ended abnormally.
    #[error("the demo upstream's MCP session failed: {0}")]
    Session(#[from] tokio::task::JoinError),
}

/// Arguments of `echo`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    pub message: String,
}

/// Arguments of `add`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddArgs {
    /// The first addend.
    pub a: i64,
    /// The second addend.
    pub b: i64,
}

/// Arguments of `slow`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SlowArgs {
    /// How many steps to take (at most 100; default 5).
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Milliseconds to wait per step (at most 10000; default 200).
    #[serde(default = "default_delay_ms")]
    pub delay_ms: u64,
}

fn default_steps() -> u32 {
    5
}

fn default_delay_ms() -> u64 {
    200
}

/// Arguments of `fail`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FailArgs {
    /// The error text to return (default "this tool always fails").
    #[serde(default)]
    pub message: Option<String>,
}

/// The demo MCP server.
#[derive(Debug, Clone)]
pub struct DemoServer {
    tool_router: ToolRouter<Self>,
}

impl Default for DemoServer {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_router]
impl DemoServer {
    /// A demo server with its four tools.
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Returns the message unchanged.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(args.message)])
    }

    #[tool(description = "Adds two integers.")]
    async fn add(&self, Parameters(args): Parameters<AddArgs>) -> CallToolResult {
        match args.a.checked_add(args.b) {
            Some(sum) => CallToolResult::success(vec![ContentBlock::text(sum.to_string())]),
            None => CallToolResult::error(vec![ContentBlock::text(format!(
                "{} + {} does not fit in a 64-bit integer",
                args.a, args.b
            ))]),
        }
    }

    #[tool(
        description = "Waits steps × delay_ms milliseconds, reporting progress after each step."
    )]
    async fn slow(
        &self,
        Parameters(args): Parameters<SlowArgs>,
        meta: RequestMetaObject,
        client: Peer<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        if args.steps > MAX_STEPS || args.delay_ms > MAX_DELAY_MS {
            return Err(ErrorData::invalid_params(
                format!("steps must be at most {MAX_STEPS} and delay_ms at most {MAX_DELAY_MS}"),
                None,
            ));
        }
        let token = meta.get_progress_token();
        for step in 1..=args.steps {
            tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(args.steps))
                    .with_message(format!("step {step} of {}", args.steps));
                // A client that went away is not an error of this tool.
                let _ = client.notify_progress(progress).await;
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "done after {} steps",
            args.steps
        ))]))
    }

    #[tool(description = "Always fails with a tool error (isError: true).")]
    async fn fail(&self, Parameters(args): Parameters<FailArgs>) -> CallToolResult {
        let message = args
            .message
            .unwrap_or_else(|| "this tool always fails".to_owned());
        CallToolResult::error(vec![ContentBlock::text(message)])
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions("mcp-meter's demo server: echo, add, slow (with progress) and fail.")
    }
}

/// Serves the demo server on this process's stdin/stdout until stdin closes.
pub async fn run_stdio() -> Result<(), DemoUpstreamError> {
    let running = DemoServer::new()
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(|e| DemoUpstreamError::Start(e.to_string()))?;
    running.waiting().await?;
    Ok(())
}
