//! The layer and its service: one usage record per call, handed to the
//! writer after the inner service has answered.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use mcp_meter_plugin::identity::{Caller, CallerSlot};
use mcp_meter_plugin::ports::{SharedClock, UsageOutcome, UsageRecord};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use tokio::sync::mpsc::{self, error::TrySendError};
use tower::{Layer, Service};

use crate::call_id::new_call_id;
use crate::outcome;
use crate::stats::Counters;

/// The sending side of the record queue.
#[derive(Clone)]
pub(crate) struct RecordQueue {
    sender: mpsc::Sender<UsageRecord>,
    counters: Arc<Counters>,
}

impl RecordQueue {
    pub(crate) fn new(sender: mpsc::Sender<UsageRecord>, counters: Arc<Counters>) -> Self {
        Self { sender, counters }
    }

    /// Hands a record over without waiting (from a `Drop`): when the queue
    /// is full, a task waits for room instead.
    fn submit_detached(&self, record: UsageRecord) {
        self.counters.add_submitted();
        match self.sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(record)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let sender = self.sender.clone();
                    runtime.spawn(async move {
                        if let Err(error) = sender.send(record).await {
                            log_lost(&error.0);
                        }
                    });
                }
                Err(_) => log_lost(&record),
            },
            Err(TrySendError::Closed(record)) => log_lost(&record),
        }
    }
}

fn log_lost(record: &UsageRecord) {
    tracing::error!(
        call_id = %record.call_id,
        method = %record.method,
        outcome = record.outcome.as_str(),
        "the usage recorder is shut down; this call's usage record is lost"
    );
}

/// The layer: wraps a service so that each call produces one
/// [`UsageRecord`]. Cheap to clone; every clone feeds the same writer.
/// Made by [`crate::UsageRecorder::start`].
#[derive(Clone)]
pub struct UsageRecorderLayer {
    queue: RecordQueue,
    clock: SharedClock,
}

impl UsageRecorderLayer {
    pub(crate) fn new(queue: RecordQueue, clock: SharedClock) -> Self {
        Self { queue, clock }
    }
}

impl fmt::Debug for UsageRecorderLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorderLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for UsageRecorderLayer {
    type Service = UsageRecorderService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UsageRecorderService {
            inner,
            queue: self.queue.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The service that records each call of its inner service. It returns
/// exactly what the inner service returned; when the record queue is full
/// it waits for room before returning (backpressure).
#[derive(Clone)]
pub struct UsageRecorderService<S> {
    inner: S,
    queue: RecordQueue,
    clock: SharedClock,
}

impl<S: fmt::Debug> fmt::Debug for UsageRecorderService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorderService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<McpRequest> for UsageRecorderService<S>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: McpRequest) -> Self::Future {
        let started = Instant::now();
        let mut record = UsageRecord {
            call_id: new_call_id(),
            customer_id: None,
            key_id: None,
            session_id: request.session.id.as_ref().map(|s| s.as_str().to_owned()),
            method: request.method().to_owned(),
            tool: request.tool_name().map(str::to_owned),
            started_at: self.clock.now(),
            duration_us: 0,
            bytes_in: to_i64(request.message.len()),
            bytes_out: 0,
            // What the record says if the call never finishes.
            outcome: UsageOutcome::Cancelled,
            reason: Some(outcome::CLIENT_GONE.to_owned()),
            units: 1,
        };
        if let Some(caller) = request.extensions.get::<Arc<Caller>>() {
            set_caller(&mut record, caller);
        }
        // The auth layer inside fills the slot, so a call that ends in a
        // fault (no response extensions) still names its customer.
        let slot = CallerSlot::new();
        request.extensions.insert(slot.clone());
        // Inner layers (billing) tie their ledger entries to this record.
        request.extensions.insert(record.call_id.clone());
        let mut guard = RecordGuard {
            record: Some(record),
            started,
            finished: false,
            queue: self.queue.clone(),
            slot,
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            guard.finish(&result);
            guard.submit().await;
            result
        })
    }
}

/// Owns the record until the queue has it: dropped early (the client went
/// away, or while waiting for room), it still hands the record over.
struct RecordGuard {
    record: Option<UsageRecord>,
    started: Instant,
    finished: bool,
    queue: RecordQueue,
    slot: CallerSlot,
}

impl RecordGuard {
    /// Fills in how the call ended.
    fn finish(&mut self, result: &Result<McpResponse, ProxyError>) {
        let Some(record) = self.record.as_mut() else {
            return;
        };
        record.duration_us = to_i64(self.started.elapsed().as_micros());
        self.finished = true;
        if let Some(caller) = self.slot.get() {
            set_caller(record, &caller);
        }
        let (outcome, reason) = match result {
            Ok(response) => {
                if let Some(caller) = response.extensions.get::<Arc<Caller>>() {
                    set_caller(record, caller);
                }
                record.bytes_out = to_i64(response.message.len());
                outcome::of_response(response)
            }
            Err(error) => outcome::of_error(error),
        };
        record.outcome = outcome;
        record.reason = reason;
    }

    /// Waits for room in the queue, then hands the record over.
    async fn submit(&mut self) {
        let permit = self.queue.sender.reserve().await;
        let Some(record) = self.record.take() else {
            return;
        };
        self.queue.counters.add_submitted();
        match permit {
            Ok(permit) => permit.send(record),
            Err(_closed) => log_lost(&record),
        }
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            if !self.finished {
                record.duration_us = to_i64(self.started.elapsed().as_micros());
                if let Some(caller) = self.slot.get() {
                    set_caller(&mut record, &caller);
                }
            }
            self.queue.submit_detached(record);
        }
    }
}

fn set_caller(record: &mut UsageRecord, caller: &Caller) {
    record.customer_id = Some(caller.customer.id.clone());
    record.key_id = caller.key_id().cloned();
}

fn to_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
