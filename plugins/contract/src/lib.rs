//! The plugin contract of mcp-meter.
//!
//! Every built-in plugin (and any plugin a Rust user writes) is a
//! [`tower::Layer`] over one service shape:
//!
//! ```text
//! Service<McpRequest, Response = McpResponse, Error = ProxyError>
//! ```
//!
//! This crate holds that shape and nothing that knows about transports, HTTP
//! frameworks or databases: the JSON-RPC envelope ([`jsonrpc`]), the request a
//! layer sees ([`McpRequest`]), the answer it returns ([`McpResponse`]), the
//! faults the proxy itself can raise ([`ProxyError`]) and the [`Plugin`] trait the
//! engine uses to stack layers in the order the configuration gives.
//!
//! A refusal is never an `Err`: a layer that refuses a call answers with an
//! [`McpResponse`] carrying a JSON-RPC error the client can act on. `Err` is for
//! faults of the proxy or the upstream (the upstream exited, a timeout).
//!
//! ```
//! use mcp_meter_plugin::{jsonrpc::Message, McpRequest, McpResponse, ProxyError, BoxMcpService};
//! use tower::{ServiceExt, service_fn};
//!
//! # tokio_test_block_on(async {
//! // The innermost service of a stack: here a fake that echoes the params.
//! let upstream = BoxMcpService::new(service_fn(|req: McpRequest| async move {
//!     let id = req.message.id().cloned().expect("requests have ids");
//!     Ok::<_, ProxyError>(McpResponse::result(&id, req.message.params().unwrap()))
//! }));
//! let msg = Message::parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#.as_slice().into()).unwrap();
//! let response = upstream.oneshot(McpRequest::new(msg)).await.unwrap();
//! assert_eq!(&response.message.as_bytes()[..], br#"{"jsonrpc":"2.0","id":7,"result":{"name":"echo"}}"#);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
#![warn(missing_docs, unreachable_pub)]

mod error;
pub mod identity;
pub mod jsonrpc;
pub mod ledger;
pub mod outbox;
mod plugin;
pub mod ports;
mod request;
mod response;
pub mod subscription;

pub use error::ProxyError;
pub use plugin::{BoxMcpService, LayerPlugin, Plugin};
pub use request::{Credentials, McpRequest, SessionId, SessionInfo, TransportKind};
pub use response::{CallOutcome, McpResponse};
