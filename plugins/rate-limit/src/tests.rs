//! The layer end to end: requests through `oneshot` to a fake upstream,
//! time moved by a fake clock, never by sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mcp_meter_plugin::identity::{
    Caller, CredentialKind, Customer, CustomerId, CustomerStatus, KeyId, Refusal, UnixMillis,
};
use mcp_meter_plugin::jsonrpc::{Message, RequestId};
use mcp_meter_plugin::{
    BoxMcpService, LayerPlugin, McpRequest, McpResponse, Plugin, ProxyError, SessionId,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};

use crate::clock::FakeRelativeClock;
use crate::{RateLimitConfig, RateLimitLayer, RateLimitStatus};

type CallFuture = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

fn caller(id: &str, plan: Option<&str>) -> Arc<Caller> {
    Arc::new(Caller {
        customer: Customer {
            id: CustomerId::new(id),
            name: id.to_owned(),
            email: None,
            plan_id: plan.map(str::to_owned),
            status: CustomerStatus::Active,
            stripe_customer_id: None,
            external_subject: None,
            metadata: serde_json::Map::new(),
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
        },
        credential: CredentialKind::ApiKey(KeyId::new("key_1")),
    })
}

fn message(value: Value) -> McpRequest {
    McpRequest::new(Message::from_json(&value).unwrap())
}

/// A request in session `s1`; `tool` makes it a `tools/call`.
fn request(who: Option<&Arc<Caller>>, method: &str, tool: Option<&str>) -> McpRequest {
    request_in(who, method, tool, "s1")
}

fn request_in(
    who: Option<&Arc<Caller>>,
    method: &str,
    tool: Option<&str>,
    session: &str,
) -> McpRequest {
    let params = match tool {
        Some(tool) => json!({ "name": tool, "arguments": {} }),
        None => json!({}),
    };
    let mut request =
        message(json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }));
    request.session.id = Some(SessionId::new(session));
    if let Some(who) = who {
        request.extensions.insert(who.clone());
    }
    request
}

fn tool_call(who: &Arc<Caller>, tool: &str) -> McpRequest {
    request(Some(who), "tools/call", Some(tool))
}

fn ping(who: &Arc<Caller>) -> McpRequest {
    request(Some(who), "ping", None)
}

fn ok_response(request: &McpRequest) -> McpResponse {
    // Notifications get an answer too: the fake upstream answers anything.
    let id = request
        .message
        .id()
        .cloned()
        .unwrap_or_else(|| RequestId::number(0));
    let result = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    McpResponse::result(&id, &result)
}

/// The layer on a fake clock over an upstream that answers at once and
/// counts what reaches it.
struct Harness {
    layer: RateLimitLayer<FakeRelativeClock>,
    clock: FakeRelativeClock,
    reached: Arc<AtomicUsize>,
    service: BoxMcpService,
}

impl Harness {
    fn new(config: &str) -> Self {
        let config: RateLimitConfig = toml::from_str(config).unwrap();
        let clock = FakeRelativeClock::default();
        let layer = RateLimitLayer::with_clock(&config, clock.clone()).unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let upstream = service_fn(move |request: McpRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, ProxyError>(ok_response(&request)) }
        });
        let service = BoxMcpService::new(layer.layer(upstream));
        Self {
            layer,
            clock,
            reached,
            service,
        }
    }

    async fn send(&self, request: McpRequest) -> McpResponse {
        self.service.clone().oneshot(request).await.unwrap()
    }

    fn advance_ms(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }
}

fn json_of(response: &McpResponse) -> Value {
    serde_json::from_slice(response.message.as_bytes()).unwrap()
}

fn error_of(response: &McpResponse) -> Option<Value> {
    json_of(response).get("error").cloned()
}

fn status_of(response: &McpResponse) -> Option<RateLimitStatus> {
    response.extensions.get::<RateLimitStatus>().copied()
}

