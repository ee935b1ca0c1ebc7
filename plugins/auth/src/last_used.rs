//! `last_used_at` of API keys, kept in memory and written back in batches so
//! that a call never waits for a write.

use std::collections::HashMap;
use std::sync::Mutex;

use mcp_meter_plugin::identity::{KeyId, UnixMillis};
use mcp_meter_plugin::ports::{CustomerDirectory, StoreError};

/// The latest use of each key since the last flush.
#[derive(Debug, Default)]
pub(crate) struct LastUsed {
    pending: Mutex<HashMap<KeyId, UnixMillis>>,
}

impl LastUsed {
    /// Notes a use (a map insert under a lock held for nanoseconds).
    pub(crate) fn note(&self, key: &KeyId, at: UnixMillis) {
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry(key.clone()).or_insert(at);
            if *entry < at {
                *entry = at;
            }
        }
    }

    /// Writes every pending use in one batch. On failure the uses are put
    /// back (keeping the later time) for the next flush.
    pub(crate) async fn flush(
        &self,
        directory: &dyn CustomerDirectory,
    ) -> Result<usize, StoreError> {
        let batch: Vec<(KeyId, UnixMillis)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return Ok(0),
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match directory.touch_keys(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                for (key, at) in &batch {
                    self.note(key, *at);
                }
                Err(error)
            }
        }
    }
}
