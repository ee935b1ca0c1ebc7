//! The MCP protocol as the proxy needs it: the JSON-RPC envelope (defined in
//! the plugin contract and re-exported here), method names, protocol
//! revisions and line framing.
//!
//! Nothing here performs I/O.

pub mod framing;
pub mod methods;
pub mod stateless;
pub mod version;

pub use mcp_meter_plugin::jsonrpc::{
    EnvelopeError, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, Message,
    MessageKind, PARSE_ERROR, RequestId, is_batch, split_batch,
};
