//! The writer task: once a record is queued, waits up to `flush_interval_ms`
//! for the batch to fill (up to `max_batch`), writes it in one sink call,
//! and retries failed batches with exponential backoff. Shutdown never
//! waits for a batch to fill.

use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::ports::{SharedUsageSink, UsageRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::RecorderConfig;
use crate::stats::Counters;

/// The single consumer of the record queue.
pub(crate) struct Writer {
    queue: mpsc::Receiver<UsageRecord>,
    sink: SharedUsageSink,
    counters: Arc<Counters>,
    max_batch: usize,
    /// How long the first record of a batch waits for others.
    linger: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// Fires when shutdown begins; `None` once it fired or its sender was
    /// dropped.
    shutdown: Option<oneshot::Receiver<()>>,
}

impl Writer {
    pub(crate) fn new(
        queue: mpsc::Receiver<UsageRecord>,
        sink: SharedUsageSink,
        counters: Arc<Counters>,
        config: &RecorderConfig,
        shutdown: oneshot::Receiver<()>,
    ) -> Self {
        let backoff_initial = Duration::from_millis(config.retry_backoff_initial_ms.max(1));
        Self {
            queue,
            sink,
            counters,
            max_batch: config.max_batch.max(1),
            linger: Duration::from_millis(config.flush_interval_ms),
            backoff_initial,
            backoff_max: Duration::from_millis(config.retry_backoff_max_ms).max(backoff_initial),
            shutdown: Some(shutdown),
        }
    }

    /// Writes batches until the queue is closed (by shutdown, or because
    /// every layer is gone) and empty.
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while self.receive(&mut batch).await {
            self.write(&batch).await;
            self.counters.add_written(batch.len());
            batch.clear();
        }
        tracing::debug!("usage writer stopped: the queue is closed and empty");
    }

    /// Waits for at least one record, then up to `flush_interval_ms` for
    /// more, and takes up to `max_batch`; `false` when the queue is closed
    /// and empty.
    async fn receive(&mut self, batch: &mut Vec<UsageRecord>) -> bool {
        if !self.receive_first(batch).await {
            return false;
        }
        let deadline = Instant::now() + self.linger;
        // Once shutdown began the queue is closed: what is left in it comes
        // at once, then `recv_many` answers 0 and the batch is written.
        while batch.len() < self.max_batch && !self.linger.is_zero() {
            let room = self.max_batch - batch.len();
            let received = match self.shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = self.queue.recv_many(batch, room) => n,
                    () = tokio::time::sleep_until(deadline) => break,
                    fired = signal => {
                        self.on_shutdown_signal(fired.is_ok());
                        continue;
                    }
                },
                None => tokio::select! {
                    n = self.queue.recv_many(batch, room) => n,
                    () = tokio::time::sleep_until(deadline) => break,
                },
            };
            if received == 0 {
                break;
            }
        }
        true
    }

    /// Waits for at least one record and takes up to `max_batch`; `false`
    /// when the queue is closed and empty.
    async fn receive_first(&mut self, batch: &mut Vec<UsageRecord>) -> bool {
        loop {
            let received = match self.shutdown.as_mut() {
                Some(signal) => tokio::select! {
                    n = self.queue.recv_many(batch, self.max_batch) => n,
                    fired = signal => {
                        self.on_shutdown_signal(fired.is_ok());
                        continue;
                    }
                },
                None => self.queue.recv_many(batch, self.max_batch).await,
            };
            return received > 0;
        }
    }

    /// Writes one batch, retrying until the sink accepts it. The sink skips
    /// call ids it already has, so a retry after an ambiguous failure is
    /// safe. Only shutdown's deadline (which aborts this task) ends retries.
    async fn write(&mut self, batch: &[UsageRecord]) {
        let mut backoff = self.backoff_initial;
        let mut attempt: u32 = 1;
        loop {
            match self.sink.record_usage(batch).await {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(
                            records = batch.len(),
                            attempts = attempt,
                            "usage batch written after retries"
                        );
                    }
                    return;
                }
                Err(error) => {
                    self.counters.add_failed_batch();
                    tracing::warn!(
                        %error,
                        records = batch.len(),
                        attempt,
                        retry_in_ms = backoff.as_millis() as u64,
                        "writing a usage batch failed; keeping it and retrying"
                    );
                    self.pause(backoff).await;
                    backoff = backoff.saturating_mul(2).min(self.backoff_max);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Sleeps `duration`, still noticing the shutdown signal meanwhile (so
    /// the queue stops accepting at once even while the sink is down).
    async fn pause(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while let Some(signal) = self.shutdown.as_mut() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                fired = signal => self.on_shutdown_signal(fired.is_ok()),
            }
        }
        tokio::time::sleep_until(until).await;
    }

    /// Shutdown began (`fired`), or the handle was dropped without calling
    /// it: then keep running until every layer is gone.
    fn on_shutdown_signal(&mut self, fired: bool) {
        self.shutdown = None;
        if fired {
            tracing::debug!("usage recorder shutting down: no new records, flushing the queue");
            self.queue.close();
        }
    }
}
