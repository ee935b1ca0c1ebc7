//! The limiters built from a validated configuration, and the decision for
//! one call of an identified customer.
//!
//! Each request-rate window is a governor GCRA limiter keyed by customer
//! id. The windows share nothing but the clock. A call must fit every window
//! that applies to it; a call that is refused uses up nothing: what the
//! windows it did fit had counted is given back, and its concurrency slot is
//! released. This module never sleeps and never reads the system time
//! except through the injected clock.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{NotUntil, Quota, RateLimiter};
use mcp_meter_plugin::McpResponse;
use mcp_meter_plugin::identity::{Caller, CustomerId, Refusal};
use mcp_meter_plugin::jsonrpc::RequestId;
use serde_json::json;

use crate::config::{LimitSet, Rate, RateLimitConfig, RateLimitConfigError};
use crate::status::RateLimitStatus;

/// The `retry_after_ms` of a refusal by the `max_concurrent` cap, in
/// milliseconds. When a slot frees up cannot be known (it depends on the
/// upstream), so a refused client is told to wait one second, which is also
/// the smallest `Retry-After` HTTP can express.
pub const CONCURRENCY_RETRY_AFTER_MS: u64 = 1000;

/// The `data.reason` and [`Refusal::reason`] of every refusal by this
/// plugin.
pub const REASON_RATE_LIMITED: &str = "rate_limited";

type CustomerLimiter<C> = RateLimiter<CustomerId, CustomerStates, C, StateInformationMiddleware>;

/// The length of a request-rate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Second,
    Minute,
    Hour,
}

impl Span {
    fn name(self) -> &'static str {
        match self {
            Span::Second => "second",
            Span::Minute => "minute",
            Span::Hour => "hour",
        }
    }

    fn quota(self, requests: NonZeroU32) -> Quota {
        match self {
            Span::Second => Quota::per_second(requests),
            Span::Minute => Quota::per_minute(requests),
            Span::Hour => Quota::per_hour(requests),
        }
    }
}

/// The GCRA state (theoretical arrival time, in nanoseconds since the
/// limiter's start; 0 for "fresh") of each customer, for one window.
///
/// governor's own `DashMapStateStore` with one addition: a limiter's state
/// can be handed back ([`CustomerStates::refund`]) when another window
/// refuses the call. The limiter owns one clone, the [`Window`] another.
#[derive(Debug, Clone, Default)]
struct CustomerStates(Arc<DashMap<CustomerId, AtomicU64>>);

impl CustomerStates {
    /// Takes back one request's worth (`weight_ns`, the window's refill
    /// interval) from a customer's state. After a request passed at `t0`
    /// the state is `max(before, t0) + weight`, so this restores a state
    /// that decides every later request exactly as the state before it.
    fn refund(&self, customer: &CustomerId, weight_ns: u64) {
        if let Some(state) = self.0.get(customer) {
            let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(weight_ns))
            });
        }
    }
}

impl StateStore for CustomerStates {
    type Key = CustomerId;

    fn measure_and_replace<T, F, E>(&self, key: &CustomerId, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.0.get(key) {
            return measure_and_replace_one(&state, f);
        }
        let state = self.0.entry(key.clone()).or_default();
        measure_and_replace_one(&state, f)
    }
}

/// governor's compare-and-swap loop over one state.
fn measure_and_replace_one<T, E>(
    state: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = state.load(Ordering::Acquire);
    loop {
        let (outcome, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
        match state.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => return Ok(outcome),
            Err(actual) => prev = actual,
        }
    }
}

