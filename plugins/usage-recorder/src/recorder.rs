//! Starting the recorder, and the handle that reads its counters and shuts
//! it down.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mcp_meter_plugin::ports::{SharedClock, SharedUsageSink};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::RecorderConfig;
use crate::layer::{RecordQueue, UsageRecorderLayer};
use crate::stats::{Counters, RecorderStats};
use crate::writer::Writer;

/// Starts usage recorders. See [`UsageRecorder::start`].
#[derive(Debug)]
pub struct UsageRecorder {
    _private: (),
}

impl UsageRecorder {
    /// Spawns the writer task and returns the layer that feeds it, with the
    /// handle that reads its counters and shuts it down.
    ///
    /// `queue_capacity` and `max_batch` below 1 are taken as 1.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns the writer task).
    pub fn start(
        sink: SharedUsageSink,
        clock: SharedClock,
        config: RecorderConfig,
    ) -> (UsageRecorderLayer, RecorderHandle) {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let (shutdown, shutdown_signal) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(receiver, sink, counters.clone(), &config, shutdown_signal);
        let task = tokio::spawn(writer.run());
        let layer = UsageRecorderLayer::new(RecordQueue::new(sender, counters.clone()), clock);
        let handle = RecorderHandle {
            shutdown: Some(shutdown),
            task,
            counters,
        };
        (layer, handle)
    }
}

/// Controls a running recorder: its counters and its shutdown.
///
/// Dropping the handle without [`RecorderHandle::shutdown`] leaves the
/// writer running until every layer (and every service built from one) is
/// dropped; it then writes what is queued and stops.
pub struct RecorderHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl fmt::Debug for RecorderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecorderHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What shutdown managed to write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records the sink confirmed since start.
    pub written: u64,
    /// Records handed to the recorder that the sink did not confirm before
    /// the deadline (or that arrived after shutdown began). Each is also
    /// logged at error level.
    pub lost: u64,
}

impl RecorderHandle {
    /// The counters now, for metrics.
    pub fn stats(&self) -> RecorderStats {
        self.counters.snapshot()
    }

    /// A reader of the counters that outlives the handle (for a metrics
    /// endpoint).
    pub fn stats_reader(&self) -> impl Fn() -> RecorderStats + Send + Sync + 'static {
        let counters = self.counters.clone();
        move || counters.snapshot()
    }

    /// Stops the recorder: closes the queue at once (a call that finishes
    /// afterwards still gets its response, but its record is logged as lost
    /// and counted in [`ShutdownReport::lost`]; the proxy calls this after
    /// its server has drained in-flight calls), writes everything already
    /// queued, retrying failed batches, and waits for the writer. When
    /// `deadline` passes first, the writer is stopped (a write in progress
    /// is abandoned, not confirmed) and what is unwritten is reported lost.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let Self {
            shutdown,
            mut task,
            counters,
        } = self;
        if let Some(shutdown) = shutdown {
            // An error means the writer is already gone; joining tells why.
            let _ = shutdown.send(());
        }
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "the usage writer task failed");
            }
            Err(_elapsed) => {
                task.abort();
                // Wait until the task is really gone, so the counters are final.
                let _ = task.await;
            }
        }
        let stats = counters.snapshot();
        let report = ShutdownReport {
            written: stats.written,
            lost: stats.queued,
        };
        if report.lost > 0 {
            tracing::error!(
                lost = report.lost,
                written = report.written,
                deadline_ms = deadline.as_millis() as u64,
                "usage records were not written before the shutdown deadline and are lost"
            );
        } else {
            tracing::info!(written = report.written, "usage recorder stopped");
        }
        report
    }
}