fn assert_passed(response: &McpResponse) {
    assert!(
        error_of(response).is_none(),
        "expected a result, got {}",
        json_of(response)
    );
}

/// The error of a refusal, after checking that it is marked as one.
fn refusal_of(response: &McpResponse) -> Value {
    let error = error_of(response).expect("a refusal");
    assert_eq!(
        response.extensions.get::<Refusal>(),
        Some(&Refusal {
            reason: "rate_limited"
        })
    );
    assert_eq!(error["data"]["reason"], "rate_limited");
    error
}

fn poll_once(future: &mut CallFuture) -> Poll<Result<McpResponse, ProxyError>> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn burst_then_refusal_with_exact_retry_after() {
    // 7 per minute: one request's worth comes back every 8571.428571 ms.
    let h = Harness::new("[plans.pro]\nper_minute = { requests = 7 }");
    let pro = caller("cus_a", Some("pro"));
    for remaining in (0..7).rev() {
        let response = h.send(ping(&pro)).await;
        assert_passed(&response);
        assert_eq!(status_of(&response).unwrap().remaining, remaining);
    }
    let refused = h.send(ping(&pro)).await;
    let error = refusal_of(&refused);
    assert_eq!(error["code"], -32030);
    assert_eq!(
        error["message"],
        "rate limit exceeded: 7 requests per minute for plan pro; retry in 8572 ms"
    );
    assert_eq!(
        error["data"],
        json!({
            "reason": "rate_limited",
            "limit": 7,
            "burst": 7,
            "window": "minute",
            "retry_after_ms": 8572,
        })
    );
    assert_eq!(
        status_of(&refused),
        Some(RateLimitStatus {
            limit: 7,
            remaining: 0,
            // 8571.428571 ms + 6 × 8571.428571 ms, rounded up.
            reset_after_ms: 60_000,
            retry_after_ms: Some(8572),
        })
    );
    assert_eq!(h.reached(), 7, "a refusal never reaches the upstream");

    h.advance_ms(8571);
    let early = h.send(ping(&pro)).await;
    assert_eq!(refusal_of(&early)["data"]["retry_after_ms"], 1);
    h.advance_ms(1);
    assert_passed(&h.send(ping(&pro)).await);
    assert_eq!(h.reached(), 8);
}

#[tokio::test]
async fn per_minute_window_with_a_burst() {
    let h = Harness::new("[plans.pro]\nper_minute = { requests = 600, burst = 50 }");
    let pro = caller("cus_a", Some("pro"));
    let first = h.send(ping(&pro)).await;
    assert_eq!(
        status_of(&first),
        Some(RateLimitStatus {
            limit: 50,
            remaining: 49,
            reset_after_ms: 100,
            retry_after_ms: None,
        })
    );
    for _ in 1..49 {
        assert_passed(&h.send(ping(&pro)).await);
    }
    let last = h.send(ping(&pro)).await;
    assert_eq!(
        status_of(&last),
        Some(RateLimitStatus {
            limit: 50,
            remaining: 0,
            reset_after_ms: 5000,
            retry_after_ms: None,
        })
    );
    let refused = h.send(ping(&pro)).await;
    let error = refusal_of(&refused);
    assert_eq!(
        error["message"],
        "rate limit exceeded: 600 requests per minute (burst 50) for plan pro; retry in 100 ms"
    );
    assert_eq!(error["data"]["limit"], 600);
    assert_eq!(error["data"]["burst"], 50);
    assert_eq!(error["data"]["window"], "minute");
    assert_eq!(status_of(&refused).unwrap().reset_after_ms, 5000);

    // One request's worth comes back every 100 ms.
    h.advance_ms(100);
    assert_passed(&h.send(ping(&pro)).await);
    let again = h.send(ping(&pro)).await;
    assert_eq!(refusal_of(&again)["data"]["retry_after_ms"], 100);
    assert_eq!(h.reached(), 51);
}

