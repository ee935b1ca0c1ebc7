//! Counters shared by the layer, the writer and the handle, for metrics and
//! the shutdown report.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters. Relaxed atomics: each is a plain count, read for
/// metrics; the shutdown report reads them after the writer has stopped.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Records handed to the queue (or that failed to be handed over, which
    /// are then never written and so count as lost).
    submitted: AtomicU64,
    /// Records the sink confirmed.
    written: AtomicU64,
    /// Sink writes that returned an error.
    failed_batches: AtomicU64,
}

impl Counters {
    pub(crate) fn add_submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_written(&self, records: usize) {
        self.written.fetch_add(records as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_failed_batch(&self) {
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RecorderStats {
        // `written` first: a record is counted as submitted before it can be
        // written, so reading in this order never shows written > submitted.
        let written = self.written.load(Ordering::Relaxed);
        let failed_batches = self.failed_batches.load(Ordering::Relaxed);
        let submitted = self.submitted.load(Ordering::Relaxed);
        RecorderStats {
            queued: submitted.saturating_sub(written),
            written,
            failed_batches,
        }
    }
}

/// A snapshot of the recorder's counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Records handed to the recorder and not yet written: waiting in the
    /// queue or in the batch being written (a gauge).
    pub queued: u64,
    /// Records the sink confirmed since start (a counter).
    pub written: u64,
    /// Batch writes the sink failed since start; each retry that fails
    /// counts again (a counter).
    pub failed_batches: u64,
}
