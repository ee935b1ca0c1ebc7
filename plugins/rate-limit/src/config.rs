//! The rate-limit configuration: plain structs read from TOML, and a
//! validation pass that reports every problem with its key path.
//!
//! Nothing here builds a limiter or reads a clock; [`crate::RateLimitLayer`]
//! does that from a configuration that validates cleanly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

/// The JSON-RPC error code of a refusal unless `refusal_code` says
/// otherwise: in the `-32000..=-32099` range JSON-RPC leaves to servers.
pub const DEFAULT_REFUSAL_CODE: i64 = -32030;

/// How often, at most, idle per-customer state is dropped unless
/// `idle_eviction_secs` says otherwise, in seconds.
pub const DEFAULT_IDLE_EVICTION_SECS: u64 = 600;

/// The rate limits of every plan, the limits of customers whose plan has no
/// entry, and how refusals look.
///
/// Every field has a default, so an empty table is valid (and limits
/// nothing). Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The limits of each plan, by plan id (the customer's `plan_id`). A
    /// plan with an entry uses exactly that entry (an empty entry means
    /// "unlimited"), never `default`.
    pub plans: HashMap<String, LimitSet>,
    /// The limits of customers whose plan has no entry in `plans`, and of
    /// customers without a plan. Without it such customers are unlimited.
    pub default: Option<LimitSet>,
    /// The JSON-RPC error code of a refusal. JSON-RPC reserves
    /// `-32768..=-32100` for its own errors; `-32000..=-32099` is for
    /// servers. Default: `-32030`.
    pub refusal_code: i64,
    /// How often, at most, the per-customer state of customers whose limits
    /// have fully recovered (they have not called for at least the longest
    /// window) is dropped to free memory, in seconds. Dropping such state
    /// never changes a decision. Default: 600. At least 1.
    pub idle_eviction_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            plans: HashMap::new(),
            default: None,
            refusal_code: DEFAULT_REFUSAL_CODE,
            idle_eviction_secs: DEFAULT_IDLE_EVICTION_SECS,
        }
    }
}

/// The limits of one plan: request rates per customer, a cap on a
/// customer's calls in flight, and rates for some tools.
///
/// Every field is optional; an empty set limits nothing. Unknown fields are
/// rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSet {
    /// Requests per second per customer, over all methods.
    pub per_second: Option<Rate>,
    /// Requests per minute per customer, over all methods.
    pub per_minute: Option<Rate>,
    /// Requests per hour per customer, over all methods.
    pub per_hour: Option<Rate>,
    /// The most requests of one customer in flight at once (all methods,
    /// all sessions together), in requests. At least 1.
    pub max_concurrent: Option<u32>,
    /// Rates of `tools/call` for some tools, by tool name or by a pattern
    /// where `*` stands for any run of characters (`search_*`). A pattern's
    /// budget is shared by all the tools it matches; a call must fit every
    /// pattern that matches its tool (in addition to the customer's rates).
    pub tools: BTreeMap<String, ToolLimits>,
}

/// The rates of `tools/call` for the tools one name or pattern matches.
/// Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolLimits {
    /// Calls per second per customer to the matching tools.
    pub per_second: Option<Rate>,
    /// Calls per minute per customer to the matching tools.
    pub per_minute: Option<Rate>,
    /// Calls per hour per customer to the matching tools.
    pub per_hour: Option<Rate>,
}

impl ToolLimits {
    /// Whether no rate is set.
    pub fn is_empty(&self) -> bool {
        self.per_second.is_none() && self.per_minute.is_none() && self.per_hour.is_none()
    }
}

/// A request rate for one window: `requests` per window, of which up to
/// `burst` may come at once. Unknown fields are rejected.
///
/// The limit is a GCRA (a leaky bucket): one request's worth of capacity
/// comes back every window / `requests` (100 ms for 600 per minute), up to
/// `burst` requests' worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per window, in requests. At least 1.
    pub requests: u32,
    /// The most requests that may come at once, in requests. Default: the
    /// whole `requests`. At least 1; it may be larger than `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    /// `requests` per window, with the default burst.
    pub fn new(requests: u32) -> Self {
        Self {
            requests,
            burst: None,
        }
    }

    /// `requests` per window, up to `burst` at once.
    pub fn with_burst(requests: u32, burst: u32) -> Self {
        Self {
            requests,
            burst: Some(burst),
        }
    }

    /// The burst in force: `burst`, or else `requests`.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