#[tokio::test]
async fn the_tightest_window_is_reported_and_a_refusal_uses_nothing() {
    let h =
        Harness::new("[plans.pro]\nper_second = { requests = 10 }\nper_hour = { requests = 12 }");
    let pro = caller("cus_a", Some("pro"));
    let first = h.send(ping(&pro)).await;
    assert_eq!(
        status_of(&first),
        Some(RateLimitStatus {
            limit: 10,
            remaining: 9,
            reset_after_ms: 100,
            retry_after_ms: None,
        })
    );
    for _ in 1..10 {
        assert_passed(&h.send(ping(&pro)).await);
    }
    // The second is used up: refused, and the hour window (which had room)
    // is given back what it counted.
    let refused = h.send(ping(&pro)).await;
    let error = refusal_of(&refused);
    assert_eq!(error["data"]["window"], "second");
    assert_eq!(error["data"]["retry_after_ms"], 100);

    h.advance_ms(1000);
    let response = h.send(ping(&pro)).await;
    // Now the hour is tighter: 11 of 12 used (the refusal did not count).
    // The exact time until it is full is 3299 s; the status reports the
    // upper end of the refill interval it lies in.
    assert_eq!(
        status_of(&response),
        Some(RateLimitStatus {
            limit: 12,
            remaining: 1,
            reset_after_ms: 3_300_000,
            retry_after_ms: None,
        })
    );
    assert_passed(&h.send(ping(&pro)).await);
    let refused = h.send(ping(&pro)).await;
    let error = refusal_of(&refused);
    assert_eq!(
        error["message"],
        "rate limit exceeded: 12 requests per hour for plan pro; retry in 299000 ms"
    );
    assert_eq!(
        status_of(&refused),
        Some(RateLimitStatus {
            limit: 12,
            remaining: 0,
            reset_after_ms: 3_599_000,
            retry_after_ms: Some(299_000),
        })
    );
}

#[tokio::test]
async fn retry_after_covers_every_window_that_refuses() {
    let h =
        Harness::new("[plans.pro]\nper_second = { requests = 1 }\nper_minute = { requests = 2 }");
    let pro = caller("cus_a", Some("pro"));
    assert_passed(&h.send(ping(&pro)).await);
    h.advance_ms(1000);
    assert_passed(&h.send(ping(&pro)).await);
    // Both windows refuse; the answer names the one with the longer wait,
    // after which both have room.
    let refused = h.send(ping(&pro)).await;
    let error = refusal_of(&refused);
    assert_eq!(error["data"]["window"], "minute");
    assert_eq!(error["data"]["retry_after_ms"], 29_000);
    h.advance_ms(28_999);
    refusal_of(&h.send(ping(&pro)).await);
    h.advance_ms(1);
    assert_passed(&h.send(ping(&pro)).await);
}

#[tokio::test]
async fn tool_limits_match_globs_and_leave_other_tools_alone() {
    let h = Harness::new(
        r#"
        [plans.pro.tools."search_*"]
        per_minute = { requests = 2 }
        [plans.pro.tools.search_web]
        per_hour = { requests = 1 }
        "#,
    );
    let pro = caller("cus_a", Some("pro"));
    let first = h.send(tool_call(&pro, "search_web")).await;
    assert_passed(&first);
    assert_eq!(
        status_of(&first),
        None,
        "no customer-level window to report"
    );

    // Both entries match search_web; its own hourly limit refuses.
    let refused = h.send(tool_call(&pro, "search_web")).await;
    let error = refusal_of(&refused);
    assert_eq!(
        error["message"],
        "rate limit exceeded: 1 request per hour to tool \"search_web\" for plan pro; retry in 3600000 ms"
    );
    assert_eq!(
        error["data"],
        json!({
            "reason": "rate_limited",
            "limit": 1,
            "burst": 1,
            "window": "hour",
            "tool": "search_web",
            "tool_pattern": "search_web",
            "retry_after_ms": 3_600_000,
        })
    );

    // The refused call did not use up the shared search_* budget.
    assert_passed(&h.send(tool_call(&pro, "search_news")).await);
    let refused = h.send(tool_call(&pro, "search_news")).await;
    let error = refusal_of(&refused);
    assert_eq!(
        error["message"],
        "rate limit exceeded: 2 requests per minute to tools matching \"search_*\" for plan pro; retry in 30000 ms"
    );
    assert_eq!(error["data"]["tool"], "search_news");
    assert_eq!(error["data"]["tool_pattern"], "search_*");
    assert_eq!(status_of(&refused).unwrap().retry_after_ms, Some(30_000));

    // Other tools and other methods are not limited.
    for _ in 0..20 {
        assert_passed(&h.send(tool_call(&pro, "echo")).await);
        assert_passed(&h.send(tool_call(&pro, "research")).await);
        assert_passed(&h.send(request(Some(&pro), "tools/list", None)).await);
    }
}

