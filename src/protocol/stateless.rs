//! The stateless revision (2026-07-28) as a proxy meets it on HTTP: how to
//! recognise a stateless request, and the validation ladder every such
//! request passes before any plugin sees it.
//!
//! A 2026-07-28 request carries, instead of a session, its protocol version,
//! client info and client capabilities in `params._meta` under
//! `io.modelcontextprotocol/…`, and mirrors its method (and, for
//! `tools/call`, `prompts/get` and `resources/read`, the tool/prompt name or
//! resource URI) in the `Mcp-Method` / `Mcp-Name` headers. Plugins meter and
//! authorize on what the body says; the ladder guarantees the headers never
//! say something else (error -32020), so an intermediary routing on headers
//! and mcp-meter charging on the body cannot be played against each other.
//!
//! The ladder, first failure wins (as the specification and the official
//! SDKs order it):
//! 1. `params._meta` carries the protocol version and client capabilities
//!    (else -32602 invalid params);
//! 2. `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` agree with the
//!    body (else -32020 header mismatch);
//! 3. the version is one this proxy relays (else -32022, naming the
//!    supported versions so the client can fall back).

use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::version::{HANDSHAKE_REVISIONS, STATELESS_REVISION};
use super::{INVALID_PARAMS, Message, methods};

/// `_meta` key of the request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of the client's capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the client's name and version.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

/// HTTP header mirroring the body's `method`.
pub const METHOD_HEADER: &str = "mcp-method";
/// HTTP header mirroring the body's tool/prompt name or resource URI.
pub const NAME_HEADER: &str = "mcp-name";
/// Prefix of the headers mirroring tool arguments a tool declared with
/// `x-mcp-header`.
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// HTTP header of the protocol version.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// A header does not agree with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// The request needs a client capability the client did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// The requested protocol version is not supported here.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The body parameter mirrored in `Mcp-Name` for `method`, if any.
pub fn name_parameter(method: &str) -> Option<&'static str> {
    match method {
        methods::TOOLS_CALL | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// Whether an HTTP request without a session is meant as a stateless
/// (2026-07-28) request: its `MCP-Protocol-Version` header says so, or its
/// body carries the per-request protocol version in `_meta`.
pub fn is_stateless_request(message: &Message, headers: &HeaderMap) -> bool {
    let header_says = headers
        .get(PROTOCOL_VERSION_HEADER)
        .is_some_and(|v| v.as_bytes() == STATELESS_REVISION.as_bytes());
    header_says || Envelope::read(message).is_some_and(|e| e.protocol_version.is_some())
}

/// What the ladder found wrong: a JSON-RPC error and the HTTP status to send
/// it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The JSON-RPC error code.
    pub code: i64,
    /// A message the client's developer can act on.
    pub message: String,
    /// `error.data`, when the code defines one.
    pub data: Option<serde_json::Value>,
}

impl Rejection {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// -32022 for `requested`, listing what this proxy supports.
    pub fn unsupported_version(requested: &str, supported: &[&str]) -> Self {
        Self {
            code: UNSUPPORTED_PROTOCOL_VERSION,
            message: format!(
                "unsupported protocol version {requested:?}; supported: {}",
                supported.join(", ")
            ),
            data: Some(serde_json::json!({ "supported": supported, "requested": requested })),
        }
    }
}

/// A stateless request that passed the ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatelessRoute {
    /// The protocol version the request is made at.
    pub protocol_version: String,
}

