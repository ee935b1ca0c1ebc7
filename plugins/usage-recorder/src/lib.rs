//! The `usage_recorder` plugin: one [`UsageRecord`] per client→server
//! request that reaches the layer, written behind the call, in batches.
//!
//! [`UsageRecorder::start`] spawns one writer task and returns the layer
//! that feeds it and a [`RecorderHandle`]. For each call the layer notes the
//! method, tool, session, sizes and duration, takes the customer and key from
//! the `Arc<Caller>` the auth layer leaves in the response (or that an outer
//! layer left in the request), and classifies the outcome:
//!
//! | the inner service returned | outcome | reason |
//! |---|---|---|
//! | a response with a [`Refusal`] extension | `refused` | the refusal's reason |
//! | another JSON-RPC error response | `upstream_error` | the error's `data.reason`, if a string |
//! | a result with `isError: true` | `tool_error` | — |
//! | any other result | `ok` | — |
//! | `Err(ProxyError::Timeout)` | `timeout` | `timeout` |
//! | `Err(ProxyError::Cancelled)` | `cancelled` | `cancelled` |
//! | any other `Err` | `upstream_error` | [`ProxyError::reason`] |
//! | nothing: the future was dropped | `cancelled` | `client_gone` |
//!
//! The layer returns exactly what its inner service returned. The record
//! goes into a bounded queue; when the queue is full the call waits for room
//! before returning its response (backpressure), so no record is dropped.
//! The writer takes whatever is queued (up to `max_batch`) and writes it in
//! one [`UsageSink::record_usage`] call; records arriving meanwhile make up
//! the next batch. A failed batch is kept and retried with exponential
//! backoff until it is written or shutdown's deadline passes.
//!
//! [`UsageRecord`]: mcp_meter_plugin::ports::UsageRecord
//! [`Refusal`]: mcp_meter_plugin::identity::Refusal
//! [`UsageSink::record_usage`]: mcp_meter_plugin::ports::UsageSink::record_usage
//! [`ProxyError::reason`]: mcp_meter_plugin::ProxyError::reason
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use mcp_meter_plugin::ports::{StoreError, SystemClock, UsageRecord, UsageSink};
//! use mcp_meter_plugin::{LayerPlugin, Plugin};
//! use mcp_meter_usage_recorder::{RecorderConfig, UsageRecorder};
//!
//! struct Discard;
//!
//! #[async_trait::async_trait]
//! impl UsageSink for Discard {
//!     async fn record_usage(&self, _batch: &[UsageRecord]) -> Result<(), StoreError> {
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let (layer, handle) =
//!     UsageRecorder::start(Arc::new(Discard), Arc::new(SystemClock), RecorderConfig::default());
//! let plugin = LayerPlugin::new("usage_recorder", layer);
//! assert_eq!(plugin.name(), "usage_recorder");
//! // … serve calls through `plugin.wrap(inner)`, drain the server, then:
//! let report = handle.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(report.lost, 0);
//! # });
//! ```
#![warn(missing_docs, unreachable_pub)]

mod call_id;
mod config;
mod layer;
mod outcome;
mod recorder;
mod stats;
mod writer;

#[cfg(test)]
mod tests;

pub use config::RecorderConfig;
pub use layer::{UsageRecorderLayer, UsageRecorderService};
pub use recorder::{RecorderHandle, ShutdownReport, UsageRecorder};
pub use stats::RecorderStats;
