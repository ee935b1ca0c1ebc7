//! End-to-end tests: the layer, the writer and the handle against an
//! in-memory sink and a fixed clock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use mcp_meter_plugin::identity::{
    CallId, Caller, CallerSlot, CredentialKind, Customer, CustomerId, CustomerStatus, KeyId,
    Refusal, UnixMillis,
};
use mcp_meter_plugin::jsonrpc::Message;
use mcp_meter_plugin::ports::{Clock, StoreError, UsageOutcome, UsageRecord, UsageSink};
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError, SessionId};
use tokio::sync::{Semaphore, watch};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::{RecorderConfig, RecorderHandle, UsageRecorder, UsageRecorderLayer};

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const WAIT: Duration = Duration::from_secs(20);

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> UnixMillis {
        NOW
    }
}

/// An in-memory sink that skips call ids it has, like the real ones, and
/// can fail or block on demand.
struct MemorySink {
    stored: Mutex<HashMap<CallId, UsageRecord>>,
    /// Records in batches that succeeded, duplicates included.
    received: AtomicUsize,
    /// Batches that succeeded.
    batches: AtomicUsize,
    attempts: watch::Sender<usize>,
    written: watch::Sender<usize>,
    fail_first: usize,
    always_fail: bool,
    /// When set, every write waits until it is closed.
    gate: Option<Semaphore>,
}

impl MemorySink {
    fn new() -> Self {
        Self {
            stored: Mutex::default(),
            received: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            attempts: watch::Sender::new(0),
            written: watch::Sender::new(0),
            fail_first: 0,
            always_fail: false,
            gate: None,
        }
    }

    fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::new()
        }
    }

    fn release(&self) {
        self.gate.as_ref().unwrap().close();
    }

    async fn wait_attempts(&self, n: usize) {
        let mut rx = self.attempts.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|a| *a >= n))
            .await
            .expect("sink attempts in time")
            .unwrap();
    }

    async fn wait_written(&self, n: usize) {
        let mut rx = self.written.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|w| *w >= n))
            .await
            .expect("records written in time")
            .unwrap();
    }

    fn by_tool(&self) -> HashMap<String, UsageRecord> {
        self.stored
            .lock()
            .unwrap()
            .values()
            .map(|r| (r.tool.clone().unwrap(), r.clone()))
            .collect()
    }
}

#[async_trait]
impl UsageSink for MemorySink {
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        let mut attempt = 0;
        self.attempts.send_modify(|a| {
            *a += 1;
            attempt = *a;
        });
        if let Some(gate) = &self.gate {
            // Closed means released.
            let _ = gate.acquire().await;
        }
        tokio::task::yield_now().await;
        if self.always_fail || attempt <= self.fail_first {
            return Err(StoreError::Unavailable("test: the database is down".into()));
        }
        let added = {
            let mut stored = self.stored.lock().unwrap();
            let before = stored.len();
            for record in batch {
                stored
                    .entry(record.call_id.clone())
                    .or_insert_with(|| record.clone());
            }
            stored.len() - before
        };
        self.received.fetch_add(batch.len(), Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.written.send_modify(|w| *w += added);
        Ok(())
    }
}

fn fast() -> RecorderConfig {
    RecorderConfig {
        retry_backoff_initial_ms: 1,
        retry_backoff_max_ms: 4,
        ..RecorderConfig::default()
    }
}

fn start(sink: &Arc<MemorySink>, config: RecorderConfig) -> (UsageRecorderLayer, RecorderHandle) {
    UsageRecorder::start(sink.clone(), Arc::new(FixedClock), config)
}

fn caller(customer: &str, key: &str) -> Arc<Caller> {
    Arc::new(Caller {
        customer: Customer {
            id: CustomerId::new(customer),
            name: "Acme".into(),
            email: None,
            plan_id: None,
            status: CustomerStatus::Active,
            stripe_customer_id: None,
            external_subject: None,
            metadata: serde_json::Map::new(),
            created_at: NOW,
            updated_at: NOW,
        },
        credential: CredentialKind::ApiKey(KeyId::new(key)),
    })
}

fn call(tool: &str) -> McpRequest {
    let text =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#);
    let mut request = McpRequest::new(Message::parse(text.into()).unwrap());
    request.session.id = Some(SessionId::new("sess_1"));
    request
}