/// Runs the validation ladder over a stateless request and its headers.
pub fn check(message: &Message, headers: &HeaderMap) -> Result<StatelessRoute, Rejection> {
    let envelope = Envelope::read(message).ok_or_else(|| {
        Rejection::new(
            INVALID_PARAMS,
            format!(
                "params._meta must be an object carrying the {META_PROTOCOL_VERSION:?} and {META_CLIENT_CAPABILITIES:?} keys (protocol revision {STATELESS_REVISION} has no session)"
            ),
        )
    })?;
    let mut missing = Vec::new();
    if envelope.protocol_version.is_none() {
        missing.push(META_PROTOCOL_VERSION);
    }
    if !envelope.has_capabilities {
        missing.push(META_CLIENT_CAPABILITIES);
    }
    if !missing.is_empty() {
        return Err(Rejection::new(
            INVALID_PARAMS,
            format!(
                "params._meta is missing the required key(s): {}",
                missing.join(", ")
            ),
        ));
    }
    let version_value = envelope.protocol_version.unwrap_or_default();
    let version: Option<String> = serde_json::from_str(version_value).ok();
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    if header(PROTOCOL_VERSION_HEADER) != version.as_deref().map(str::as_bytes) {
        return Err(Rejection::new(
            HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match params._meta's protocol version",
        ));
    }
    let method = message.method().unwrap_or_default();
    if header(METHOD_HEADER) != Some(method.as_bytes()) {
        return Err(Rejection::new(
            HEADER_MISMATCH,
            format!("the Mcp-Method header does not match the request body's method {method:?}"),
        ));
    }
    if let Some(key) = name_parameter(method)
        && let Some(body_value) = envelope.named.get(key).and_then(|v| v.as_deref())
    {
        let decoded = headers
            .get(NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(decode_header_value);
        if decoded.as_deref() != Some(body_value) {
            return Err(Rejection::new(
                HEADER_MISMATCH,
                format!("the Mcp-Name header does not match the request body's {key:?}"),
            ));
        }
    }
    let Some(version) = version else {
        return Err(Rejection::new(
            INVALID_PARAMS,
            "the protocol version in params._meta must be a string",
        ));
    };
    if version != STATELESS_REVISION {
        let mut supported: Vec<&str> = HANDSHAKE_REVISIONS.to_vec();
        supported.push(STATELESS_REVISION);
        return Err(Rejection::unsupported_version(&version, &supported));
    }
    Ok(StatelessRoute {
        protocol_version: version,
    })
}

/// The HTTP status for an error a stateless exchange ends with, as the
/// specification maps them; other codes travel in a `200` answer.
pub fn http_status_for(code: i64) -> http::StatusCode {
    match code {
        super::PARSE_ERROR
        | super::INVALID_REQUEST
        | INVALID_PARAMS
        | HEADER_MISMATCH
        | MISSING_REQUIRED_CLIENT_CAPABILITY
        | UNSUPPORTED_PROTOCOL_VERSION => http::StatusCode::BAD_REQUEST,
        super::METHOD_NOT_FOUND => http::StatusCode::NOT_FOUND,
        _ => http::StatusCode::OK,
    }
}

/// Whether `name` is a header a stateless request carries for the upstream
/// (the version, the method, the name and tool-parameter mirrors).
pub fn is_forwarded_header(name: &str) -> bool {
    name == PROTOCOL_VERSION_HEADER
        || name == METHOD_HEADER
        || name == NAME_HEADER
        || name.starts_with(PARAM_HEADER_PREFIX)
}

/// Decodes an `Mcp-Name`/`Mcp-Param-*` value: verbatim, unless wrapped as
/// `=?base64?…?=` (how non-ASCII values travel), then the UTF-8 it encodes.
/// A malformed wrapper decodes to nothing, so it never matches a body.
pub fn decode_header_value(value: &str) -> Option<String> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    // Only the canonical encoding counts, as the encoder only emits that.
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The parts of a request's params the ladder reads.
struct Envelope<'a> {
    protocol_version: Option<&'a str>,
    has_capabilities: bool,
    named: std::collections::HashMap<&'static str, Option<String>>,
}

