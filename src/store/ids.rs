//! New ids: a kind's prefix plus 24 random base62 characters (about 143 bits),
//! so ids never collide in practice and reveal nothing about order or count.

use mcp_meter_plugin::identity::{CustomerId, KeyId};
use rand::Rng;
use rand::distr::Alphanumeric;

/// How many random characters follow the prefix.
const RANDOM_CHARS: usize = 24;

/// A new `cus_…` id.
pub(super) fn customer_id() -> CustomerId {
    CustomerId::new(with_prefix(CustomerId::PREFIX))
}

/// A new `key_…` id.
pub(super) fn key_id() -> KeyId {
    KeyId::new(with_prefix(KeyId::PREFIX))
}

fn with_prefix(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + RANDOM_CHARS);
    id.push_str(prefix);
    id.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(RANDOM_CHARS)
            .map(char::from),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_24_base62_chars() {
        let id = customer_id();
        assert!(CustomerId::parse(id.as_str()).is_some(), "{id}");
        assert_eq!(id.as_str().len(), 4 + 24);
        let key = key_id();
        assert!(KeyId::parse(key.as_str()).is_some(), "{key}");
        assert_ne!(customer_id(), customer_id());
    }
}