impl ShrinkableKeyedStateStore<CustomerId> for CustomerStates {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.0
            .retain(|_, state| state.load(Ordering::Relaxed) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One request-rate window: `requests` per `span`, up to `burst` at once.
struct Window<C: Clock> {
    span: Span,
    requests: u32,
    burst: u32,
    /// One request's worth of time (the refill interval).
    weight: Duration,
    limiter: CustomerLimiter<C>,
    states: CustomerStates,
}

impl<C: Clock + Clone> Window<C> {
    fn build(span: Span, rate: &Rate, clock: &C) -> Option<Self> {
        let requests = NonZeroU32::new(rate.requests)?;
        let burst = NonZeroU32::new(rate.effective_burst())?;
        let quota = span.quota(requests).allow_burst(burst);
        let states = CustomerStates::default();
        Some(Self {
            span,
            requests: requests.get(),
            burst: burst.get(),
            // governor weighs a request at least 1 ns.
            weight: quota.replenish_interval().max(Duration::from_nanos(1)),
            limiter: RateLimiter::new(quota, states.clone(), clock.clone()),
            states,
        })
    }

    fn windows(
        [per_second, per_minute, per_hour]: [&Option<Rate>; 3],
        clock: &C,
    ) -> Option<Vec<Self>> {
        [
            (Span::Second, per_second),
            (Span::Minute, per_minute),
            (Span::Hour, per_hour),
        ]
        .into_iter()
        .filter_map(|(span, rate)| rate.as_ref().map(|rate| Self::build(span, rate, clock)))
        .collect()
    }
}

impl<C: Clock> Window<C> {
    fn refund(&self, customer: &CustomerId) {
        let weight_ns = u64::try_from(self.weight.as_nanos()).unwrap_or(u64::MAX);
        self.states.refund(customer, weight_ns);
    }

    /// The status after a call this window let through.
    fn passed(&self, snapshot: &StateSnapshot) -> RateLimitStatus {
        let remaining = snapshot.remaining_burst_capacity().min(self.burst);
        // governor reports whole requests, so the time until the window is
        // full again is known to within one refill interval: report the
        // upper end of that interval.
        let missing = self.burst - remaining;
        let reset = self.weight.checked_mul(missing).unwrap_or(Duration::MAX);
        RateLimitStatus {
            limit: self.burst,
            remaining,
            reset_after_ms: ceil_ms(reset),
            retry_after_ms: None,
        }
    }

    /// How long until a call would fit this window, and until the window is
    /// full again, from a refusal.
    fn refused(&self, not_until: &NotUntil<C::Instant>, now: C::Instant) -> (Duration, Duration) {
        let wait = not_until.wait_time_from(now);
        let rest = self
            .weight
            .checked_mul(self.burst - 1)
            .unwrap_or(Duration::MAX);
        (wait, wait.checked_add(rest).unwrap_or(Duration::MAX))
    }

    /// `600 requests per minute`, with the burst when it is not the whole
    /// quota.
    fn describe(&self) -> String {
        let noun = if self.requests == 1 {
            "request"
        } else {
            "requests"
        };
        let mut text = format!("{} {noun} per {}", self.requests, self.span.name());
        if self.burst != self.requests {
            text.push_str(&format!(" (burst {})", self.burst));
        }
        text
    }
}

/// Tool rates for the tools one name or pattern matches.
struct ToolRule<C: Clock> {
    pattern: String,
    windows: Vec<Window<C>>,
}

/// One plan's (or the default) limits, built.
struct PlanLimits<C: Clock> {
    windows: Vec<Window<C>>,
    tools: Vec<ToolRule<C>>,
    max_concurrent: Option<u32>,
}

impl<C: Clock + Clone> PlanLimits<C> {
    fn build(set: &LimitSet, clock: &C) -> Option<Self> {
        let windows = Window::windows([&set.per_second, &set.per_minute, &set.per_hour], clock)?;
        let tools = set
            .tools
            .iter()
            .map(|(pattern, limits)| {
                Some(ToolRule {
                    pattern: pattern.clone(),
                    windows: Window::windows(
                        [&limits.per_second, &limits.per_minute, &limits.per_hour],
                        clock,
                    )?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            windows,
            tools,
            max_concurrent: set.max_concurrent,
        })
    }
}

impl<C: Clock> PlanLimits<C> {
    fn all_windows(&self) -> impl Iterator<Item = &Window<C>> {
        self.windows
            .iter()
            .chain(self.tools.iter().flat_map(|rule| rule.windows.iter()))
    }
}

/// Whether `pattern` (where `*` stands for any run of characters, and
/// nothing else is special) matches `name`.
pub(crate) fn glob_matches(pattern: &str, name: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(head) else {
        return false;
    };
    let mut pieces = tail.split('*');
    let last = pieces.next_back().unwrap_or_default();
    for piece in pieces {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The calls in flight per customer. A customer is in the map only while
/// it has calls in flight, so the map never holds more entries than there
/// are calls in flight.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    counts: Mutex<HashMap<CustomerId, u32>>,
}

impl InFlight {
    fn try_acquire(self: &Arc<Self>, customer: &CustomerId, max: u32) -> Option<InFlightSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let current = counts.get(customer).copied().unwrap_or(0);
        if current >= max {
            return None;
        }
        counts.insert(customer.clone(), current + 1);
        Some(InFlightSlot {
            in_flight: self.clone(),
            customer: customer.clone(),
        })
    }

    fn release(&self, customer: &CustomerId) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(customer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(customer);
            }
        }
    }

    /// Customers with calls in flight.
    pub(crate) fn len(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One call's place under its customer's `max_concurrent`, given back when
/// dropped: when the call's future completes or is dropped unfinished.
#[derive(Debug)]
pub(crate) struct InFlightSlot {
    in_flight: Arc<InFlight>,
    customer: CustomerId,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.in_flight.release(&self.customer);
    }
}

/// What to do with one call.
#[derive(Debug)]
pub(crate) enum Decision {
    /// No limit applies to this customer.
    Unlimited,
    /// The call fits; hold `slot` until it is done.
    Pass {
        status: Option<RateLimitStatus>,
        slot: Option<InFlightSlot>,
    },
    /// The call does not fit.
    Refuse(Refused),
}

/// A refusal, ready to become a response.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: RateLimitStatus,
    pub(crate) window: &'static str,
    pub(crate) message: String,
    data: serde_json::Value,
}

impl Refused {
    /// The JSON-RPC error response, marked as a [`Refusal`] for the usage
    /// recorder and carrying the status for the transport.
    pub(crate) fn into_response(self, id: &RequestId, code: i64) -> McpResponse {
        let mut response = McpResponse::error(id, code, &self.message, Some(&self.data));
        response.extensions.insert(Refusal {
            reason: REASON_RATE_LIMITED,
        });
        response.extensions.insert(self.status);
        response
    }
}

/// Every plan's limiters, the in-flight counters and the clock: what the
/// layer and all its services share.
pub(crate) struct Limits<C: Clock> {
    plans: HashMap<String, PlanLimits<C>>,
    default: Option<PlanLimits<C>>,
    pub(crate) refusal_code: i64,
    in_flight: Arc<InFlight>,
    sweep_every: Duration,
    last_sweep: Mutex<C::Instant>,
    clock: C,
}

impl<C: Clock + Clone> Limits<C> {
    pub(crate) fn build(config: &RateLimitConfig, clock: C) -> Result<Self, RateLimitConfigError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(RateLimitConfigError::Invalid(problems));
        }
        // Validation guarantees every rate is positive, so building cannot
        // fail; report it as a problem rather than panic if it ever does.
        let unbuildable = || {
            RateLimitConfigError::Invalid(vec![crate::config::ConfigProblem {
                path: String::new(),
                message: "a rate could not be built".into(),
            }])
        };
        let mut plans = HashMap::with_capacity(config.plans.len());
        for (id, set) in &config.plans {
            let limits = PlanLimits::build(set, &clock).ok_or_else(unbuildable)?;
            plans.insert(id.clone(), limits);
        }
        let default = match &config.default {
            Some(set) => Some(PlanLimits::build(set, &clock).ok_or_else(unbuildable)?),
            None => None,
        };
        Ok(Self {
            plans,
            default,
            refusal_code: config.refusal_code,
            in_flight: Arc::default(),
            sweep_every: Duration::from_secs(config.idle_eviction_secs),
            last_sweep: Mutex::new(clock.now()),
            clock,
        })
    }
}

