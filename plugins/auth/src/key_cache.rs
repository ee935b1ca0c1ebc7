//! API keys this instance checked a moment ago, so that a customer's next
//! calls do not each read the store.
//!
//! An entry is trusted for [`CREDENTIAL_LEASE`] after it was read, never
//! longer. Every command that takes a key or a customer away (revoking a
//! key, suspending a customer) waits out that lease after its write before
//! it reports success, so from the moment it returns no instance anywhere
//! still holds a copy read before the change: the change applies to every
//! call that starts after it. Only keys that were valid, of an active
//! customer, when read are kept; an unknown, revoked or expired key, or a
//! suspended customer's, is read from the store every time, and a cached
//! key's expiry is checked against the clock on every use. A change of a
//! customer's plan reaches calls within a lease.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;

use crate::authenticator::Identified;

/// Most keys kept at once; past it, entries whose lease ended are dropped
/// (and all of them if none had).
const MAX_ENTRIES: usize = 65_536;

/// A key as checked, with when it was read.
struct Cached {
    read_at: Instant,
    identified: Identified,
    expires_at: Option<UnixMillis>,
}

/// Valid keys by the SHA-256 of the key, each for the length of a lease.
#[derive(Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl KeyCache {
    /// The caller of the key with this hash, if it was read less than a
    /// lease ago and has not expired by `now`.
    pub(crate) fn get(&self, hash: &[u8; 32], now: UnixMillis) -> Option<Identified> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(hash)?;
        let fresh = cached.read_at.elapsed() < CREDENTIAL_LEASE;
        let unexpired = cached.expires_at.is_none_or(|at| now < at);
        (fresh && unexpired).then(|| cached.identified.clone())
    }

    /// Keeps a key that was valid when read at `read_at`.
    pub(crate) fn put(
        &self,
        hash: [u8; 32],
        read_at: Instant,
        identified: Identified,
        expires_at: Option<UnixMillis>,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, c| c.read_at.elapsed() < CREDENTIAL_LEASE);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            hash,
            Cached {
                read_at,
                identified,
                expires_at,
            },
        );
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KeyCache").field("entries", &len).finish()
    }
}