fn result(text: &str) -> McpResponse {
    let raw = serde_json::value::RawValue::from_string(text.to_owned()).unwrap();
    McpResponse::result(&mcp_meter_plugin::jsonrpc::RequestId::number(1), &raw)
}

/// What the fake upstream answers, by tool name; deterministic, so the test
/// can compare the layer's answer with a direct one.
fn answer(tool: &str) -> Result<McpResponse, ProxyError> {
    let id = mcp_meter_plugin::jsonrpc::RequestId::number(1);
    match tool {
        "ok" => {
            let mut r = result(r#"{"content":[{"type":"text","text":"hi"}]}"#);
            r.extensions.insert(caller("cus_ok", "key_ok"));
            Ok(r)
        }
        "tool_error" => {
            let mut r = result(r#"{"content":[],"isError":true}"#);
            r.extensions.insert(caller("cus_te", "key_te"));
            Ok(r)
        }
        "rpc_error" => Ok(McpResponse::error(
            &id,
            -32000,
            "slow down",
            Some(&serde_json::json!({"reason": "rate_limited"})),
        )),
        "refused" => {
            let mut r = McpResponse::error(&id, -32010, "key revoked", None);
            r.extensions.insert(Refusal {
                reason: "key_revoked",
            });
            Ok(r)
        }
        "timeout" => Err(ProxyError::Timeout {
            after: Duration::from_secs(30),
        }),
        "cancel" => Err(ProxyError::Cancelled),
        _ => Err(ProxyError::UpstreamExited {
            status: "exit status: 1".into(),
        }),
    }
}

fn upstream()
-> impl Service<McpRequest, Response = McpResponse, Error = ProxyError, Future: Send + 'static> + Clone
{
    service_fn(|req: McpRequest| {
        let tool = req.tool_name().unwrap_or_default().to_owned();
        async move {
            if tool == "hang" {
                std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
            answer(&tool)
        }
    })
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `done` (yielding in between) until it holds or the wait runs out.
async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::task::yield_now().await;
    }
}

fn assert_same(
    layered: &Result<McpResponse, ProxyError>,
    direct: &Result<McpResponse, ProxyError>,
) {
    match (layered, direct) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.message.as_bytes(), b.message.as_bytes());
            assert_eq!(a.extensions.get::<Refusal>(), b.extensions.get::<Refusal>());
            assert_eq!(
                a.extensions.get::<Arc<Caller>>(),
                b.extensions.get::<Arc<Caller>>()
            );
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(a.code(), b.code());
        }
        _ => panic!("outcome changed: {layered:?} vs {direct:?}"),
    }
}