impl<C: Clock> Limits<C> {
    /// Decides one request of an identified customer: `tool` is the tool a
    /// `tools/call` names (`None` for other methods).
    pub(crate) fn admit(&self, caller: &Caller, tool: Option<&str>) -> Decision {
        let customer = &caller.customer;
        let plan_id = customer.plan_id.as_deref();
        let (limits, from_plan) = match plan_id.and_then(|id| self.plans.get(id)) {
            Some(limits) => (limits, true),
            None => match &self.default {
                Some(limits) => (limits, false),
                None => return Decision::Unlimited,
            },
        };
        self.sweep_if_due();
        let plan = PlanLabel { plan_id, from_plan };
        let key = &customer.id;

        // The cap first: a call refused by it has used nothing else.
        let slot = match limits.max_concurrent {
            Some(max) => match self.in_flight.try_acquire(key, max) {
                Some(slot) => Some(slot),
                None => return Decision::Refuse(concurrency_refusal(max, &plan)),
            },
            None => None,
        };

        let tool_rules: Vec<&ToolRule<C>> = match tool {
            Some(tool) => limits
                .tools
                .iter()
                .filter(|rule| glob_matches(&rule.pattern, tool))
                .collect(),
            None => Vec::new(),
        };
        let checks =
            limits
                .windows
                .iter()
                .map(|window| (window, None))
                .chain(tool_rules.iter().flat_map(|rule| {
                    rule.windows
                        .iter()
                        .map(|w| (w, Some(rule.pattern.as_str())))
                }));

        let mut passed: Vec<&Window<C>> = Vec::new();
        let mut tightest: Option<RateLimitStatus> = None;
        // The refusal with the longest wait: when it has passed, every
        // window would let the call through.
        let mut refusal: Option<(&Window<C>, Option<&str>, Duration, Duration)> = None;
        for (window, pattern) in checks {
            match window.limiter.check_key(key) {
                Ok(snapshot) => {
                    passed.push(window);
                    if pattern.is_none() {
                        let status = window.passed(&snapshot);
                        if tightest.is_none_or(|t| tighter(&status, &t)) {
                            tightest = Some(status);
                        }
                    }
                }
                Err(not_until) => {
                    let (wait, reset) = window.refused(&not_until, self.clock.now());
                    if refusal.is_none_or(|(_, _, longest, _)| wait > longest) {
                        refusal = Some((window, pattern, wait, reset));
                    }
                }
            }
        }
        match refusal {
            None => Decision::Pass {
                status: tightest,
                slot,
            },
            Some((window, pattern, wait, reset)) => {
                for window in passed {
                    window.refund(key);
                }
                Decision::Refuse(rate_refusal(window, pattern.zip(tool), wait, reset, &plan))
            }
        }
    }

