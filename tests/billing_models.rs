//! The subscription, usage and freemium models, and credits' periodic
//! grant, end to end: the real proxy over server-everything, customers and
//! subscriptions set with the real CLI, and what the client receives and the
//! ledger (and the meter outbox) holds checked on SQLite, PostgreSQL and
//! MariaDB.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::billing::{
    META, add_customer, balance, call, client, config_with, create_key, grant, ledger,
};
use common::db::TestDb;
use common::{Proxy, admin_json, admin_text, eventually, first_text};
use mcp_meter_plugin::identity::CustomerId;
use mcp_meter_plugin::outbox::{OutboxFilter, OutboxStatus};
use serde_json::{Value, json};

const PLANS: &str = r#"
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
upgrade_url = "https://billing.example.com/team"
prices = { default = "0.01", tools = { "get-tiny-image" = "0.05" }, free = ["get-sum"] }
subscription = { fee = "49", included_calls = 2, beyond_included = "overage" }

[[plans]]
id = "capped"
model = "subscription"
currency = "usd"
subscription = { included_calls = 2, grace_period_hours = 0 }

[[plans]]
id = "metered"
model = "usage"
prices = { free = ["get-sum"] }
usage = { event_name = "mcp_calls" }

[[plans]]
id = "bytes"
model = "usage"
usage = { event_name = "mcp_response_bytes", meter = "response_bytes" }

[[plans]]
id = "free"
model = "freemium"
upgrade_url = "https://billing.example.com/upgrade"
freemium = { free_calls = 3, window = "day", tool_quotas = { "get-sum" = 1 } }

[[plans]]
id = "free-then-credits"
model = "freemium"
freemium = { free_calls = 1, then_plan = "prepaid" }

[[plans]]
id = "prepaid"
model = "credits"
prices = { default = 1 }

[[plans]]
id = "by-bytes"
model = "credits"
prices = { default = 1 }
credits = { meter = "response_bytes", max_units = 10000, unit_size = 100 }

[[plans]]
id = "per-100-bytes"
model = "per_call"
currency = "usd"
per_call = { meter = "response_bytes", unit_size = 100, tiering = "graduated", tiers = [ { up_to = 500, price = "0.01" }, { price = "0.005" } ] }

[[plans]]
id = "team-bytes"
model = "subscription"
currency = "usd"
prices = { default = "0.001" }
subscription = { included_units = 300, beyond_included = "overage", meter = "response_bytes", unit_size = 100 }

[[plans]]
id = "allowance"
model = "credits"
prices = { default = 1 }
credits = { grant = 10, grant_mode = "rollover", rollover_cap = 5 }
"#;

fn set_subscription(db: &str, customer: &str, plan: &str, status: &str) -> Value {
    admin_json(
        db,
        &[
            "subscriptions",
            "set",
            "--customer",
            customer,
            "--plan",
            plan,
            "--status",
            status,
            "--json",
        ],
    )
}

fn meta(response: &Value) -> &Value {
    &response["result"]["_meta"][META]
}

