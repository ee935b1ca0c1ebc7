//! Which requests are the same logical call. A client that repeats a
//! request (same id, same parameters, same session) is retrying the same
//! call, which must not be charged twice; anything else is a new call.
//! Without a session (stateless requests) requests cannot be told apart,
//! so each is its own call.

use mcp_meter_plugin::McpRequest;
use mcp_meter_plugin::identity::{CallId, CustomerId};
use mcp_meter_plugin::ledger::ChargeKey;
use sha2::{Digest, Sha256};

/// The charge key of `request` by `customer`; `call_id` names calls that
/// have no session.
pub(crate) fn charge_key(
    request: &McpRequest,
    customer: &CustomerId,
    call_id: &CallId,
) -> ChargeKey {
    let (Some(session), Some(id)) = (&request.session.id, request.message.id()) else {
        return ChargeKey::new(format!("call:{call_id}"));
    };
    let mut hash = Sha256::new();
    for part in [
        customer.as_str(),
        session.as_str(),
        id.as_json(),
        request.method(),
        request.message.params().map_or("", |p| p.get()),
    ] {
        // Length-prefixed, so parts cannot run into each other.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(4 + 64);
    key.push_str("req:");
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
}