    /// Drops the state of customers whose limits have fully recovered, at
    /// most once per `idle_eviction_secs`, on the call that finds it due.
    fn sweep_if_due(&self) {
        let mut last = match self.last_sweep.try_lock() {
            Ok(last) => last,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another call is sweeping.
            Err(TryLockError::WouldBlock) => return,
        };
        let now = self.clock.now();
        if Duration::from(now.duration_since(*last)) < self.sweep_every {
            return;
        }
        *last = now;
        for limits in self.plans.values().chain(self.default.iter()) {
            for window in limits.all_windows() {
                window.limiter.retain_recent();
                window.limiter.shrink_to_fit();
            }
        }
    }

    /// How many per-customer states are held: one per customer and window,
    /// plus one per customer with calls in flight.
    pub(crate) fn tracked_states(&self) -> usize {
        let windows: usize = self
            .plans
            .values()
            .chain(self.default.iter())
            .flat_map(|limits| limits.all_windows())
            .map(|window| window.limiter.len())
            .sum();
        windows + self.in_flight.len()
    }
}

/// Whether `a` is closer to refusing than `b`: fewer requests remaining, or
/// as many but a longer wait until the window is full again.
fn tighter(a: &RateLimitStatus, b: &RateLimitStatus) -> bool {
    (a.remaining, std::cmp::Reverse(a.reset_after_ms))
        < (b.remaining, std::cmp::Reverse(b.reset_after_ms))
}