/// One problem in a configuration, at a key path relative to the section
/// that was validated (`per_minute.requests`, `tools["search_*"].per_second.burst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: dotted keys, with `["…"]` for a key that is not a bare TOML
    /// key (a tool pattern such as `search_*`).
    pub path: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl ConfigProblem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem seen from an enclosing section:
    /// `problem.under("plans.pro.rate_limit")` turns `per_minute.requests`
    /// into `plans.pro.rate_limit.per_minute.requests`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration the layer cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitConfigError {
    /// Validation found these problems (all of them).
    #[error("invalid rate-limit configuration: {}", list(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl RateLimitConfig {
    /// Every problem in the configuration, in key order (plans sorted by
    /// id), each with its path relative to this section:
    /// `plans.pro.per_minute.requests: must be at least 1`.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut ids: Vec<&String> = self.plans.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(set) = self.plans.get(id) {
                let prefix = format!("plans{}", key_segment(id));
                problems.extend(set.validate().into_iter().map(|p| p.under(&prefix)));
            }
        }
        if let Some(set) = &self.default {
            problems.extend(set.validate().into_iter().map(|p| p.under("default")));
        }
        if (-32768..=-32100).contains(&self.refusal_code) {
            problems.push(ConfigProblem::new(
                "refusal_code",
                format!(
                    "{} is reserved by JSON-RPC for its own errors; use a code from -32000 to -32099 (the default is {DEFAULT_REFUSAL_CODE}) or one outside -32768 to -32000",
                    self.refusal_code
                ),
            ));
        }
        if self.idle_eviction_secs == 0 {
            problems.push(ConfigProblem::new(
                "idle_eviction_secs",
                "must be at least 1",
            ));
        }
        problems
    }
}

impl LimitSet {
    /// Every problem in this set, with paths relative to it
    /// (`per_minute.requests`, `tools["search_*"].per_second.burst`), so
    /// that an application can put it under its own key with
    /// [`ConfigProblem::under`].
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        check_windows(
            "",
            [&self.per_second, &self.per_minute, &self.per_hour],
            &mut problems,
        );
        if self.max_concurrent == Some(0) {
            problems.push(ConfigProblem::new(
                "max_concurrent",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        for (pattern, limits) in &self.tools {
            let path = format!("tools{}", key_segment(pattern));
            if pattern.is_empty() {
                problems.push(ConfigProblem::new(
                    path.as_str(),
                    "a tool name or pattern must not be empty",
                ));
            }
            if limits.is_empty() {
                problems.push(ConfigProblem::new(
                    path.as_str(),
                    "sets no limit; give per_second, per_minute or per_hour",
                ));
            }
            check_windows(
                &path,
                [&limits.per_second, &limits.per_minute, &limits.per_hour],
                &mut problems,
            );
        }
        problems
    }
}

fn check_windows(prefix: &str, rates: [&Option<Rate>; 3], problems: &mut Vec<ConfigProblem>) {
    for (name, rate) in ["per_second", "per_minute", "per_hour"].iter().zip(rates) {
        let Some(rate) = rate else { continue };
        let path = join(prefix, name);
        if rate.requests == 0 {
            problems.push(ConfigProblem::new(
                join(&path, "requests"),
                "must be at least 1",
            ));
        }
        if rate.burst == Some(0) {
            problems.push(ConfigProblem::new(
                join(&path, "burst"),
                "must be at least 1 (leave it out for a burst of the whole `requests`)",
            ));
        }
    }
}

/// `prefix` and `path` joined by a dot, unless either is empty or `path`
/// starts with a `[…]` segment.
fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else if path.is_empty() || path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

/// A map key as a path segment: `.pro` for a bare TOML key, `["search_*"]`
/// otherwise.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        format!(".{key}")
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("\"{key}\""));
        format!("[{quoted}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RateLimitConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_table_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, RateLimitConfig::default());
        assert_eq!(config.refusal_code, -32030);
        assert_eq!(config.idle_eviction_secs, 600);
        assert!(config.validate().is_empty());
    }