#[tokio::test]
async fn one_record_per_call_with_its_outcome() {
    let sink = Arc::new(MemorySink::new());
    let (layer, handle) = start(&sink, fast());
    let mut service = layer.layer(upstream());

    let tools = [
        "ok",
        "tool_error",
        "rpc_error",
        "refused",
        "timeout",
        "cancel",
        "exited",
    ];
    for tool in tools {
        let layered = service.ready().await.unwrap().call(call(tool)).await;
        assert_same(&layered, &answer(tool));
    }
    // Authenticated by an outer layer: the caller comes from the request.
    let mut request = call("exited_authed");
    request.extensions.insert(caller("cus_req", "key_req"));
    let layered = service.ready().await.unwrap().call(request).await;
    assert_same(&layered, &answer("exited_authed"));
    // The client goes away while the upstream is still working.
    {
        let mut future = pin!(service.ready().await.unwrap().call(call("hang")));
        assert!(poll_once(future.as_mut()).is_pending());
    }

    sink.wait_written(tools.len() + 2).await;
    let records = sink.by_tool();
    assert_eq!(records.len(), tools.len() + 2);
    let expect = |tool: &str, outcome: UsageOutcome, reason: Option<&str>| {
        let r = &records[tool];
        assert_eq!(
            (r.outcome, r.reason.as_deref()),
            (outcome, reason),
            "{tool}"
        );
        assert_eq!(r.method, "tools/call");
        assert_eq!(r.session_id.as_deref(), Some("sess_1"));
        assert_eq!(r.started_at, NOW);
        assert_eq!(r.units, 1);
        assert!(r.duration_us >= 0);
        assert_eq!(r.bytes_in, call(tool).message.len() as i64, "{tool}");
        let bytes_out = answer(tool).map_or(0, |a| a.message.len() as i64);
        assert_eq!(
            r.bytes_out,
            if tool == "hang" { 0 } else { bytes_out },
            "{tool}"
        );
        r.clone()
    };
    let ok = expect("ok", UsageOutcome::Ok, None);
    assert_eq!(ok.customer_id, Some(CustomerId::new("cus_ok")));
    assert_eq!(ok.key_id, Some(KeyId::new("key_ok")));
    let te = expect("tool_error", UsageOutcome::ToolError, None);
    assert_eq!(te.customer_id, Some(CustomerId::new("cus_te")));
    expect(
        "rpc_error",
        UsageOutcome::UpstreamError,
        Some("rate_limited"),
    );
    let refused = expect("refused", UsageOutcome::Refused, Some("key_revoked"));
    assert_eq!((refused.customer_id, refused.key_id), (None, None));
    expect("timeout", UsageOutcome::Timeout, Some("timeout"));
    expect("cancel", UsageOutcome::Cancelled, Some("cancelled"));
    expect(
        "exited",
        UsageOutcome::UpstreamError,
        Some("upstream_exited"),
    );
    let authed = expect(
        "exited_authed",
        UsageOutcome::UpstreamError,
        Some("upstream_exited"),
    );
    assert_eq!(authed.customer_id, Some(CustomerId::new("cus_req")));
    assert_eq!(authed.key_id, Some(KeyId::new("key_req")));
    expect("hang", UsageOutcome::Cancelled, Some("client_gone"));

    let report = handle.shutdown(WAIT).await;
    assert_eq!((report.written, report.lost), (9, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_written_in_batches_with_unique_ids() {
    const CALLS: usize = 5_000;
    let sink = Arc::new(MemorySink::new());
    let (layer, handle) = start(&sink, fast());
    let tasks: Vec<_> = (0..CALLS)
        .map(|_| {
            let service = layer.layer(upstream());
            tokio::spawn(async move { service.oneshot(call("ok")).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    sink.wait_written(CALLS).await;
    let report = handle.shutdown(WAIT).await;
    assert_eq!((report.written, report.lost), (CALLS as u64, 0));
    assert_eq!(
        sink.stored.lock().unwrap().len(),
        CALLS,
        "call ids are unique"
    );
    assert_eq!(
        sink.received.load(Ordering::SeqCst),
        CALLS,
        "each written once"
    );
    let batches = sink.batches.load(Ordering::SeqCst);
    assert!(batches < CALLS, "{batches} batches for {CALLS} records");
}

#[tokio::test]
async fn failed_batches_are_retried_until_written_once() {
    const CALLS: usize = 20;
    let sink = Arc::new(MemorySink {
        fail_first: 3,
        ..MemorySink::new()
    });
    let (layer, handle) = start(&sink, fast());
    for _ in 0..CALLS {
        layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    }
    sink.wait_written(CALLS).await;
    eventually(|| handle.stats().written == CALLS as u64).await;
    let stats = handle.stats();
    assert_eq!(stats.failed_batches, 3);
    assert_eq!(stats.queued, 0);
    assert_eq!(sink.received.load(Ordering::SeqCst), CALLS);
    assert_eq!(
        *sink.attempts.borrow(),
        3 + sink.batches.load(Ordering::SeqCst)
    );
    let report = handle.shutdown(WAIT).await;
    assert_eq!((report.written, report.lost), (CALLS as u64, 0));
}

#[tokio::test]
async fn a_full_queue_makes_calls_wait() {
    let sink = Arc::new(MemorySink::gated());
    let config = RecorderConfig {
        queue_capacity: 10,
        ..fast()
    };
    let (layer, handle) = start(&sink, config);
    // The first record is taken by the writer, which blocks in the sink.
    layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    sink.wait_attempts(1).await;
    // Ten more fill the queue; each of those calls still returns.
    for _ in 0..10 {
        layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    }
    assert_eq!(handle.stats().queued, 11);
    // The next call has its answer but must wait for room before returning.
    let mut service = layer.layer(upstream());
    let mut waiting = pin!(service.ready().await.unwrap().call(call("ok")));
    for _ in 0..3 {
        assert!(poll_once(waiting.as_mut()).is_pending());
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.stats().queued, 11);

    sink.release();
    let response = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("call returns");
    assert_same(&response, &answer("ok"));
    sink.wait_written(12).await;
    let report = handle.shutdown(WAIT).await;
    assert_eq!((report.written, report.lost), (12, 0));
}

#[tokio::test]
async fn shutdown_flushes_the_queue_then_records_are_refused() {
    let sink = Arc::new(MemorySink::gated());
    let (layer, handle) = start(&sink, fast());
    for _ in 0..5 {
        layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    }
    sink.wait_attempts(1).await;
    assert_eq!(handle.stats().queued, 5);
    let shutdown = tokio::spawn(handle.shutdown(WAIT));
    sink.release();
    let report = shutdown.await.unwrap();
    assert_eq!((report.written, report.lost), (5, 0));
    assert_eq!(sink.stored.lock().unwrap().len(), 5);

    // After shutdown a call is still answered, unchanged; its record is
    // logged as lost.
    let late = layer.layer(upstream()).oneshot(call("ok")).await;
    assert_same(&late, &answer("ok"));
    assert_eq!(sink.stored.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn shutdown_reports_what_a_dead_sink_lost() {
    const CALLS: usize = 7;
    let sink = Arc::new(MemorySink {
        always_fail: true,
        ..MemorySink::new()
    });
    let (layer, handle) = start(&sink, fast());
    for _ in 0..CALLS {
        layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    }
    sink.wait_attempts(2).await;
    assert!(handle.stats().failed_batches >= 1);
    let report = handle.shutdown(Duration::from_millis(50)).await;
    assert_eq!((report.written, report.lost), (0, CALLS as u64));
    assert!(sink.stored.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dropping_the_handle_keeps_the_writer_until_the_layers_go() {
    let sink = Arc::new(MemorySink::new());
    let (layer, handle) = start(&sink, fast());
    drop(handle);
    layer.layer(upstream()).oneshot(call("ok")).await.unwrap();
    sink.wait_written(1).await;
}

#[tokio::test]
async fn a_fault_after_authentication_still_names_the_customer() {
    let sink = Arc::new(MemorySink::new());
    let (layer, handle) = start(&sink, fast());
    // An inner layer (auth) fills the slot, then the upstream fails.
    let inner = service_fn(|req: McpRequest| async move {
        req.extensions
            .get::<CallerSlot>()
            .expect("the recorder leaves a slot")
            .fill(caller("cus_slot", "key_slot"));
        Err::<McpResponse, _>(ProxyError::UpstreamExited {
            status: "signal: 9".into(),
        })
    });
    let result = layer.layer(inner).oneshot(call("crash")).await;
    assert!(result.is_err());
    sink.wait_written(1).await;
    let record = sink.by_tool().remove("crash").unwrap();
    assert_eq!(record.outcome, UsageOutcome::UpstreamError);
    assert_eq!(record.customer_id.unwrap().as_str(), "cus_slot");
    assert_eq!(record.key_id.unwrap().as_str(), "key_slot");
    handle.shutdown(WAIT).await;
}

/// Records that arrive within `flush_interval_ms` of the first go out in one
/// batch; with 0 the writer does not wait.
#[tokio::test(start_paused = true)]
async fn records_wait_for_their_batch_at_most_the_flush_interval() {
    let sink = Arc::new(MemorySink::new());
    let config = RecorderConfig {
        flush_interval_ms: 200,
        ..fast()
    };
    let (layer, handle) = start(&sink, config);
    let started = tokio::time::Instant::now();
    assert!(layer.layer(upstream()).oneshot(call("ok")).await.is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        sink.batches.load(Ordering::SeqCst),
        0,
        "still waiting for more"
    );
    assert!(layer.layer(upstream()).oneshot(call("ok")).await.is_ok());
    sink.wait_written(2).await;
    assert_eq!(sink.batches.load(Ordering::SeqCst), 1, "one batch for both");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(300),
        "{waited:?}"
    );
    handle.shutdown(WAIT).await;
}

/// Shutdown does not wait out the flush interval: the queued record is
/// written at once.
#[tokio::test]
async fn shutdown_does_not_wait_for_the_flush_interval() {
    let sink = Arc::new(MemorySink::new());
    let config = RecorderConfig {
        flush_interval_ms: 3_600_000,
        ..fast()
    };
    let (layer, handle) = start(&sink, config);
    assert!(layer.layer(upstream()).oneshot(call("ok")).await.is_ok());
    drop(layer);
    let report = tokio::time::timeout(Duration::from_secs(10), handle.shutdown(WAIT))
        .await
        .expect("shutdown did not wait an hour");
    assert_eq!((report.written, report.lost), (1, 0));
}