impl<'a> Envelope<'a> {
    /// `None` when `params._meta` is absent or not an object.
    fn read(message: &'a Message) -> Option<Self> {
        #[derive(Deserialize)]
        struct Params<'b> {
            #[serde(rename = "_meta", borrow)]
            meta: Option<&'b RawValue>,
            #[serde(default)]
            name: Option<serde_json::Value>,
            #[serde(default)]
            uri: Option<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Meta<'b> {
            #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
            protocol_version: Option<&'b RawValue>,
            #[serde(rename = "io.modelcontextprotocol/clientCapabilities", borrow)]
            capabilities: Option<&'b RawValue>,
        }
        let params: Params<'a> = serde_json::from_str(message.params()?.get()).ok()?;
        let meta_raw = params.meta?;
        if !meta_raw.get().starts_with('{') {
            return None;
        }
        let meta: Meta<'a> = serde_json::from_str(meta_raw.get()).ok()?;
        let as_text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let mut named = std::collections::HashMap::new();
        named.insert("name", as_text(params.name));
        named.insert("uri", as_text(params.uri));
        Some(Self {
            protocol_version: meta.protocol_version.map(RawValue::get),
            has_capabilities: meta.capabilities.is_some(),
            named,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;

    fn message(json: serde_json::Value) -> Message {
        Message::parse(Bytes::from(json.to_string())).unwrap()
    }

    fn call(name: &str) -> Message {
        message(
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name": name, "arguments": {},
            "_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}}}}),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        (PROTOCOL_VERSION_HEADER, "2026-07-28"),
        (METHOD_HEADER, "tools/call"),
        (NAME_HEADER, "echo"),
    ];

    #[test]
    fn a_consistent_request_passes() {
        assert_eq!(
            check(&call("echo"), &headers(GOOD))
                .unwrap()
                .protocol_version,
            "2026-07-28"
        );
    }

    #[test]
    fn headers_that_contradict_the_body_are_header_mismatch() {
        for (bad, which) in [
            ((METHOD_HEADER, "tools/list"), "Mcp-Method"),
            ((NAME_HEADER, "free_tool"), "Mcp-Name"),
            (
                (PROTOCOL_VERSION_HEADER, "2025-11-25"),
                "MCP-Protocol-Version",
            ),
        ] {
            let mut pairs: Vec<(&'static str, &str)> =
                GOOD.iter().filter(|(k, _)| *k != bad.0).copied().collect();
            pairs.push(bad);
            let rejection = check(&call("echo"), &headers(&pairs)).unwrap_err();
            assert_eq!(rejection.code, HEADER_MISMATCH, "{which}");
            assert!(rejection.message.contains(which), "{}", rejection.message);
        }
        // A missing name header is a mismatch too.
        let pairs: Vec<_> = GOOD
            .iter()
            .filter(|(k, _)| *k != NAME_HEADER)
            .copied()
            .collect();
        assert_eq!(
            check(&call("echo"), &headers(&pairs)).unwrap_err().code,
            HEADER_MISMATCH
        );
    }

    #[test]
    fn non_ascii_names_travel_base64_wrapped() {
        let name = "überprüfe_𝔁";
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        );
        let mut pairs: Vec<(&'static str, &str)> = GOOD[..2].to_vec();
        pairs.push((NAME_HEADER, &encoded));
        assert!(check(&call(name), &headers(&pairs)).is_ok());
        assert_eq!(decode_header_value("=?base64?!!?="), None);
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
    }

    #[test]
    fn the_envelope_is_required() {
        let bare =
            message(serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}));
        assert_eq!(
            check(&bare, &headers(GOOD)).unwrap_err().code,
            INVALID_PARAMS
        );
        let no_caps = message(
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list",
            "params":{"_meta":{META_PROTOCOL_VERSION:"2026-07-28"}}}),
        );
        let rejection = check(&no_caps, &headers(GOOD)).unwrap_err();
        assert_eq!(rejection.code, INVALID_PARAMS);
        assert!(rejection.message.contains(META_CLIENT_CAPABILITIES));
    }

    #[test]
    fn an_unknown_version_names_the_supported_ones() {
        let future = message(
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"server/discover",
            "params":{"_meta":{META_PROTOCOL_VERSION:"2099-01-01", META_CLIENT_CAPABILITIES:{}}}}),
        );
        let h = headers(&[
            (PROTOCOL_VERSION_HEADER, "2099-01-01"),
            (METHOD_HEADER, "server/discover"),
        ]);
        let rejection = check(&future, &h).unwrap_err();
        assert_eq!(rejection.code, UNSUPPORTED_PROTOCOL_VERSION);
        let data = rejection.data.unwrap();
        assert_eq!(data["requested"], "2099-01-01");
        assert!(
            data["supported"]
                .as_array()
                .unwrap()
                .contains(&"2026-07-28".into())
        );
        assert_eq!(
            http_status_for(rejection.code),
            http::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn recognition() {
        assert!(is_stateless_request(&call("echo"), &HeaderMap::new()));
        let plain = message(serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
        assert!(!is_stateless_request(&plain, &HeaderMap::new()));
        assert!(is_stateless_request(
            &plain,
            &headers(&[(PROTOCOL_VERSION_HEADER, "2026-07-28")])
        ));
    }
}
