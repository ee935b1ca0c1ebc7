//! Which requests are the same logical call. A client that repeats a
//! request (same id, same parameters, same session) is retrying the same
//! call, which must not be charged twice; anything else is a new call.
//! Without a session (stateless requests) requests cannot be told apart,
//! so each is its own call — except a request that resumes a call with the
//! `requestState` the server gave it (2026-07-28 `input_required`): its key
//! is its customer, method and whole params, with no session or id, so a
//! retry of the resumption is the same call on any connection, while a
//! resumption with other answers or arguments is not.

use mcp_meter_plugin::McpRequest;
use mcp_meter_plugin::identity::{CallId, CustomerId};
use mcp_meter_plugin::ledger::ChargeKey;
use sha2::{Digest, Sha256};

use crate::meta::TopLevel;

/// The charge key of `request` by `customer`; `call_id` names calls that
/// have no session.
pub(crate) fn charge_key(
    request: &McpRequest,
    customer: &CustomerId,
    call_id: &CallId,
) -> ChargeKey {
    let params = request.message.params().map_or("", |p| p.get());
    if resumes_a_call(request) {
        return hashed("rs:", &[customer.as_str(), request.method(), params]);
    }
    let (Some(session), Some(id)) = (&request.session.id, request.message.id()) else {
        return ChargeKey::new(format!("call:{call_id}"));
    };
    hashed(
        "req:",
        &[
            customer.as_str(),
            session.as_str(),
            id.as_json(),
            request.method(),
            params,
        ],
    )
}

/// Whether the request's params carry a `requestState` (checked on the raw
/// bytes first).
fn resumes_a_call(request: &McpRequest) -> bool {
    request.message.params().is_some_and(|params| {
        params.get().contains("requestState")
            && TopLevel::parse(params).is_some_and(|top| top.get("requestState").is_some())
    })
}

/// `prefix` and the hex SHA-256 of the length-prefixed `parts` (so parts
/// cannot run into each other).
fn hashed(prefix: &str, parts: &[&str]) -> ChargeKey {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(prefix.len() + 64);
    key.push_str(prefix);
    for byte in hash.finalize() {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    ChargeKey::new(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::SessionId;
    use mcp_meter_plugin::jsonrpc::Message;

    fn request(session: Option<&str>, body: &str) -> McpRequest {
        let mut r = McpRequest::new(Message::parse(body.to_owned().into()).unwrap());
        r.session.id = session.map(SessionId::new);
        r
    }

    #[test]
    fn a_repeat_is_the_same_call_and_anything_else_is_not() {
        let cus = CustomerId::new("cus_a");
        let call = CallId::new("call_1");
        let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;
        let a = charge_key(&request(Some("s1"), body), &cus, &call);
        assert_eq!(
            a,
            charge_key(&request(Some("s1"), body), &cus, &CallId::new("call_2"))
        );
        assert_ne!(a, charge_key(&request(Some("s2"), body), &cus, &call));
        assert_ne!(
            a,
            charge_key(&request(Some("s1"), body), &CustomerId::new("cus_b"), &call)
        );
        let other_id =
            r#"{"jsonrpc":"2.0","id":"7","method":"tools/call","params":{"name":"echo"}}"#;
        assert_ne!(a, charge_key(&request(Some("s1"), other_id), &cus, &call));
        let other_args =
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo2"}}"#;
        assert_ne!(a, charge_key(&request(Some("s1"), other_args), &cus, &call));
        assert_eq!(
            charge_key(&request(None, body), &cus, &call).as_str(),
            "call:call_1"
        );
    }

    #[test]
    fn a_resumption_is_keyed_on_its_request_state_not_its_session_or_id() {
        let cus = CustomerId::new("cus_a");
        let resumed = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"ask","arguments":{},"inputResponses":{"a":{"action":"accept"}},"requestState":"sealed-1"}}"#;
        let key = charge_key(&request(None, resumed), &cus, &CallId::new("call_1"));
        assert!(key.as_str().starts_with("rs:"), "{key}");
        // The same resumption again, on another connection with another id:
        // the same call.
        let retried = resumed.replace(r#""id":8"#, r#""id":"x""#);
        assert_eq!(
            key,
            charge_key(&request(Some("s9"), &retried), &cus, &CallId::new("call_2"))
        );
        // Other answers, another state or another customer: another call.
        let other_answers = resumed.replace("accept", "decline");
        assert_ne!(
            key,
            charge_key(&request(None, &other_answers), &cus, &CallId::new("call_3"))
        );
        let other_state = resumed.replace("sealed-1", "sealed-2");
        assert_ne!(
            key,
            charge_key(&request(None, &other_state), &cus, &CallId::new("call_4"))
        );
        assert_ne!(
            key,
            charge_key(
                &request(None, resumed),
                &CustomerId::new("cus_b"),
                &CallId::new("call_1")
            )
        );
        // A `requestState` inside the arguments is not a resumption.
        let nested = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"ask","arguments":{"requestState":"x"}}}"#;
        assert!(
            charge_key(&request(None, nested), &cus, &CallId::new("call_5"))
                .as_str()
                .starts_with("call:")
        );
    }
}
