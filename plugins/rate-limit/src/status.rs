//! What a client may know about its limits after a call, typed, for the
//! HTTP transport to turn into `X-RateLimit-*` and `Retry-After` headers.
//!
//! This module only describes; it never decides whether a call passes.

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};

/// `X-RateLimit-Limit`: the limit's burst capacity, in requests.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests that may still be made at once.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the limit is fully replenished.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The state of one limit after a call, put into the response's
/// extensions for every call of an identified customer that a limit
/// applies to.
///
/// * On a call that passed: the customer's tightest request-rate window
///   (the one with the fewest remaining requests; on a tie, the one that
///   takes longest to refill). A customer whose limits have no
///   request-rate window (only `max_concurrent` or tool limits) gets no
///   status on calls that pass.
/// * On a refused call: the limit that refused it, with `remaining: 0` and
///   `retry_after_ms` set. For the concurrency cap, `limit` is
///   `max_concurrent` and both `reset_after_ms` and `retry_after_ms` are
///   the fixed hint [`crate::CONCURRENCY_RETRY_AFTER_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// The window's burst capacity, in requests: how many may come at once
    /// after a rest (the `burst` of its rate, or else its `requests`).
    pub limit: u32,
    /// How many more requests would pass right now, in requests.
    pub remaining: u32,
    /// How long until `remaining` is back to `limit` if no request comes,
    /// in milliseconds, rounded up. Exact on a refusal; on a call that
    /// passed it may be up to one refill interval (window / `requests`)
    /// longer than the exact time, because the limiter reports whole
    /// requests only.
    pub reset_after_ms: u64,
    /// On a refusal, how long until the same call would pass, in
    /// milliseconds, rounded up; `None` when the call passed.
    pub retry_after_ms: Option<u64>,
}

impl RateLimitStatus {
    /// The HTTP headers for this status: `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining`, `X-RateLimit-Reset` (whole seconds, rounded
    /// up) and, on a refusal only, `Retry-After` (whole seconds, rounded
    /// up), in that order.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![
            (X_RATELIMIT_LIMIT, HeaderValue::from(self.limit)),
            (X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining)),
            (
                X_RATELIMIT_RESET,
                HeaderValue::from(self.reset_after_ms.div_ceil(1000)),
            ),
        ];
        if let Some(retry_after_ms) = self.retry_after_ms {
            headers.push((
                RETRY_AFTER,
                HeaderValue::from(retry_after_ms.div_ceil(1000)),
            ));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(headers: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn headers_of_a_call_that_passed() {
        let status = RateLimitStatus {
            limit: 50,
            remaining: 49,
            reset_after_ms: 100,
            retry_after_ms: None,
        };
        assert_eq!(
            text(&status.headers()),
            pairs(&[
                ("x-ratelimit-limit", "50"),
                ("x-ratelimit-remaining", "49"),
                ("x-ratelimit-reset", "1"),
            ])
        );
    }

    #[test]
    fn headers_of_a_refusal_round_up_to_whole_seconds() {
        let status = RateLimitStatus {
            limit: 600,
            remaining: 0,
            reset_after_ms: 5001,
            retry_after_ms: Some(1200),
        };
        assert_eq!(
            text(&status.headers()),
            pairs(&[
                ("x-ratelimit-limit", "600"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "6"),
                ("retry-after", "2"),
            ])
        );
        let exact = RateLimitStatus {
            limit: 1,
            remaining: 0,
            reset_after_ms: 3000,
            retry_after_ms: Some(3000),
        };
        assert_eq!(
            text(&exact.headers()),
            pairs(&[
                ("x-ratelimit-limit", "1"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "3"),
                ("retry-after", "3"),
            ])
        );
    }

    #[test]
    fn a_full_window_resets_now() {
        let status = RateLimitStatus {
            limit: 10,
            remaining: 10,
            reset_after_ms: 0,
            retry_after_ms: None,
        };
        assert_eq!(status.headers()[2].1, "0");
    }
}