#[tokio::test]
async fn tool_calls_also_count_towards_the_customer_rate() {
    let h = Harness::new(
        r#"
        [plans.pro]
        per_minute = { requests = 3 }
        [plans.pro.tools.search]
        per_minute = { requests = 10 }
        "#,
    );
    let pro = caller("cus_a", Some("pro"));
    assert_passed(&h.send(tool_call(&pro, "search")).await);
    assert_passed(&h.send(tool_call(&pro, "echo")).await);
    let third = h.send(ping(&pro)).await;
    assert_eq!(status_of(&third).unwrap().remaining, 0);
    let refused = h.send(tool_call(&pro, "search")).await;
    let error = refusal_of(&refused);
    assert_eq!(error["data"]["window"], "minute");
    assert_eq!(error["data"].get("tool"), None, "the customer rate refused");
}

#[tokio::test]
async fn the_concurrency_cap_frees_a_slot_when_a_call_completes_or_is_dropped() {
    let config: RateLimitConfig = toml::from_str("[plans.pro]\nmax_concurrent = 2").unwrap();
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::with_clock(&config, clock).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let gate = gate.clone();
        let entered = entered.clone();
        service_fn(move |request: McpRequest| {
            let gate = gate.clone();
            entered.fetch_add(1, Ordering::SeqCst);
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, ProxyError>(ok_response(&request))
            }
        })
    };
    let service = BoxMcpService::new(layer.layer(upstream));
    let pro = caller("cus_a", Some("pro"));
    let start = |request: McpRequest| -> CallFuture { Box::pin(service.clone().oneshot(request)) };

    let mut first = start(ping(&pro));
    let mut second = start(request_in(Some(&pro), "ping", None, "s2"));
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut second).is_pending());
    assert_eq!(entered.load(Ordering::SeqCst), 2);

    let mut third = start(ping(&pro));
    let Poll::Ready(Ok(refused)) = poll_once(&mut third) else {
        panic!("the third call is answered at once");
    };
    let error = refusal_of(&refused);
    assert_eq!(
        error["message"],
        "rate limit exceeded: at most 2 concurrent calls for plan pro; retry in 1000 ms"
    );
    assert_eq!(
        error["data"],
        json!({
            "reason": "rate_limited",
            "limit": 2,
            "max_concurrent": 2,
            "window": "concurrency",
            "retry_after_ms": 1000,
        })
    );
    assert_eq!(
        status_of(&refused),
        Some(RateLimitStatus {
            limit: 2,
            remaining: 0,
            reset_after_ms: 1000,
            retry_after_ms: Some(1000),
        })
    );
    assert_eq!(entered.load(Ordering::SeqCst), 2);

    // Another customer has its own slots.
    let other = caller("cus_b", Some("pro"));
    let mut elsewhere = start(ping(&other));
    assert!(poll_once(&mut elsewhere).is_pending());
    drop(elsewhere);

    // The first call completes: its slot is free again.
    gate.add_permits(1);
    assert_passed(&first.await.unwrap());
    let mut fourth = start(ping(&pro));
    assert!(poll_once(&mut fourth).is_pending());
    let mut fifth = start(ping(&pro));
    assert!(poll_once(&mut fifth).is_ready(), "two in flight again");

    // The client of the second call goes away: its slot is free too.
    drop(second);
    let mut sixth = start(ping(&pro));
    assert!(poll_once(&mut sixth).is_pending());

    drop(fourth);
    drop(sixth);
    assert_eq!(
        layer.tracked_states(),
        0,
        "no in-flight entry is left behind"
    );
}

