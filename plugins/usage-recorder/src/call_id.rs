//! Call ids: `call_` and 24 random base62 characters.

use mcp_meter_plugin::identity::CallId;

/// A fresh call id, unique across processes and instances.
pub(crate) fn new_call_id() -> CallId {
    CallId::generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_base62_and_differ() {
        let a = new_call_id();
        let b = new_call_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), CallId::PREFIX.len() + 24);
        assert!(CallId::parse(a.as_str()).is_some(), "{a}");
    }
}