    #[test]
    fn reads_the_documented_shape() {
        let config = parse(
            r#"
            refusal_code = -32031
            idle_eviction_secs = 120

            [default]
            per_minute = { requests = 60 }

            [plans.pro]
            per_second = { requests = 20 }
            per_minute = { requests = 600, burst = 50 }
            per_hour = { requests = 10000 }
            max_concurrent = 4

            [plans.pro.tools."search_*"]
            per_minute = { requests = 30 }

            [plans.pro.tools.generate_image]
            per_hour = { requests = 100, burst = 10 }
            "#,
        )
        .unwrap();
        assert_eq!(config.refusal_code, -32031);
        assert_eq!(config.idle_eviction_secs, 120);
        assert_eq!(
            config.default.as_ref().unwrap().per_minute,
            Some(Rate::new(60))
        );
        let pro = &config.plans["pro"];
        assert_eq!(pro.per_second, Some(Rate::new(20)));
        assert_eq!(pro.per_minute, Some(Rate::with_burst(600, 50)));
        assert_eq!(pro.per_minute.unwrap().effective_burst(), 50);
        assert_eq!(pro.per_hour.unwrap().effective_burst(), 10000);
        assert_eq!(pro.max_concurrent, Some(4));
        assert_eq!(pro.tools["search_*"].per_minute, Some(Rate::new(30)));
        assert_eq!(
            pro.tools["generate_image"].per_hour,
            Some(Rate::with_burst(100, 10))
        );
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for text in [
            "refusal = 1",
            "[plans.pro]\nrequests_per_minute = 5",
            "[plans.pro]\nper_minute = { requests = 5, brust = 2 }",
            "[plans.pro.tools.echo]\nmax_concurrent = 1",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn negative_numbers_are_type_errors() {
        assert!(parse("[plans.pro]\nper_minute = { requests = -1 }").is_err());
    }

    #[test]
    fn validation_lists_every_problem_with_its_path() {
        let config = parse(
            r#"
            refusal_code = -32600
            idle_eviction_secs = 0

            [default]
            per_hour = { requests = 0 }

            [plans.pro]
            per_second = { requests = 0, burst = 0 }
            per_minute = { requests = 600, burst = 0 }
            max_concurrent = 0

            [plans.pro.tools."search_*"]
            per_second = { requests = 5, burst = 0 }

            [plans.pro.tools.echo]

            [plans."team plan".tools.""]
            per_minute = { requests = 1 }
            "#,
        )
        .unwrap();
        let problems: Vec<String> = config.validate().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            vec![
                "plans.pro.per_second.requests: must be at least 1",
                "plans.pro.per_second.burst: must be at least 1 (leave it out for a burst of the whole `requests`)",
                "plans.pro.per_minute.burst: must be at least 1 (leave it out for a burst of the whole `requests`)",
                "plans.pro.max_concurrent: must be at least 1 (leave it out for no cap)",
                "plans.pro.tools.echo: sets no limit; give per_second, per_minute or per_hour",
                "plans.pro.tools[\"search_*\"].per_second.burst: must be at least 1 (leave it out for a burst of the whole `requests`)",
                "plans[\"team plan\"].tools[\"\"]: a tool name or pattern must not be empty",
                "default.per_hour.requests: must be at least 1",
                "refusal_code: -32600 is reserved by JSON-RPC for its own errors; use a code from -32000 to -32099 (the default is -32030) or one outside -32768 to -32000",
                "idle_eviction_secs: must be at least 1",
            ]
        );
    }

    #[test]
    fn a_limit_set_validates_relative_to_itself() {
        let set: LimitSet = toml::from_str(
            r#"
            per_minute = { requests = 0 }
            [tools."search_*"]
            per_second = { requests = 1, burst = 0 }
            "#,
        )
        .unwrap();
        let problems = set.validate();
        assert_eq!(problems[0].path, "per_minute.requests");
        assert_eq!(problems[0].message, "must be at least 1");
        assert_eq!(problems[1].path, "tools[\"search_*\"].per_second.burst");
        assert_eq!(
            problems[0]
                .clone()
                .under("plans.pro.rate_limit")
                .to_string(),
            "plans.pro.rate_limit.per_minute.requests: must be at least 1"
        );
        assert_eq!(
            problems[1].clone().under("plans.pro.rate_limit").path,
            "plans.pro.rate_limit.tools[\"search_*\"].per_second.burst"
        );
    }

    #[test]
    fn reserved_and_server_codes() {
        for (code, ok) in [
            (-32030, true),
            (-32000, true),
            (-32099, true),
            (-32100, false),
            (-32768, false),
            (-32769, true),
            (429, true),
        ] {
            let config = RateLimitConfig {
                refusal_code: code,
                ..RateLimitConfig::default()
            };
            assert_eq!(config.validate().is_empty(), ok, "{code}");
        }
    }
}
