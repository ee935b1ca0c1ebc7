//! The `call_log` plugin: one structured log line per proxied request.
//!
//! Each request that goes through the stack produces one `tracing` event at
//! target `mcp_meter::call` with the session, method, tool name, duration,
//! bytes in and out and the outcome. With `--log-format json` the proxy's
//! subscriber renders it as one JSON object per line. The layer never changes
//! a request or a response and never refuses anything.
//!
//! ```
//! use mcp_meter_call_log::CallLogLayer;
//! use mcp_meter_plugin::{BoxMcpService, LayerPlugin, Plugin};
//!
//! let plugin = LayerPlugin::new("call_log", CallLogLayer::new());
//! assert_eq!(plugin.name(), "call_log");
//! ```
#![warn(missing_docs, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use tower::{Layer, Service};

/// The layer: cheap to clone, holds no state.
#[derive(Debug, Clone, Default)]
pub struct CallLogLayer {
    _private: (),
}

impl CallLogLayer {
    /// A new call-log layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLog { inner }
    }
}

/// The service that logs each call around its inner service.
#[derive(Debug, Clone)]
pub struct CallLog<S> {
    inner: S,
}

impl<S> Service<McpRequest> for CallLog<S>
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

    fn call(&mut self, request: McpRequest) -> Self::Future {
        let started = Instant::now();
        let session = request
            .session
            .id
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let method = request.method().to_owned();
        let tool = request.tool_name().map(str::to_owned);
        let bytes_in = request.message.len();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let duration_us = started.elapsed().as_micros() as u64;
            match &result {
                Ok(response) => tracing::info!(
                    target: "mcp_meter::call",
                    session = %session,
                    method = %method,
                    tool = tool.as_deref().unwrap_or(""),
                    duration_us,
                    bytes_in,
                    bytes_out = response.message.len(),
                    outcome = response.outcome().as_str(),
                    error_code = response.message.error_code(),
                    "call"
                ),
                Err(error) => tracing::warn!(
                    target: "mcp_meter::call",
                    session = %session,
                    method = %method,
                    tool = tool.as_deref().unwrap_or(""),
                    duration_us,
                    bytes_in,
                    bytes_out = 0u64,
                    outcome = error.reason(),
                    error_code = error.code(),
                    error = %error,
                    "call"
                ),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::jsonrpc::Message;
    use std::sync::{Arc, Mutex};
    use tower::{ServiceExt, service_fn};

    /// Captures formatted events so the test can assert on the log line.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn request() -> McpRequest {
        McpRequest::new(
            Message::parse(
                br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}"#
                    .as_slice()
                    .into(),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn passes_responses_through_unchanged() {
        let inner = service_fn(|req: McpRequest| async move {
            let id = req.message.id().cloned().unwrap();
            Ok::<_, ProxyError>(McpResponse::error(&id, -1, "no", None))
        });
        let response = CallLogLayer::new()
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(
            &response.message.as_bytes()[..],
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"no"}}"#
        );
    }

    #[tokio::test]
    async fn writes_one_json_line_per_call() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let inner = service_fn(|req: McpRequest| async move {
            let id = req.message.id().cloned().unwrap();
            let result =
                serde_json::value::RawValue::from_string(r#"{"content":[],"isError":true}"#.into())
                    .unwrap();
            Ok::<_, ProxyError>(McpResponse::result(&id, &result))
        });
        CallLogLayer::new()
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["target"], "mcp_meter::call");
        assert_eq!(line["fields"]["method"], "tools/call");
        assert_eq!(line["fields"]["tool"], "echo");
        assert_eq!(line["fields"]["outcome"], "tool_error");
        assert_eq!(line["fields"]["bytes_in"], 71);
        assert_eq!(line["fields"]["bytes_out"], 63);
    }

    #[tokio::test]
    async fn passes_faults_through_unchanged() {
        let inner =
            service_fn(
                |_req: McpRequest| async move { Err::<McpResponse, _>(ProxyError::Cancelled) },
            );
        let error = CallLogLayer::new()
            .layer(inner)
            .oneshot(request())
            .await
            .unwrap_err();
        assert!(matches!(error, ProxyError::Cancelled));
    }
}