/// Which limits a customer is under, for messages.
struct PlanLabel<'a> {
    plan_id: Option<&'a str>,
    from_plan: bool,
}

impl std::fmt::Display for PlanLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.plan_id, self.from_plan) {
            (Some(id), true) => write!(f, "plan {id}"),
            (Some(id), false) => write!(f, "plan {id} (default limits)"),
            (None, _) => f.write_str("customers without a plan (default limits)"),
        }
    }
}

fn concurrency_refusal(max: u32, plan: &PlanLabel<'_>) -> Refused {
    let noun = if max == 1 { "call" } else { "calls" };
    Refused {
        status: RateLimitStatus {
            limit: max,
            remaining: 0,
            reset_after_ms: CONCURRENCY_RETRY_AFTER_MS,
            retry_after_ms: Some(CONCURRENCY_RETRY_AFTER_MS),
        },
        window: "concurrency",
        message: format!(
            "rate limit exceeded: at most {max} concurrent {noun} for {plan}; retry in {CONCURRENCY_RETRY_AFTER_MS} ms"
        ),
        data: json!({
            "reason": REASON_RATE_LIMITED,
            "limit": max,
            "max_concurrent": max,
            "window": "concurrency",
            "retry_after_ms": CONCURRENCY_RETRY_AFTER_MS,
        }),
    }
}

fn rate_refusal<C: Clock>(
    window: &Window<C>,
    tool: Option<(&str, &str)>,
    wait: Duration,
    reset: Duration,
    plan: &PlanLabel<'_>,
) -> Refused {
    let retry_after_ms = ceil_ms(wait);
    let scope = match tool {
        Some((pattern, _)) if pattern.contains('*') => format!(" to tools matching {pattern:?}"),
        Some((pattern, _)) => format!(" to tool {pattern:?}"),
        None => String::new(),
    };
    let mut data = json!({
        "reason": REASON_RATE_LIMITED,
        "limit": window.requests,
        "burst": window.burst,
        "window": window.span.name(),
        "retry_after_ms": retry_after_ms,
    });
    if let Some((pattern, name)) = tool {
        data["tool"] = name.into();
        data["tool_pattern"] = pattern.into();
    }
    Refused {
        status: RateLimitStatus {
            limit: window.burst,
            remaining: 0,
            reset_after_ms: ceil_ms(reset),
            retry_after_ms: Some(retry_after_ms),
        },
        window: window.span.name(),
        message: format!(
            "rate limit exceeded: {}{scope} for {plan}; retry in {retry_after_ms} ms",
            window.describe()
        ),
        data,
    }
}

/// A duration in whole milliseconds, rounded up.
fn ceil_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_with_stars_only() {
        assert!(glob_matches("search_*", "search_web"));
        assert!(glob_matches("search_*", "search_"));
        assert!(!glob_matches("search_*", "research_web"));
        assert!(glob_matches("*_admin", "user_admin"));
        assert!(!glob_matches("*_admin", "user_admins"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(!glob_matches("a*a", "a"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("**", ""));
        assert!(glob_matches("echo", "echo"));
        assert!(!glob_matches("echo", "echo2"));
        assert!(!glob_matches("ech?", "echo"), "only * is special");
        assert!(glob_matches("ech?", "ech?"));
    }

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(ceil_ms(Duration::ZERO), 0);
        assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(5)), 5);
        assert_eq!(ceil_ms(Duration::from_nanos(8_571_428_571)), 8572);
        assert_eq!(ceil_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn a_refund_restores_a_fresh_state() {
        let states = CustomerStates::default();
        let id = CustomerId::new("cus_a");
        states.0.insert(id.clone(), AtomicU64::new(300));
        states.refund(&id, 100);
        assert_eq!(states.0.get(&id).unwrap().load(Ordering::Relaxed), 200);
        states.refund(&id, 1000);
        assert_eq!(states.0.get(&id).unwrap().load(Ordering::Relaxed), 0);
        // Unknown customers are left alone.
        states.refund(&CustomerId::new("cus_b"), 1);
        assert_eq!(states.0.len(), 1);
    }
}
