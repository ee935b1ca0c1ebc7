//! Call ids: `call_` and 24 random base62 characters.

use mcp_meter_plugin::identity::CallId;
use rand::distr::{Alphanumeric, SampleString};

/// The number of random characters after the prefix (about 143 bits).
const RANDOM_CHARS: usize = 24;

/// A fresh call id, unique across processes and instances.
pub(crate) fn new_call_id() -> CallId {
    let body = Alphanumeric.sample_string(&mut rand::rng(), RANDOM_CHARS);
    CallId::new(format!("{}{body}", CallId::PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_base62_and_differ() {
        let a = new_call_id();
        let b = new_call_id();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), CallId::PREFIX.len() + RANDOM_CHARS);
        assert!(CallId::parse(a.as_str()).is_some(), "{a}");
    }
}
