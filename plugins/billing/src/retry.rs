//! Finishing a ledger write in the background when the database did not
//! take it in the call's own time. Only for writes that apply at most once
//! (settlements, charges), so trying again can never double them.

use std::future::Future;
use std::time::Duration;

use mcp_meter_plugin::ports::StoreError;

/// First wait before trying again.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Attempts before giving up (about an hour at the longest wait).
const ATTEMPTS: u32 = 130;

/// Runs `write` from a task until it succeeds, with backoff. `what` and
/// `key` name the write in logs.
pub(crate) fn in_background<F, Fut, T>(what: &'static str, key: String, mut write: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, StoreError>> + Send,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(%key, "no runtime left to finish {what}");
        return;
    };
    runtime.spawn(async move {
        let mut wait = Duration::ZERO;
        for attempt in 1..=ATTEMPTS {
            tokio::time::sleep(wait).await;
            match write().await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, %key, "{what} failed; trying again");
                    wait = if wait.is_zero() {
                        FIRST_RETRY
                    } else {
                        (wait * 2).min(MAX_RETRY)
                    };
                }
            }
        }
        tracing::error!(%key, "gave up on {what}; an operator must correct the ledger");
    });
}