fn tools_by_name(listed: &Value) -> BTreeMap<String, Value> {
    listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

fn echo(id: i64) -> Value {
    call(json!(id), "echo", json!({"message": id.to_string()}))
}

async fn subscriptions_end_to_end(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "team");
    let key = create_key(url, &acme);
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c = client(&proxy, &key).await;

    // No subscription yet: refused, with where to subscribe.
    let refused = c.post(&echo(1)).await.response();
    let data = &refused["error"]["data"];
    assert_eq!(refused["error"]["code"], -32030, "{refused}");
    assert_eq!(data["reason"], "subscription_required", "{refused}");
    assert_eq!(data["upgrade_url"], "https://billing.example.com/team");

    let set = set_subscription(url, &acme, "team", "active");
    assert_eq!(
        (set["status"].as_str(), set["plan_id"].as_str()),
        (Some("active"), Some("team"))
    );

    // tools/list shows the included calls and the overage price.
    let listed = c
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await
        .response();
    let tools = tools_by_name(&listed);
    let echo_price = &tools["echo"]["_meta"][META];
    assert_eq!(
        (
            echo_price["included_calls"].clone(),
            echo_price["overage_price"].clone()
        ),
        (json!(2), json!("0.01")),
        "{echo_price}"
    );
    assert_eq!(tools["get-sum"]["_meta"][META]["price"], 0);

    // Two included calls, then overage; a failed call counts for nothing.
    let first = c.post(&echo(3)).await.response();
    assert_eq!(first_text(&first), "Echo: 3");
    assert_eq!(meta(&first)["charged"], "0", "{first}");
    assert_eq!(
        meta(&first)["included"],
        json!({"limit": 2, "used": 1, "remaining": 1})
    );
    let failed = c
        .post(&call(json!(4), "no-such-tool", json!({})))
        .await
        .response();
    assert!(meta(&failed).is_null(), "{failed}");
    let second = c.post(&echo(5)).await.response();
    assert_eq!(meta(&second)["included"]["remaining"], 0, "{second}");
    assert_eq!(meta(&second)["warnings"][0]["percent"], 100, "{second}");
    let third = c.post(&echo(6)).await.response();
    assert_eq!(
        (
            meta(&third)["charged"].clone(),
            meta(&third)["overage_calls"].clone()
        ),
        (json!("0.01"), json!(1)),
        "{third}"
    );
    let image = c
        .post(&call(json!(7), "get-tiny-image", json!({})))
        .await
        .response();
    assert_eq!(meta(&image)["charged"], "0.05", "{image}");
    // A retry of the same request is not charged again; a free tool is free.
    let again = c.post(&echo(6)).await.response();
    assert_eq!(
        (
            meta(&again)["charged"].clone(),
            meta(&again)["repeat"].clone()
        ),
        (json!("0"), json!(true))
    );
    let sum = c
        .post(&call(json!(8), "get-sum", json!({"a": 1, "b": 2})))
        .await
        .response();
    assert_eq!(meta(&sum)["charged"], "0", "{sum}");
    let charges: Vec<i64> = ledger(url, &acme)
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(
        charges,
        [0, 0, 10_000, 50_000],
        "two included calls, then 0.01 and 0.05 USD"
    );

    // Past due: served through the grace period, with a warning.
    let past_due = set_subscription(url, &acme, "team", "past_due");
    assert!(past_due["past_due_since"].is_i64(), "{past_due}");
    let late = c.post(&echo(9)).await.response();
    assert_eq!(first_text(&late), "Echo: 9");
    assert_eq!(meta(&late)["warnings"][0]["kind"], "past_due", "{late}");
    // Canceled: refused.
    set_subscription(url, &acme, "team", "canceled");
    let canceled = c.post(&echo(10)).await.response();
    assert_eq!(canceled["error"]["data"]["reason"], "subscription_required");
    assert_eq!(
        canceled["error"]["data"]["status"], "canceled",
        "{canceled}"
    );

    // A hard cap: two calls, then `quota_exceeded` with when it resets; a
    // failed call gives its included call back.
    let capped = add_customer(url, "Capped", "capped");
    set_subscription(url, &capped, "capped", "trialing");
    let c2 = client(&proxy, &create_key(url, &capped)).await;
    let failed = c2
        .post(&call(json!(1), "no-such-tool", json!({})))
        .await
        .response();
    assert!(
        failed["error"].is_object() || failed["result"]["isError"] == true,
        "{failed}"
    );
    for id in 2..=3 {
        let served = c2.post(&echo(id)).await.response();
        assert_eq!(first_text(&served), format!("Echo: {id}"), "{served}");
    }
    let over = c2.post(&echo(4)).await.response();
    let data = &over["error"]["data"];
    assert_eq!(data["reason"], "quota_exceeded", "{over}");
    assert_eq!(
        (data["limit"].clone(), data["used"].clone()),
        (json!(2), json!(2))
    );
    assert!(data["retry_after_ms"].as_i64().unwrap() > 0, "{over}");
    // No grace on this plan: past due is refused at once.
    set_subscription(url, &capped, "capped", "past_due");
    let unpaid = c2.post(&echo(5)).await.response();
    assert_eq!(
        unpaid["error"]["data"]["reason"], "payment_required",
        "{unpaid}"
    );
    let quota_entries: Vec<(String, i64)> = ledger(url, &capped)
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        quota_entries,
        [
            ("usage".into(), 1),
            ("refund".into(), -1),
            ("usage".into(), 1),
            ("usage".into(), 1)
        ],
        "the failed call's included call was given back"
    );
}