#[tokio::test]
async fn a_fault_of_the_upstream_passes_through_and_frees_the_slot() {
    let config: RateLimitConfig =
        toml::from_str("[plans.pro]\nmax_concurrent = 1\nper_minute = { requests = 5 }").unwrap();
    let layer = RateLimitLayer::with_clock(&config, FakeRelativeClock::default()).unwrap();
    let upstream = service_fn(|_request: McpRequest| async {
        Err::<McpResponse, _>(ProxyError::Timeout {
            after: Duration::from_secs(1),
        })
    });
    let service = BoxMcpService::new(layer.layer(upstream));
    let pro = caller("cus_a", Some("pro"));
    for _ in 0..3 {
        let result = service.clone().oneshot(ping(&pro)).await;
        assert!(matches!(result, Err(ProxyError::Timeout { .. })));
    }
    // Only the minute window's state is left; the slot was given back.
    assert_eq!(layer.tracked_states(), 1);
}

#[tokio::test]
async fn customers_are_limited_independently() {
    let h = Harness::new("[plans.pro]\nper_second = { requests = 1 }");
    let a = caller("cus_a", Some("pro"));
    let b = caller("cus_b", Some("pro"));
    assert_passed(&h.send(ping(&a)).await);
    refusal_of(&h.send(ping(&a)).await);
    assert_passed(&h.send(ping(&b)).await);
    refusal_of(&h.send(ping(&b)).await);
}

#[tokio::test]
async fn sessions_and_credentials_of_one_customer_share_its_limit() {
    let h = Harness::new("[plans.pro]\nper_minute = { requests = 2 }");
    let by_key = caller("cus_a", Some("pro"));
    let by_jwt = Arc::new(Caller {
        customer: by_key.customer.clone(),
        credential: CredentialKind::Jwt {
            subject: "user-1".into(),
        },
    });
    assert_passed(&h.send(request_in(Some(&by_key), "ping", None, "s1")).await);
    assert_passed(&h.send(request_in(Some(&by_jwt), "ping", None, "s2")).await);
    let refused = h.send(request_in(Some(&by_key), "ping", None, "s3")).await;
    assert_eq!(refusal_of(&refused)["data"]["window"], "minute");
}

#[tokio::test]
async fn plans_without_an_entry_use_the_default() {
    let h = Harness::new(
        r#"
        [default]
        per_minute = { requests = 1 }
        [plans.pro]
        per_minute = { requests = 3 }
        [plans.enterprise]
        "#,
    );
    let free = caller("cus_free", Some("free"));
    assert_passed(&h.send(ping(&free)).await);
    assert_eq!(
        refusal_of(&h.send(ping(&free)).await)["message"],
        "rate limit exceeded: 1 request per minute for plan free (default limits); retry in 60000 ms"
    );

    let planless = caller("cus_none", None);
    assert_passed(&h.send(ping(&planless)).await);
    assert_eq!(
        refusal_of(&h.send(ping(&planless)).await)["message"],
        "rate limit exceeded: 1 request per minute for customers without a plan (default limits); retry in 60000 ms"
    );

    let pro = caller("cus_pro", Some("pro"));
    for _ in 0..3 {
        assert_passed(&h.send(ping(&pro)).await);
    }
    refusal_of(&h.send(ping(&pro)).await);

    // An empty entry means "unlimited", not "use the default".
    let big = caller("cus_big", Some("enterprise"));
    for _ in 0..50 {
        let response = h.send(ping(&big)).await;
        assert_passed(&response);
        assert_eq!(status_of(&response), None);
    }
}

