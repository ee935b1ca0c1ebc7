//! The JSON-RPC 2.0 envelope, parsed once and never into a full tree.
//!
//! A [`Message`] keeps the exact bytes it was parsed from and the byte ranges of
//! its `id`, `params`, `result` and `error` members, so a proxy can route on the
//! envelope and forward the original bytes unchanged. Request ids keep their
//! exact JSON text (`7`, `"abc"`), whatever their type.
//!
//! This module must never allocate a `serde_json::Value` for a message on the
//! hot path: callers that need a member parse that member's raw text themselves.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// JSON-RPC error code: invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC error code: the JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error code: the method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC error code: invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC error code: internal error.
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC request id, kept as its exact JSON text (a number or a string).
///
/// Two ids are equal when their JSON text is equal, so `1` and `"1"` are
/// different ids, as JSON-RPC requires.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Builds an id from a JSON number.
    pub fn number(n: i64) -> Self {
        Self(Arc::from(n.to_string()))
    }

    /// Builds an id from a string (JSON-escaped here).
    pub fn string(s: &str) -> Self {
        Self(Arc::from(
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
        ))
    }

    /// Builds an id from raw JSON text that is already known to be a number or
    /// a string.
    pub fn from_json_text(text: &str) -> Result<Self, EnvelopeError> {
        let first = text.as_bytes().first().copied();
        match first {
            Some(b'"') | Some(b'-') | Some(b'0'..=b'9') => Ok(Self(Arc::from(text))),
            _ => Err(EnvelopeError::InvalidRequest(
                "\"id\" must be a string or a number".into(),
            )),
        }
    }

    /// The id's JSON text, exactly as the peer sent it.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The id as a plain string: a string id without its quotes and escapes,
    /// a number as its text. For display and headers, not for routing.
    pub fn to_plain_string(&self) -> String {
        if self.0.starts_with('"') {
            serde_json::from_str::<String>(&self.0).unwrap_or_else(|_| self.0.to_string())
        } else {
            self.0.to_string()
        }
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of JSON-RPC message an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request: `method` and `id`.
    Request,
    /// A notification: `method`, no `id`.
    Notification,
    /// A successful response: `id` and `result`.
    Response,
    /// An error response: `id` (possibly `null`) and `error`.
    ErrorResponse,
}

/// Why bytes could not be read as a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not JSON at all.
    #[error("parse error: {0}")]
    Parse(String),
    /// The bytes are JSON but not a JSON-RPC 2.0 message.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl EnvelopeError {
    /// The JSON-RPC error code that answers this problem.
    pub fn code(&self) -> i64 {
        match self {
            EnvelopeError::Parse(_) => PARSE_ERROR,
            EnvelopeError::InvalidRequest(_) => INVALID_REQUEST,
        }
    }
}

/// One JSON-RPC message: the original bytes plus where its members are.
#[derive(Clone)]
pub struct Message {
    raw: Bytes,
    kind: MessageKind,
    id: Option<RequestId>,
    method: Option<Box<str>>,
    params: Option<Range<usize>>,
    result: Option<Range<usize>>,
    error: Option<Range<usize>>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    /// Kept as raw text even when it is `null`, so a `null` id can be told
    /// apart from a missing one.
    #[serde(borrow, default, deserialize_with = "present_raw")]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

fn present_raw<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue as Deserialize<'de>>::deserialize(deserializer).map(Some)
}

fn range_in(base: &[u8], part: &RawValue) -> Range<usize> {
    let start = part.get().as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.get().len()
}