#[tokio::test]
async fn subscriptions_on_sqlite() {
    subscriptions_end_to_end(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn subscriptions_on_postgres() {
    subscriptions_end_to_end(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn subscriptions_on_mysql() {
    subscriptions_end_to_end(&TestDb::mysql().await).await;
}

async fn usage_end_to_end(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "metered");
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c = client(&proxy, &create_key(url, &acme)).await;

    let listed = c
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await
        .response();
    assert_eq!(
        tools_by_name(&listed)["echo"]["_meta"][META]["metered"],
        "calls"
    );
    for id in 2..=4 {
        let r = c.post(&echo(id)).await.response();
        assert_eq!(
            (meta(&r)["units"].clone(), meta(&r)["unit"].clone()),
            (json!(1), json!("calls")),
            "{r}"
        );
    }
    // Repeated, failed and free calls are not metered.
    let again = c.post(&echo(4)).await.response();
    assert_eq!(meta(&again)["repeat"], true, "{again}");
    let failed = c
        .post(&call(json!(5), "no-such-tool", json!({})))
        .await
        .response();
    assert!(meta(&failed).is_null(), "{failed}");
    c.post(&call(json!(6), "get-sum", json!({"a": 1, "b": 2})))
        .await;

    let entries = ledger(url, &acme);
    let usage: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "usage").collect();
    assert_eq!(usage.len(), 3, "{entries:#?}");
    assert_eq!(entries.len(), 3, "only usage entries: {entries:#?}");
    // Each usage entry has its meter event in the outbox, named by its call.
    let store = db.open().await;
    let customer = CustomerId::parse(&acme).unwrap();
    let events = store
        .meter_events(&OutboxFilter {
            customer: Some(customer.clone()),
            limit: 100,
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 3, "{events:#?}");
    for (event, entry) in events.iter().zip(&usage) {
        assert_eq!(event.event_name, "mcp_calls");
        assert_eq!(event.value, 1);
        assert_eq!(event.status, OutboxStatus::Pending);
        assert_eq!(Some(event.identifier.as_str()), entry["call_id"].as_str());
    }
    // Every metered call is a recorded call (the usage writer flushes
    // within its interval).
    let recorded = || -> Vec<String> {
        admin_json(url, &["usage", "--customer", &acme, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["call_id"].as_str().map(str::to_owned))
            .collect()
    };
    let all_recorded = eventually(Duration::from_secs(10), || {
        let recorded = recorded();
        events.iter().all(|e| recorded.contains(&e.identifier))
    })
    .await;
    assert!(all_recorded, "{events:#?} vs {:?}", recorded());

    // The operator sees the outbox from the CLI; a parked event can be
    // queued again, and only a parked one.
    let listed = admin_json(url, &["outbox", "list", "--customer", &acme, "--json"]);
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
    store
        .mark_meter_event_failed(ids[0], "Stripe said 400", None)
        .await
        .unwrap();
    let parked = admin_json(url, &["outbox", "list", "--status", "parked", "--json"]);
    assert_eq!(parked[0]["id"], ids[0], "{parked}");
    assert_eq!(parked[0]["last_error"], "Stripe said 400", "{parked}");
    let (ok, out) = admin_text(url, &["outbox", "retry", &ids[1].to_string()]);
    assert!(!ok && out.contains("no parked meter event"), "{out}");
    let (ok, out) = admin_text(url, &["outbox", "retry", &ids[0].to_string()]);
    assert!(ok && out.contains("queued again"), "{out}");
    let pending = admin_json(url, &["outbox", "list", "--status", "pending", "--json"]);
    assert_eq!(pending.as_array().unwrap().len(), 3, "{pending}");
    let (ok, out) = admin_text(url, &["outbox", "list", "--status", "done"]);
    assert!(!ok && out.contains("use pending, sent or parked"), "{out}");

    // Response bytes: two echoes whose messages differ by 100 bytes differ
    // by 100 units.
    let bytes = add_customer(url, "Bytes", "bytes");
    let c2 = client(&proxy, &create_key(url, &bytes)).await;
    let short = c2
        .post(&call(json!(1), "echo", json!({"message": "x"})))
        .await
        .response();
    let long = c2
        .post(&call(json!(2), "echo", json!({"message": "x".repeat(101)})))
        .await
        .response();
    let (short, long) = (
        meta(&short)["units"].as_i64().unwrap(),
        meta(&long)["units"].as_i64().unwrap(),
    );
    assert_eq!(long - short, 100, "{short} and {long} bytes");
    assert_eq!(meta(&c2.post(&echo(3)).await.response())["unit"], "bytes");
}

#[tokio::test]
async fn usage_on_sqlite() {
    usage_end_to_end(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn usage_on_postgres() {
    usage_end_to_end(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn usage_on_mysql() {
    usage_end_to_end(&TestDb::mysql().await).await;
}

async fn freemium_end_to_end(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let trial = add_customer(url, "Trial", "free");
    let key = create_key(url, &trial);
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c = client(&proxy, &key).await;

    let listed = c
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await
        .response();
    let tools = tools_by_name(&listed);
    assert_eq!(tools["echo"]["_meta"][META]["free_calls"], 3);
    assert_eq!(tools["get-sum"]["_meta"][META]["free_calls"], 1);

    // A failed call does not use the quota.
    c.post(&call(json!(2), "no-such-tool", json!({}))).await;
    let mut remaining = Vec::new();
    for id in 3..=5 {
        let r = c.post(&echo(id)).await.response();
        assert_eq!(first_text(&r), format!("Echo: {id}"));
        remaining.push(meta(&r)["quota"]["remaining"].as_i64().unwrap());
        if id == 5 {
            assert_eq!(meta(&r)["warnings"][0]["percent"], 100, "{r}");
        }
    }
    assert_eq!(remaining, [2, 1, 0]);
    let over = c.post(&echo(6)).await.response();
    let data = &over["error"]["data"];
    assert_eq!(data["reason"], "quota_exceeded", "{over}");
    assert_eq!(data["upgrade_url"], "https://billing.example.com/upgrade");
    assert_eq!(data["window"], "day");
    let retry = data["retry_after_ms"].as_i64().unwrap();
    assert!(retry > 0 && retry <= 86_400_000, "{over}");
    // get-sum has a quota of its own.
    let sum = c
        .post(&call(json!(7), "get-sum", json!({"a": 1, "b": 2})))
        .await
        .response();
    assert_eq!(meta(&sum)["quota"]["limit"], 1, "{sum}");
    let sum_over = c
        .post(&call(json!(8), "get-sum", json!({"a": 1, "b": 2})))
        .await
        .response();
    assert_eq!(sum_over["error"]["data"]["reason"], "quota_exceeded");
    // A new session does not reset the quota.
    let fresh = client(&proxy, &key).await;
    let still = fresh.post(&echo(9)).await.response();
    assert_eq!(
        still["error"]["data"]["reason"], "quota_exceeded",
        "{still}"
    );

    // Beyond the free call, a `then_plan` charges instead of refusing.
    let upgrader = add_customer(url, "Upgrader", "free-then-credits");
    let c2 = client(&proxy, &create_key(url, &upgrader)).await;
    let free = c2.post(&echo(1)).await.response();
    assert_eq!(meta(&free)["plan"], "free-then-credits", "{free}");
    let broke = c2.post(&echo(2)).await.response();
    assert_eq!(
        broke["error"]["data"]["reason"], "insufficient_credits",
        "{broke}"
    );
    assert_eq!(broke["error"]["data"]["plan"], "prepaid");
    grant(url, &upgrader, 5, "top-up");
    let paid = c2.post(&echo(2)).await.response();
    assert_eq!(
        (
            meta(&paid)["plan"].clone(),
            meta(&paid)["charged"].clone(),
            meta(&paid)["balance"].clone()
        ),
        (json!("prepaid"), json!(1), json!(4)),
        "{paid}"
    );
}

#[tokio::test]
async fn freemium_on_sqlite() {
    freemium_end_to_end(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn freemium_on_postgres() {
    freemium_end_to_end(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn freemium_on_mysql() {
    freemium_end_to_end(&TestDb::mysql().await).await;
}

#[tokio::test]
async fn a_plans_credit_grant_is_applied_once_per_period() {
    let db = TestDb::postgres().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "allowance");
    assert_eq!(balance(url, &acme), 0);
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c = client(&proxy, &create_key(url, &acme)).await;
    // The first call of the month brings the grant; later calls do not.
    for id in 1..=3 {
        let r = c.post(&echo(id)).await.response();
        assert_eq!(meta(&r)["balance"], 10 - id, "{r}");
    }
    // A second instance on the same database does not grant again.
    let second = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c2 = client(&second, &create_key(url, &acme)).await;
    let r = c2.post(&echo(4)).await.response();
    assert_eq!(meta(&r)["balance"], 6, "{r}");
    let grants: Vec<Value> = ledger(url, &acme)
        .into_iter()
        .filter(|e| e["kind"] == "grant")
        .collect();
    assert_eq!(grants.len(), 1, "{grants:#?}");
    assert!(
        grants[0]["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("period-grant:allowance:")
    );
}

#[tokio::test]
async fn subscriptions_from_the_cli_refuse_bad_input() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let acme = add_customer(url, "Acme", "team");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--customer", &acme, "--plan", "team", "--status", "gold"],
            "--status \"gold\": use one of active",
        ),
        (
            &[
                "--customer",
                "cus_nobody",
                "--plan",
                "team",
                "--status",
                "active",
            ],
            "customer cus_nobody",
        ),
        (
            &["--customer", "nope", "--plan", "team", "--status", "active"],
            "nope",
        ),
        (
            &["--customer", &acme, "--plan", " ", "--status", "active"],
            "--plan must name a plan",
        ),
        (
            &[
                "--customer",
                &acme,
                "--plan",
                "team",
                "--status",
                "active",
                "--period-start",
                "2026-02-01T00:00:00Z",
                "--period-end",
                "2026-01-01T00:00:00Z",
            ],
            "--period-end must be after --period-start",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["subscriptions", "set"];
        full.extend_from_slice(args);
        let (ok, out) = admin_text(url, &full);
        assert!(!ok && out.contains(expected), "{full:?}: {out}");
    }
    // Nothing was stored by the refused commands.
    let (ok, out) = admin_text(url, &["subscriptions", "show", "--customer", &acme]);
    assert!(ok && out.contains("has no subscription"), "{out}");
    // With the configuration at hand, the plan must be a subscription plan.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp-meter.toml");
    std::fs::write(&config, config_with(url, "", PLANS)).unwrap();
    let config = config.to_str().unwrap();
    let with_config = |args: &[&str]| {
        let output = std::process::Command::new(common::bin())
            .args([
                "subscriptions",
                "set",
                "--config",
                config,
                "--customer",
                &acme,
            ])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    for (plan, expected) in [
        ("prepaid", "it is a credits plan"),
        ("gold", "there is no such plan"),
    ] {
        let (ok, out) = with_config(&["--plan", plan, "--status", "active"]);
        assert!(!ok && out.contains(expected), "{plan}: {out}");
    }
    let (ok, out) = with_config(&[
        "--plan",
        "team",
        "--status",
        "active",
        "--external-id",
        "sub_123",
    ]);
    assert!(ok && out.contains("active on plan team"), "{out}");
    let shown = admin_json(
        url,
        &["subscriptions", "show", "--customer", &acme, "--json"],
    );
    assert_eq!(shown["external_id"], "sub_123", "{shown}");
    // The customer moved to the plan.
    let customers = admin_json(url, &["customers", "show", &acme, "--json"]);
    assert_eq!(customers["customer"]["plan_id"], "team", "{customers}");
}

#[tokio::test]
async fn credits_priced_by_response_bytes_reserve_the_most_and_settle_what_was_used() {
    let db = TestDb::mysql().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "by-bytes");
    grant(url, &acme, 103, "welcome");
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));
    let c = client(&proxy, &create_key(url, &acme)).await;
    // 1 credit per started 100 bytes of the server's answer: an echo of
    // 250 characters answers with about 350 bytes.
    let r = c
        .post(&call(json!(1), "echo", json!({"message": "x".repeat(250)})))
        .await
        .response();
    let billing = meta(&r);
    let units = billing["units"].as_i64().unwrap();
    assert!((300..10_000).contains(&units), "{r}");
    let expected = (units + 99) / 100;
    assert_eq!(billing["charged"], expected, "{r}");
    assert_eq!(billing["balance"], 103 - expected, "{r}");
    // The reservation was the most a call may cost (10,000 bytes: 100
    // credits); the settlement gave back the rest.
    let moves: Vec<(String, i64)> = ledger(url, &acme)
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("grant".into(), 103),
            ("reservation".into(), -100),
            ("settlement".into(), 100 - expected),
        ]
    );
    // With less than the most a call may cost left, the call is refused
    // before it is forwarded, even if it would have used less.
    let left = 103 - expected;
    assert!(left < 100);
    let refused = c
        .post(&call(json!(2), "echo", json!({"message": "x"})))
        .await
        .response();
    assert_eq!(
        refused["error"]["data"]["reason"], "insufficient_credits",
        "{refused}"
    );
    assert_eq!(refused["error"]["data"]["needed"], 100, "{refused}");
    assert_eq!(balance(url, &acme), left);
}

/// The `(kind, amount)` of a customer's ledger entries.
fn moves(url: &str, customer: &str) -> Vec<(String, i64)> {
    ledger(url, customer)
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["amount"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn per_call_and_subscription_plans_charge_units_of_their_meter() {
    let db = TestDb::postgres().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "per-100-bytes");
    let globex = add_customer(url, "Globex", "team-bytes");
    set_subscription(url, &globex, "team-bytes", "active");
    let proxy = Proxy::serve(dir.path(), &config_with(url, "", PLANS));

    // Per call, by response bytes in blocks of 100: 0.01 USD a block up
    // to 500 bytes in the period, 0.005 beyond (graduated).
    let c = client(&proxy, &create_key(url, &acme)).await;
    let listed = c
        .post(&json!({"jsonrpc":"2.0","id":0,"method":"tools/list"}))
        .await
        .response();
    let price = tools_by_name(&listed)["echo"]["_meta"][META].clone();
    assert_eq!(
        (&price["price"], &price["per"], &price["tiered"]),
        (&json!("0.01"), &json!("100 bytes"), &json!(true)),
        "{price}"
    );
    let big = || json!({"message": "x".repeat(250)});
    let first = c.post(&call(json!(1), "echo", big())).await.response();
    let units = meta(&first)["units"].as_i64().unwrap();
    let blocks = (units + 99) / 100;
    assert!((3..=4).contains(&blocks), "{first}");
    assert_eq!(meta(&first)["meter"], "response_bytes", "{first}");
    assert_eq!(meta(&first)["period_units"], blocks * 100, "{first}");
    // The second, same-sized call crosses 500 bytes: the blocks up to the
    // bound at 0.01, the rest at 0.005.
    let second = c.post(&call(json!(2), "echo", big())).await.response();
    assert_eq!(meta(&second)["units"], units, "{second}");
    let at_first_tier = 5 - blocks;
    let expected_second = at_first_tier * 10_000 + (blocks - at_first_tier) * 5_000;
    assert_eq!(
        moves(url, &acme),
        [
            ("charge".into(), blocks * 10_000),
            ("charge".into(), expected_second)
        ]
    );
    // A failed call is not charged, whatever its size.
    let failed = c
        .post(&call(json!(3), "no-such-tool", big()))
        .await
        .response();
    assert!(
        failed.get("error").is_some() || failed["result"]["isError"] == true,
        "{failed}"
    );
    assert_eq!(moves(url, &acme).len(), 2);

    // A subscription including 300 bytes (3 blocks of 100) per period;
    // beyond them, 0.001 USD per block.
    let c = client(&proxy, &create_key(url, &globex)).await;
    let r = c.post(&call(json!(1), "echo", big())).await.response();
    let billing = meta(&r);
    assert_eq!(billing["units"], units, "{r}");
    assert_eq!(billing["included"]["limit"], 300, "{r}");
    assert_eq!(billing["included"]["used"], 300, "{r}");
    assert_eq!(billing["included"]["remaining"], 0, "{r}");
    assert_eq!(billing["period_units"], blocks * 100, "{r}");
    assert_eq!(billing["overage_units"], (blocks - 3) * 100, "{r}");
    let r = c.post(&call(json!(2), "echo", big())).await.response();
    assert_eq!(meta(&r)["overage_units"], (2 * blocks - 3) * 100, "{r}");
    assert_eq!(
        moves(url, &globex),
        [
            ("charge".into(), (blocks - 3) * 1_000),
            ("charge".into(), blocks * 1_000)
        ]
    );
    // The plan as the operator sees it: units, not blocks.
    let config = dir.path().join("plans.toml");
    std::fs::write(&config, config_with(url, "", PLANS)).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["plans", "show", "per-100-bytes", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["meter"], "response_bytes", "{shown}");
    assert_eq!(shown["price_per"], "100 bytes", "{shown}");
    assert_eq!(shown["schedule"]["tiers"][0]["up_to"], 500, "{shown}");
}
