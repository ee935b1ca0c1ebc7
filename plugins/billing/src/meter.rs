//! Measuring what a call counts for plans whose meter is not calls: the
//! request's or the response's bytes, the time to the answer, or a number
//! the server reports in the result's `_meta`.

use std::time::Instant;

use mcp_meter_plugin::{McpRequest, McpResponse};
use serde_json::Value;

use crate::meta::TopLevel;
use crate::plan::Meter;

/// What is known of a call when it is forwarded.
pub(crate) struct Measure {
    started: Instant,
    request_bytes: usize,
}

impl Measure {
    /// Starts measuring `request` (call just before forwarding it).
    pub(crate) fn start(request: &McpRequest) -> Self {
        Self {
            started: Instant::now(),
            request_bytes: request.message.as_bytes().len(),
        }
    }

    /// The call's units by `meter`, once `response` has come. A `meta`
    /// meter whose key the result lacks counts 0 (logged for `plan`).
    pub(crate) fn units(&self, meter: &Meter, response: &McpResponse, plan: &str) -> i64 {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match meter {
            Meter::Calls => 1,
            Meter::RequestBytes => count(self.request_bytes),
            Meter::ResponseBytes => count(response.message.as_bytes().len()),
            Meter::DurationMs => {
                i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
            }
            Meter::Meta(meta_key) => reported_units(response, meta_key).unwrap_or_else(|| {
                tracing::warn!(
                    %plan,
                    %meta_key,
                    "the server's result carries no non-negative integer under this _meta key; counting 0 units"
                );
                0
            }),
        }
    }
}

/// The non-negative integer the server put in the result's
/// `_meta[meta_key]`.
fn reported_units(response: &McpResponse, meta_key: &str) -> Option<i64> {
    let raw = response.message.result()?;
    let top = TopLevel::parse(raw)?;
    let meta: Value = serde_json::from_str(top.get("_meta")?.get()).ok()?;
    meta.get(meta_key)?.as_i64().filter(|units| *units >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_meter_plugin::McpResponse;
    use mcp_meter_plugin::jsonrpc::Message;

    fn response(body: &str) -> McpResponse {
        McpResponse::new(Message::parse(body.as_bytes().to_vec().into()).unwrap())
    }

    #[test]
    fn units_are_read_from_the_results_meta() {
        let ok =
            response(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"tokens":1234}}}"#);
        assert_eq!(reported_units(&ok, "tokens"), Some(1234));
        assert_eq!(reported_units(&ok, "other"), None);
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":-5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":1.5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"tokens":"12"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"no"}}"#,
        ] {
            assert_eq!(reported_units(&response(bad), "tokens"), None, "{bad}");
        }
    }
}
