//! The recorder's configuration.

use serde::Deserialize;

/// How the usage recorder queues and writes records.
///
/// Every field has a default, so an empty table is a valid configuration.
/// Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// How many records may wait for the writer, in records. When the queue
    /// is full, a finished call waits for room before its response is
    /// returned (backpressure), so no record is dropped. At least 1.
    pub queue_capacity: usize,
    /// The most records written in one batch (one sink transaction), in
    /// records. At least 1.
    pub max_batch: usize,
    /// How long the first queued record waits for others before their
    /// batch is written, in milliseconds (a full batch is written at once;
    /// shutdown never waits). Larger batches mean fewer write transactions,
    /// which on SQLite leaves the single write lock to the ledger. `0`
    /// writes as soon as anything is queued.
    pub flush_interval_ms: u64,
    /// The wait before the first retry of a failed batch, in milliseconds.
    /// Each further retry doubles it, up to `retry_backoff_max_ms`.
    pub retry_backoff_initial_ms: u64,
    /// The longest wait between two retries of a failed batch, in
    /// milliseconds.
    pub retry_backoff_max_ms: u64,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            max_batch: 1000,
            flush_interval_ms: 200,
            retry_backoff_initial_ms: 100,
            retry_backoff_max_ms: 5000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_defaults() {
        let config: RecorderConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, RecorderConfig::default());
        assert_eq!(config.queue_capacity, 10_000);
        assert_eq!(config.max_batch, 1000);
        assert_eq!(config.flush_interval_ms, 200);
        assert_eq!(config.retry_backoff_initial_ms, 100);
        assert_eq!(config.retry_backoff_max_ms, 5000);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<RecorderConfig>(r#"{"queue_size":5}"#).unwrap_err();
        assert!(err.to_string().contains("queue_size"), "{err}");
        let config: RecorderConfig = serde_json::from_str(r#"{"max_batch":5}"#).unwrap();
        assert_eq!(config.max_batch, 5);
    }
}