/// Whether bytes hold a JSON array (a JSON-RPC batch), judged by the first
/// non-whitespace byte.
pub fn is_batch(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// Splits a JSON array of messages into the raw bytes of each element.
pub fn split_batch(bytes: &Bytes) -> Result<Vec<Bytes>, EnvelopeError> {
    let items: Vec<&RawValue> = serde_json::from_slice(bytes).map_err(|e| {
        if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() {
            EnvelopeError::InvalidRequest(format!("batch is not an array of objects: {e}"))
        } else {
            EnvelopeError::Parse(e.to_string())
        }
    })?;
    Ok(items
        .into_iter()
        .map(|item| bytes.slice(range_in(bytes, item)))
        .collect())
}

impl Message {
    /// Parses one JSON-RPC message (not a batch) from bytes, keeping them.
    pub fn parse(raw: Bytes) -> Result<Self, EnvelopeError> {
        let wire: Wire<'_> = match serde_json::from_slice(&raw) {
            Ok(wire) => wire,
            Err(e) => {
                return Err(if serde_json::from_slice::<IgnoredAny>(&raw).is_ok() {
                    EnvelopeError::InvalidRequest("a JSON-RPC message must be a JSON object".into())
                } else {
                    EnvelopeError::Parse(e.to_string())
                });
            }
        };
        match wire.jsonrpc.map(RawValue::get) {
            Some("\"2.0\"") => {}
            _ => {
                return Err(EnvelopeError::InvalidRequest(
                    "\"jsonrpc\" must be \"2.0\"".into(),
                ));
            }
        }
        let method = match wire.method {
            None => None,
            Some(m) => Some(
                serde_json::from_str::<String>(m.get())
                    .map_err(|_| {
                        EnvelopeError::InvalidRequest("\"method\" must be a string".into())
                    })?
                    .into_boxed_str(),
            ),
        };
        let id = match wire.id.map(RawValue::get) {
            None => None,
            Some("null") if method.is_none() && wire.error.is_some() => None,
            Some(text) => Some(RequestId::from_json_text(text)?),
        };
        if let Some(p) = wire.params {
            let first = p.get().as_bytes().first().copied();
            if !matches!(first, Some(b'{') | Some(b'[')) {
                return Err(EnvelopeError::InvalidRequest(
                    "\"params\" must be an object or an array".into(),
                ));
            }
        }
        let kind = match (&method, &id, wire.result, wire.error) {
            (Some(_), Some(_), None, None) => MessageKind::Request,
            (Some(_), None, None, None) => MessageKind::Notification,
            (None, Some(_), Some(_), None) => MessageKind::Response,
            (None, _, None, Some(_)) => MessageKind::ErrorResponse,
            (None, None, Some(_), None) => {
                return Err(EnvelopeError::InvalidRequest(
                    "a response needs an \"id\"".into(),
                ));
            }
            (None, _, None, None) => {
                return Err(EnvelopeError::InvalidRequest(
                    "not a JSON-RPC message: no \"method\", \"result\" or \"error\"".into(),
                ));
            }
            (None, _, Some(_), Some(_)) => {
                return Err(EnvelopeError::InvalidRequest(
                    "a response has either \"result\" or \"error\", not both".into(),
                ));
            }
            (Some(_), _, _, _) => {
                return Err(EnvelopeError::InvalidRequest(
                    "a request cannot carry \"result\" or \"error\"".into(),
                ));
            }
        };
        let params = wire.params.map(|p| range_in(&raw, p));
        let result = wire.result.map(|p| range_in(&raw, p));
        let error = wire.error.map(|p| range_in(&raw, p));
        Ok(Self {
            kind,
            id,
            method,
            params,
            result,
            error,
            raw,
        })
    }

    /// Builds a message from a JSON value (for messages the proxy writes itself).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, EnvelopeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| EnvelopeError::Parse(e.to_string()))?;
        Self::parse(Bytes::from(bytes))
    }

    /// A request the proxy sends itself.
    pub fn request(id: &RequestId, method: &str, params: Option<&RawValue>) -> Self {
        let mut out = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":{}",
            id.as_json(),
            json_string(method)
        );
        if let Some(p) = params {
            out.push_str(",\"params\":");
            out.push_str(p.get());
        }
        out.push('}');
        Self::parse_trusted(out)
    }

    /// A notification the proxy sends itself.
    pub fn notification(method: &str, params: Option<&RawValue>) -> Self {
        let mut out = format!("{{\"jsonrpc\":\"2.0\",\"method\":{}", json_string(method));
        if let Some(p) = params {
            out.push_str(",\"params\":");
            out.push_str(p.get());
        }
        out.push('}');
        Self::parse_trusted(out)
    }

    /// A success response with the given raw result.
    pub fn result_response(id: &RequestId, result: &RawValue) -> Self {
        Self::parse_trusted(format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{}}}",
            id.as_json(),
            result.get()
        ))
    }

    /// An error response. `id` is `None` when the request's id could not be
    /// read (the JSON-RPC `null` id).
    pub fn error_response(
        id: Option<&RequestId>,
        code: i64,
        message: &str,
        data: Option<&serde_json::Value>,
    ) -> Self {
        let mut out = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{}",
            id.map_or("null", RequestId::as_json),
            json_string(message)
        );
        if let Some(data) = data {
            out.push_str(",\"data\":");
            out.push_str(&serde_json::to_string(data).unwrap_or_else(|_| "null".into()));
        }
        out.push_str("}}");
        Self::parse_trusted(out)
    }

    fn parse_trusted(text: String) -> Self {
        match Self::parse(Bytes::from(text)) {
            Ok(message) => message,
            // Every caller builds well-formed JSON from escaped parts; reaching
            // this arm is a bug in this module, so fail loudly in debug builds
            // and degrade to a generic internal error in release builds.
            Err(e) => {
                debug_assert!(false, "built an invalid message: {e}");
                Self::parse(Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#,
                ))
                .unwrap_or_else(|_| unreachable!("static message is valid"))
            }
        }
    }

    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// Whether this is a request (has a method and an id).
    pub fn is_request(&self) -> bool {
        self.kind == MessageKind::Request
    }

    /// Whether this is a notification.
    pub fn is_notification(&self) -> bool {
        self.kind == MessageKind::Notification
    }

    /// Whether this is a response (success or error).
    pub fn is_response(&self) -> bool {
        matches!(
            self.kind,
            MessageKind::Response | MessageKind::ErrorResponse
        )
    }

    /// The request id (requests and responses).
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The method (requests and notifications).
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    fn slice(&self, range: &Option<Range<usize>>) -> Option<&RawValue> {
        let range = range.clone()?;
        let text = std::str::from_utf8(&self.raw[range]).ok()?;
        serde_json::from_str::<&RawValue>(text).ok()
    }

    /// The raw `params`, if any.
    pub fn params(&self) -> Option<&RawValue> {
        self.slice(&self.params)
    }

    /// The raw `result`, if any.
    pub fn result(&self) -> Option<&RawValue> {
        self.slice(&self.result)
    }

    /// The raw `error`, if any.
    pub fn error(&self) -> Option<&RawValue> {
        self.slice(&self.error)
    }

    /// The error's `code`, for an error response.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(Deserialize)]
        struct Code {
            code: i64,
        }
        serde_json::from_str::<Code>(self.error()?.get())
            .ok()
            .map(|c| c.code)
    }

    /// The exact bytes this message was parsed from.
    pub fn as_bytes(&self) -> &Bytes {
        &self.raw
    }

    /// The message's size in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the message is empty (never true for a parsed message).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The same message with another id (the bytes are rebuilt around the
    /// unchanged members). Used where the proxy multiplexes several peers'
    /// requests onto one connection.
    pub fn with_id(&self, id: &RequestId) -> Self {
        if self.id.is_none() {
            return self.clone();
        }
        let text = String::from_utf8_lossy(&self.raw);
        // Re-emit the envelope in a canonical order; members stay raw.
        let mut out = format!("{{\"jsonrpc\":\"2.0\",\"id\":{}", id.as_json());
        if let Some(m) = &self.method {
            out.push_str(",\"method\":");
            out.push_str(&json_string(m));
        }
        for (name, range) in [
            ("params", &self.params),
            ("result", &self.result),
            ("error", &self.error),
        ] {
            if let Some(r) = range {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(&text[r.clone()]);
            }
        }
        out.push('}');
        Self::parse_trusted(out)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("method", &self.method)
            .field("len", &self.raw.len())
            .finish()
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, EnvelopeError> {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn request_keeps_exact_bytes_and_members() {
        let text = r#"{"jsonrpc":"2.0", "id":"a\"b", "method":"tools/call","params":{"name":"echo","arguments":{"x":1.50}}}"#;
        let m = parse(text).unwrap();
        assert_eq!(m.kind(), MessageKind::Request);
        assert_eq!(m.id().unwrap().as_json(), r#""a\"b""#);
        assert_eq!(m.id().unwrap().to_plain_string(), "a\"b");
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(
            m.params().unwrap().get(),
            r#"{"name":"echo","arguments":{"x":1.50}}"#
        );
        assert_eq!(m.as_bytes().as_ref(), text.as_bytes());
    }

    #[test]
    fn number_ids_keep_their_text() {
        let m = parse(r#"{"jsonrpc":"2.0","id":12345678901234567890,"method":"ping"}"#).unwrap();
        assert_eq!(m.id().unwrap().as_json(), "12345678901234567890");
        assert_ne!(RequestId::number(1), RequestId::string("1"));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .kind(),
            MessageKind::Notification
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
                .unwrap()
                .kind(),
            MessageKind::Response
        );
        let e =
            parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).unwrap();
        assert_eq!(e.kind(), MessageKind::ErrorResponse);
        assert_eq!(e.error_code(), Some(-32700));
        assert!(e.id().is_none());
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        assert_eq!(parse("{\"jsonrpc\":").unwrap_err().code(), PARSE_ERROR);
        assert_eq!(parse("not json").unwrap_err().code(), PARSE_ERROR);
    }

    #[test]
    fn json_that_is_not_jsonrpc_is_invalid_request() {
        for bad in [
            "42",
            "\"x\"",
            r#"{"hello":1}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn batches_split_into_their_elements() {
        let bytes = Bytes::from_static(
            br#" [ {"jsonrpc":"2.0","id":1,"method":"ping"} ,{"jsonrpc":"2.0","method":"x"}]"#,
        );
        assert!(is_batch(&bytes));
        let items = split_batch(&bytes).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(&items[1][..], br#"{"jsonrpc":"2.0","method":"x"}"#);
        assert_eq!(
            split_batch(&Bytes::from_static(b"[1,")).unwrap_err().code(),
            PARSE_ERROR
        );
    }

    #[test]
    fn built_messages_are_valid() {
        let id = RequestId::string("x\"y");
        let e = Message::error_response(
            Some(&id),
            -32001,
            "timed \"out\"",
            Some(&serde_json::json!({"a":1})),
        );
        assert_eq!(e.error_code(), Some(-32001));
        assert_eq!(e.id(), Some(&id));
        let n = Message::notification(
            "notifications/cancelled",
            Some(&RawValue::from_string(r#"{"requestId":1}"#.into()).unwrap()),
        );
        assert!(n.is_notification());
        let r = parse(r#"{"jsonrpc":"2.0","id":5,"method":"ping","params":{}}"#).unwrap();
        let moved = r.with_id(&RequestId::number(9));
        assert_eq!(
            moved.as_bytes().as_ref(),
            br#"{"jsonrpc":"2.0","id":9,"method":"ping","params":{}}"#
        );
    }
}
