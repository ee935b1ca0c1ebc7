//! Transports: how bytes reach the proxy from clients (downstream) and how
//! they reach the MCP server (upstream). One file per transport and
//! direction. Transports move messages; routing and policy live in
//! [`crate::engine`].

pub mod access_log;
pub mod http_downstream;
pub mod http_stateless;
pub mod http_upstream;
mod lines;
pub mod origin;
pub mod stdio_downstream;
pub mod stdio_upstream;

use crate::protocol::{Message, RequestId};

/// Something that happened on an upstream connection, delivered to the
/// session that owns it.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A message from the MCP server.
    Message {
        /// The message.
        message: Message,
        /// The client request it was sent in reply to, when the transport
        /// knows (an HTTP upstream's POST response stream).
        related: Option<RequestId>,
    },
    /// The stdio child exited.
    Exited {
        /// Which child (a session restarts children; stale events are ignored).
        generation: u64,
        /// The exit status as text.
        status: String,
    },
    /// The HTTP upstream no longer knows our session (`404`).
    SessionExpired,
}