#[tokio::test]
async fn without_a_default_plans_without_an_entry_are_unlimited() {
    let h = Harness::new("[plans.pro]\nper_minute = { requests = 1 }");
    for who in [caller("cus_free", Some("free")), caller("cus_none", None)] {
        for _ in 0..50 {
            let response = h.send(ping(&who)).await;
            assert_passed(&response);
            assert_eq!(status_of(&response), None);
        }
    }
    assert_eq!(h.layer.tracked_states(), 0);
}

#[tokio::test]
async fn unauthenticated_requests_and_notifications_pass() {
    let h = Harness::new("[default]\nper_minute = { requests = 1 }\nmax_concurrent = 1");
    for _ in 0..10 {
        let response = h.send(request(None, "initialize", None)).await;
        assert_passed(&response);
        assert_eq!(status_of(&response), None);
    }
    let a = caller("cus_a", None);
    assert_passed(&h.send(ping(&a)).await);
    for _ in 0..10 {
        let mut notification =
            message(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        notification.extensions.insert(a.clone());
        let response = h.send(notification).await;
        assert_eq!(status_of(&response), None);
    }
    assert_eq!(h.reached(), 21);
}

#[tokio::test]
async fn the_refusal_code_is_configurable() {
    let h = Harness::new("refusal_code = -32099\n[default]\nper_hour = { requests = 1 }");
    let a = caller("cus_a", None);
    assert_passed(&h.send(ping(&a)).await);
    assert_eq!(refusal_of(&h.send(ping(&a)).await)["code"], -32099);
}

#[tokio::test]
async fn the_state_of_recovered_customers_is_evicted() {
    // Refill intervals: 1 s for the second, 360 s for the hour.
    let h = Harness::new(
        "idle_eviction_secs = 60\n[default]\nper_second = { requests = 1 }\nper_hour = { requests = 10 }",
    );
    let (a, b, c) = (
        caller("cus_a", None),
        caller("cus_b", None),
        caller("cus_c", None),
    );
    assert_passed(&h.send(ping(&a)).await);
    assert_eq!(h.layer.tracked_states(), 2);

    h.advance_ms(59_000);
    assert_passed(&h.send(ping(&b)).await);
    assert_eq!(h.layer.tracked_states(), 4, "no sweep before 60 s");

    // The sweep at 61 s drops the seconds of a and b (recovered) but keeps
    // their hours, which still count their calls.
    h.advance_ms(2_000);
    assert_passed(&h.send(ping(&c)).await);
    assert_eq!(h.layer.tracked_states(), 4);

    // Long after, everyone has recovered; only the caller that triggers the
    // sweep is left.
    h.advance_ms(3_600_000);
    assert_passed(&h.send(ping(&a)).await);
    assert_eq!(h.layer.tracked_states(), 2);
    let response = h.send(ping(&a)).await;
    assert_eq!(
        refusal_of(&response)["data"]["window"],
        "second",
        "a's fresh state counts from zero"
    );
}

#[test]
fn an_invalid_configuration_is_refused_with_every_problem() {
    let config: RateLimitConfig = toml::from_str(
        "idle_eviction_secs = 0\n[plans.pro]\nper_minute = { requests = 0 }\nmax_concurrent = 0",
    )
    .unwrap();
    let error = RateLimitLayer::new(&config).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid rate-limit configuration: plans.pro.per_minute.requests: must be at least 1; plans.pro.max_concurrent: must be at least 1 (leave it out for no cap); idle_eviction_secs: must be at least 1"
    );
}

#[test]
fn the_layer_is_a_plugin() {
    let layer = RateLimitLayer::new(&RateLimitConfig::default()).unwrap();
    let plugin = LayerPlugin::new("rate_limit", layer);
    assert_eq!(plugin.name(), "rate_limit");
}
