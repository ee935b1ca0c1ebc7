//! The request a plugin sees: one client→server JSON-RPC request plus what the
//! transport knows about who sent it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap};
use serde::Deserialize;

use crate::jsonrpc::Message;

/// The id of a downstream MCP session (the `Mcp-Session-Id` on HTTP, or one
/// id per `wrap --stdio` process).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// Wraps an id string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which downstream transport a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Streamable HTTP (`POST /mcp`).
    Http,
    /// stdio (`mcp-meter wrap --stdio`).
    Stdio,
}

/// What the downstream session knows at the time of the request.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id; `None` for a stateless (2026-07-28) HTTP request.
    pub id: Option<SessionId>,
    /// The transport the request came in on.
    pub transport: TransportKind,
    /// The MCP protocol revision in force for this request, once known.
    pub protocol_version: Option<Arc<str>>,
}

/// The credentials a transport carries, for an auth plugin to check.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The HTTP request headers (empty on stdio).
    pub headers: HeaderMap,
    /// A key given to a stdio wrapper (`--api-key` / `MCP_METER_API_KEY`).
    pub api_key: Option<Arc<str>>,
}

/// One client→server request on its way through the plugin stack.
#[derive(Debug)]
pub struct McpRequest {
    /// The JSON-RPC request, its bytes untouched.
    pub message: Message,
    /// The session it belongs to.
    pub session: SessionInfo,
    /// The transport's credentials.
    pub credentials: Credentials,
    /// Typed values that earlier layers leave for later ones (the customer,
    /// the plan, a billing reservation) and that the transport leaves for
    /// the innermost service.
    pub extensions: Extensions,
    target: Option<Box<str>>,
}

#[derive(Deserialize)]
struct TargetParams<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
}

impl McpRequest {
    /// Wraps a request message with an empty context (a stdio session with no
    /// id): transports fill in [`McpRequest::session`] and
    /// [`McpRequest::credentials`].
    pub fn new(message: Message) -> Self {
        let target = message_target(&message);
        Self {
            message,
            session: SessionInfo {
                id: None,
                transport: TransportKind::Stdio,
                protocol_version: None,
            },
            credentials: Credentials::default(),
            extensions: Extensions::new(),
            target,
        }
    }

    /// The JSON-RPC method.
    pub fn method(&self) -> &str {
        self.message.method().unwrap_or_default()
    }

    /// The tool a `tools/call` names; `None` for other methods.
    pub fn tool_name(&self) -> Option<&str> {
        (self.method() == "tools/call")
            .then_some(self.target.as_deref())
            .flatten()
    }

    /// What the request is about: the tool name (`tools/call`), the prompt
    /// name (`prompts/get`) or the resource URI (`resources/read`,
    /// `resources/subscribe`, `resources/unsubscribe`). This is the value
    /// MCP 2026-07-28 mirrors in the `Mcp-Name` HTTP header.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }
}

/// The target a method names in its params, read once from the raw params.
pub(crate) fn message_target(message: &Message) -> Option<Box<str>> {
    let field_is_uri = match message.method()? {
        "tools/call" | "prompts/get" => false,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => true,
        _ => return None,
    };
    let params: TargetParams<'_> = serde_json::from_str(message.params()?.get()).ok()?;
    let value = if field_is_uri {
        params.uri
    } else {
        params.name
    };
    value.map(|v| v.into_owned().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(s: &'static str) -> McpRequest {
        McpRequest::new(Message::parse(Bytes::from_static(s.as_bytes())).unwrap())
    }

    #[test]
    fn tool_name_is_read_from_tools_call_only() {
        let r = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"name":"no"},"name":"sea\u0072ch"}}"#,
        );
        assert_eq!(r.tool_name(), Some("search"));
        let p = req(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}"#);
        assert_eq!(p.tool_name(), None);
        assert_eq!(p.target(), Some("greet"));
        let res = req(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        );
        assert_eq!(res.target(), Some("file:///a"));
        assert_eq!(
            req(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#).tool_name(),
            None
        );
    }
}
