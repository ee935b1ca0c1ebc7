//! mcp-meter: a transparent metering and billing proxy for MCP servers.
//!
//! The binary (`mcp-meter`) is a thin shell over this library: [`cli`] parses
//! the command line, [`config`] loads TOML, [`engine`] holds sessions and the
//! plugin stack, [`transport`] moves bytes to and from clients and the
//! upstream MCP server, and [`protocol`] knows the JSON-RPC envelope and MCP's
//! revisions.
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod demo_upstream;
pub mod engine;
pub mod export;
pub mod metrics;
pub mod protocol;
pub mod run;
pub mod services;
pub mod store;
pub mod stripe;
pub mod transport;
