//! The `rate_limit` plugin: per-customer request rates, per-tool rates and a
//! cap on a customer's calls in flight, set per plan.
//!
//! The [`RateLimitLayer`] must sit inside the auth layer: it reads the
//! `Arc<Caller>` that auth puts into the request's extensions and keys every
//! limit by the caller's **customer** id, so all of a customer's sessions,
//! keys and transports share one budget and a new session resets nothing.
//! Requests without a caller (public methods such as `initialize` when
//! nobody authenticated) and notifications pass unlimited.
//!
//! For a customer, the limits are those of the customer's plan in
//! [`RateLimitConfig::plans`], or else [`RateLimitConfig::default`], or else
//! none. Then:
//!
//! * every request counts towards the plan's `per_second`, `per_minute` and
//!   `per_hour` rates (GCRA limiters from the `governor` crate: a request's
//!   worth of capacity comes back every window / `requests`, up to `burst`);
//! * a `tools/call` also counts towards the rates of every `tools` entry
//!   whose name or `*` pattern matches the tool (a pattern's budget is
//!   shared by the tools it matches);
//! * `max_concurrent` caps the customer's calls in flight; a call's slot is
//!   given back when its response is ready or when it is dropped unfinished
//!   (the client went away).
//!
//! A call that does not fit is answered, without reaching the inner
//! service, by a JSON-RPC error with code `refusal_code` (default -32030),
//! marked with a [`Refusal`](mcp_meter_plugin::identity::Refusal)
//! `rate_limited` for the usage recorder:
//!
//! ```text
//! {"code":-32030,
//!  "message":"rate limit exceeded: 600 requests per minute for plan pro; retry in 100 ms",
//!  "data":{"reason":"rate_limited","window":"minute","limit":600,"burst":600,"retry_after_ms":100}}
//! ```
//!
//! `window` is `second`, `minute`, `hour` or `concurrency`; a tool limit
//! adds `tool` (the tool called) and `tool_pattern` (the `tools` entry); the
//! concurrency cap adds `max_concurrent` and always answers
//! `retry_after_ms` [`CONCURRENCY_RETRY_AFTER_MS`]. A rate refusal's
//! `retry_after_ms` is exact, rounded up to the millisecond: after that
//! long, the same call fits every window (if nothing else was called). A
//! refused call uses up nothing: what the windows it fitted had counted is
//! given back.
//!
//! Every response to an identified customer under limits carries a
//! [`RateLimitStatus`] in its extensions, which
//! [`RateLimitStatus::headers`] turns into `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset` and `Retry-After`.
//!
//! Per-customer state lives in memory, per process. State of customers whose
//! limits have fully recovered is dropped (which never changes a decision)
//! at most once every `idle_eviction_secs`, by the first call after that
//! time; no task runs in the background.
//!
//! # Configuration
//!
//! The app embeds a [`LimitSet`] per plan; on its own, the section reads:
//!
//! ```toml
//! refusal_code = -32030        # optional; JSON-RPC error code of a refusal
//! idle_eviction_secs = 600     # optional
//!
//! [default]                    # customers whose plan has no entry
//! per_minute = { requests = 60 }
//!
//! [plans.pro]
//! per_second = { requests = 20 }
//! per_minute = { requests = 600, burst = 50 }   # burst defaults to requests
//! per_hour = { requests = 10000 }
//! max_concurrent = 4
//!
//! [plans.pro.tools."search_*"]  # `*` matches any run of characters
//! per_minute = { requests = 30 }
//!
//! [plans.pro.tools.generate_image]
//! per_hour = { requests = 100, burst = 10 }
//! ```
//!
//! ```
//! use mcp_meter_plugin::{LayerPlugin, Plugin};
//! use mcp_meter_rate_limit::{RateLimitConfig, RateLimitLayer};
//!
//! let config: RateLimitConfig = toml::from_str(
//!     r#"
//!     [plans.pro]
//!     per_minute = { requests = 600, burst = 50 }
//!     max_concurrent = 4
//!
//!     [plans.pro.tools."search_*"]
//!     per_minute = { requests = 30 }
//!     "#,
//! )
//! .unwrap();
//! assert!(config.validate().is_empty());
//! let plugin = LayerPlugin::new("rate_limit", RateLimitLayer::new(&config).unwrap());
//! assert_eq!(plugin.name(), "rate_limit");
//!
//! // Every problem is reported, with its path in the section.
//! let bad: RateLimitConfig =
//!     toml::from_str("[plans.pro]\nper_minute = { requests = 0, burst = 0 }").unwrap();
//! let problems: Vec<String> = bad.validate().iter().map(|p| p.to_string()).collect();
//! assert_eq!(problems[0], "plans.pro.per_minute.requests: must be at least 1");
//! assert!(RateLimitLayer::new(&bad).is_err());
//! ```
#![warn(missing_docs, unreachable_pub)]

mod config;
mod layer;
mod limits;
mod status;

#[cfg(test)]
mod tests;

pub use config::{
    ConfigProblem, DEFAULT_IDLE_EVICTION_SECS, DEFAULT_REFUSAL_CODE, LimitSet, Rate,
    RateLimitConfig, RateLimitConfigError, ToolLimits,
};
pub use layer::{RateLimitLayer, RateLimitService};
pub use limits::{CONCURRENCY_RETRY_AFTER_MS, REASON_RATE_LIMITED};
pub use status::{RateLimitStatus, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

/// The clocks the layer can run on, from the `governor` crate:
/// [`MonotonicClock`](clock::MonotonicClock) in production (what
/// [`RateLimitLayer::new`] uses), [`FakeRelativeClock`](clock::FakeRelativeClock)
/// in tests (with [`RateLimitLayer::with_clock`]).
pub mod clock {
    pub use governor::clock::{Clock, FakeRelativeClock, MonotonicClock, Reference};
}
