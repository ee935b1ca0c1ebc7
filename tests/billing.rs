//! Billing through the real proxy, with the official reference server as the
//! upstream, on each of the three databases: credits reserved, settled and
//! refunded; refusals in both styles; `tools/list` prices; per-call volume
//! tiers across their boundary; a balance that can never go below zero under
//! 1,000 concurrent calls (also with two proxies on one PostgreSQL); and the
//! ledger reconciled with the usage records.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::billing::{
    META, add_customer, balance, call, client, config_with, create_key, grant, ledger,
};
use common::db::TestDb;
use common::{Proxy, admin_json, admin_text, eventually, first_text};
use serde_json::{Value, json};

const PLANS: &str = r#"
[billing]
price_in_description = true

[[plans]]
id = "starter"
model = "credits"
upgrade_url = "https://billing.example.com/buy"
[plans.prices]
default = 2
tools = { "echo" = 1 }
free = ["get-sum"]
not_included = ["toggle-*"]
[plans.credits]
low_balance_warnings = [5]

[[plans]]
id = "quiet"
model = "credits"
refusal = "tool_result"
[plans.prices]
default = 3

[[plans]]
id = "metered"
model = "per_call"
currency = "usd"
[plans.per_call]
tiering = "volume"
tiers = [ { up_to = 2, price = "0.01" }, { up_to = 4, price = "0.005" }, { price = "0.001" } ]
"#;

fn config(db: &str, extra: &str) -> String {
    config_with(db, extra, PLANS)
}

async fn credits_end_to_end(db: &TestDb) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "starter");
    let key = create_key(url, &acme);
    assert!(grant(url, &acme, 10, "welcome").contains("balance 10"));
    // The same idempotency key again changes nothing.
    assert!(grant(url, &acme, 10, "welcome").contains("already applied"));
    assert_eq!(balance(url, &acme), 10);

    let proxy = Proxy::serve(dir.path(), &config(url, ""));
    let c = client(&proxy, &key).await;

    // tools/list shows this plan's prices and hides what it cannot call.
    let listed = c
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await
        .response();
    let tools: BTreeMap<String, Value> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone()))
        .collect();
    assert_eq!(
        tools["echo"]["_meta"][META]["price"], 1,
        "{}",
        tools["echo"]
    );
    assert_eq!(tools["get-sum"]["_meta"][META]["price"], 0);
    assert_eq!(tools["get-tiny-image"]["_meta"][META]["price"], 2);
    assert!(
        tools["echo"]["description"]
            .as_str()
            .unwrap()
            .ends_with("(Costs 1 credits per call.)"),
        "{}",
        tools["echo"]
    );
    assert!(!tools.keys().any(|t| t.starts_with("toggle-")), "{tools:?}");

    // A paid call: charged, with the balance in _meta; the result is intact.
    let echoed = c
        .post(&call(json!(2), "echo", json!({"message": "hi"})))
        .await
        .response();
    assert_eq!(first_text(&echoed), "Echo: hi", "{echoed}");
    let meta = &echoed["result"]["_meta"][META];
    assert_eq!(
        (meta["charged"].clone(), meta["balance"].clone()),
        (json!(1), json!(9)),
        "{meta}"
    );

    // A retry of the same request (same id, same session) is not charged again.
    let again = c
        .post(&call(json!(2), "echo", json!({"message": "hi"})))
        .await
        .response();
    assert_eq!(first_text(&again), "Echo: hi");
    assert_eq!(again["result"]["_meta"][META]["charged"], 0, "{again}");
    assert_eq!(balance(url, &acme), 9);

    // Free tool.
    let sum = c
        .post(&call(json!(3), "get-sum", json!({"a": 1, "b": 2})))
        .await
        .response();
    assert_eq!(sum["result"]["_meta"][META]["charged"], 0, "{sum}");

    // Failures are refunded: an unknown tool, and invalid arguments.
    for (id, tool, args) in [
        (4, "no-such-tool", json!({})),
        (5, "echo", json!({"wrong": 1})),
    ] {
        let failed = c.post(&call(json!(id), tool, args)).await.response();
        let failed_ok = failed.get("error").is_some() || failed["result"]["isError"] == true;
        assert!(failed_ok, "{failed}");
        assert_eq!(balance(url, &acme), 9, "{tool} must be refunded: {failed}");
    }

    // Not in the plan: refused before the upstream, nothing charged.
    let refused = c
        .post(&call(json!(6), "toggle-simulated-logging", json!({})))
        .await
        .response();
    assert_eq!(refused["error"]["code"], -32030, "{refused}");
    assert_eq!(refused["error"]["data"]["reason"], "tool_not_in_plan");
    assert_eq!(refused["error"]["data"]["tool"], "toggle-simulated-logging");

    // Spend down to the warning, then to the refusal.
    let mut id = 10;
    let mut last = Value::Null;
    while balance(url, &acme) >= 2 {
        id += 1;
        last = c
            .post(&call(json!(id), "get-tiny-image", json!({})))
            .await
            .response();
        assert!(last.get("result").is_some(), "{last}");
    }
    let meta = &last["result"]["_meta"][META];
    assert_eq!(meta["warnings"][0]["kind"], "low_balance", "{meta}");
    assert_eq!(balance(url, &acme), 1);
    let refused = c
        .post(&call(json!(99), "get-tiny-image", json!({})))
        .await
        .response();
    let data = &refused["error"]["data"];
    assert_eq!(data["reason"], "insufficient_credits", "{refused}");
    assert_eq!(
        (data["needed"].clone(), data["balance"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(data["upgrade_url"], "https://billing.example.com/buy");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https://billing.example.com/buy")
    );
    // The one credit left still pays for an echo.
    let echoed = c
        .post(&call(json!(100), "echo", json!({"message": "last"})))
        .await
        .response();
    assert_eq!(echoed["result"]["_meta"][META]["balance"], 0, "{echoed}");

    // The ledger adds up to the balance, and every charged call has its usage record.
    let entries = ledger(url, &acme);
    let sum: i64 = entries.iter().map(|e| e["amount"].as_i64().unwrap()).sum();
    assert_eq!(sum, balance(url, &acme));
    drop(c);
    proxy.terminate();
    reconcile_with_usage(url, &acme, &entries);
}

/// Every reservation names a call that has a usage record, and no call is
/// reserved twice without a refund in between.
fn reconcile_with_usage(url: &str, customer: &str, entries: &[Value]) {
    let records = admin_json(
        url,
        &[
            "usage",
            "--customer",
            customer,
            "--limit",
            "100000",
            "--json",
        ],
    );
    let recorded: HashSet<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["call_id"].as_str().unwrap())
        .collect();
    let mut reserved = HashSet::new();
    for entry in entries.iter().filter(|e| e["kind"] == "reservation") {
        let call = entry["call_id"].as_str().unwrap();
        assert!(
            recorded.contains(call),
            "reservation for unrecorded call {call}"
        );
        assert!(reserved.insert(call), "call {call} reserved twice");
    }
}

#[tokio::test]
async fn credits_on_sqlite() {
    credits_end_to_end(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn credits_on_postgres() {
    credits_end_to_end(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn credits_on_mysql() {
    credits_end_to_end(&TestDb::mysql().await).await;
}

/// A plan may refuse with a tool result (for clients that hide JSON-RPC
/// error data); a customer on a plan that is not configured is refused
/// clearly.
#[tokio::test]
async fn tool_result_refusals_and_unknown_plans() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let quiet = add_customer(url, "Quiet", "quiet");
    let ghost = add_customer(url, "Ghost", "retired-plan");
    let quiet_key = create_key(url, &quiet);
    let ghost_key = create_key(url, &ghost);
    let proxy = Proxy::serve(dir.path(), &config(url, ""));

    let c = client(&proxy, &quiet_key).await;
    let refused = c
        .post(&call(json!(1), "echo", json!({"message": "x"})))
        .await
        .response();
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let text = first_text(&refused);
    assert!(
        text.contains("costs 3 credits") && text.contains("balance is 0"),
        "{text}"
    );
    assert_eq!(
        refused["result"]["_meta"]["mcp-meter/refusal"]["reason"],
        "insufficient_credits"
    );

    let g = client(&proxy, &ghost_key).await;
    let refused = g
        .post(&call(json!(1), "echo", json!({"message": "x"})))
        .await
        .response();
    assert_eq!(
        refused["error"]["data"]["reason"], "plan_unavailable",
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retired-plan")
    );
    // Unmetered methods still work for both.
    let pong = g
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"ping"}))
        .await
        .response();
    assert!(pong.get("result").is_some(), "{pong}");
}

/// Volume tiers: the call that enters a cheaper tier reprices the period, so
/// the period's charges always equal `calls × price of the tier reached`.
#[tokio::test]
async fn per_call_volume_tiers_cross_their_boundaries() {
    let db = TestDb::postgres().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let payg = add_customer(url, "Payg", "metered");
    let key = create_key(url, &payg);
    let proxy = Proxy::serve(dir.path(), &config(url, ""));
    let c = client(&proxy, &key).await;
    let mut charged = Vec::new();
    for n in 1..=5 {
        let r = c
            .post(&call(json!(n), "echo", json!({"message": n.to_string()})))
            .await
            .response();
        let meta = &r["result"]["_meta"][META];
        assert_eq!(meta["period_calls"], n, "{r}");
        assert_eq!(meta["unit"], "usd");
        charged.push(meta["charged"].as_str().unwrap().to_owned());
    }
    // 0.01, 0.01 | 3×0.005−0.02 = −0.005, 0.005 | 5×0.001−0.02 = −0.015.
    assert_eq!(charged, ["0.01", "0.01", "-0.005", "0.005", "-0.015"]);
    // A failed call is not charged and not counted.
    let failed = c
        .post(&call(json!(9), "no-such-tool", json!({})))
        .await
        .response();
    assert!(failed["result"]["_meta"][META].is_null(), "{failed}");
    let charges: i64 = ledger(url, &payg)
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| e["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(
        charges,
        5 * 1_000,
        "5 calls at 0.001 USD = 5,000 micro-dollars"
    );
}

/// 1,000 concurrent calls of 1 credit against a balance of 500: exactly 500
/// are served, the balance ends at 0, and the ledger adds up.
async fn exact_under_concurrency(db: &TestDb, proxies: usize) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Busy", "starter");
    let key = create_key(url, &acme);
    grant(url, &acme, 500, "load");
    let running: Vec<Proxy> = (0..proxies)
        .map(|i| {
            let sub = dir.path().join(format!("p{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            Proxy::serve(&sub, &config(url, ""))
        })
        .collect();
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(client(&running[i % proxies], &key).await);
    }
    let calls = clients.iter().enumerate().flat_map(|(i, c)| {
        (0..100).map(move |n| async move {
            let r = c
                .post(&call(
                    json!(n),
                    "echo",
                    json!({"message": format!("{i}-{n}")}),
                ))
                .await
                .response();
            if r.get("result").is_some() {
                assert_eq!(first_text(&r), format!("Echo: {i}-{n}"));
                "served".to_owned()
            } else {
                r["error"]["data"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            }
        })
    });
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in futures_util::future::join_all(calls).await {
        *outcomes.entry(outcome).or_default() += 1;
    }
    let want = BTreeMap::from([
        ("insufficient_credits".to_owned(), 500),
        ("served".to_owned(), 500),
    ]);
    if outcomes != want {
        let log: Vec<String> = running
            .iter()
            .flat_map(|p| p.stderr.try_iter())
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .take(10)
            .collect();
        panic!("outcomes {outcomes:?}; proxy log:\n{}", log.join("\n"));
    }
    assert_eq!(balance(url, &acme), 0);
    let entries = ledger(url, &acme);
    assert_eq!(
        entries
            .iter()
            .map(|e| e["amount"].as_i64().unwrap())
            .sum::<i64>(),
        0
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["kind"] == "reservation")
            .count(),
        500
    );
    drop(clients);
    for proxy in running {
        proxy.terminate();
    }
    reconcile_with_usage(url, &acme, &entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_on_sqlite() {
    exact_under_concurrency(&TestDb::sqlite().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_on_postgres() {
    exact_under_concurrency(&TestDb::postgres().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_on_mysql() {
    exact_under_concurrency(&TestDb::mysql().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_with_two_proxies_on_one_postgres() {
    exact_under_concurrency(&TestDb::postgres().await, 2).await;
}

/// An upstream that dies mid-call: the call's credits come back.
#[tokio::test]
async fn an_upstream_crash_is_refunded() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Crash", "starter");
    let key = create_key(url, &acme);
    grant(url, &acme, 10, "start");
    let misbehaving = common::misbehaving_stdio();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = {:?}\n[database]\nurl = {url:?}\n{PLANS}",
        misbehaving[0],
        &misbehaving[1..]
    );
    let proxy = Proxy::serve(dir.path(), &toml);
    let c = client(&proxy, &key).await;
    let crashed = c.post(&call(json!(1), "crash", json!({}))).await.response();
    assert!(crashed.get("error").is_some(), "{crashed}");
    assert!(
        eventually(Duration::from_secs(5), || balance(url, &acme) == 10).await,
        "the crashed call was not refunded"
    );
    let kinds: Vec<String> = ledger(url, &acme)
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["grant", "reservation", "refund"]);
}

/// `check` lists every plan problem with its key.
#[test]
fn check_lists_plan_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\ncommand = \"sh\"\n[database]\nurl = \"sqlite://x.db\"\n\
         [[plans]]\nid = \"a\"\nmodel = \"per_call\"\ncurrency = \"usd\"\n[plans.prices]\ndefault = \"0.0000001\"\n\
         [[plans]]\nid = \"b\"\nmodel = \"nope\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("plans.a.prices.default: `0.0000001` has more than 6 digits"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plans.b.model: unknown billing model `nope`"),
        "{stderr}"
    );
    let _ = Path::new(".");
}

/// Rate limits are per customer (a new session does not reset them) and
/// refuse with a JSON-RPC error carrying `retry_after_ms`.
#[tokio::test]
async fn rate_limits_hold_across_sessions() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Hasty", "metered");
    let key = create_key(url, &acme);
    // The built-in demo server answers without streaming first, so every
    // answer is a plain JSON response that can carry the headers.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {url:?}\n[rate_limits.plans.metered]\nper_minute = {{ requests = 4 }}\n{PLANS}",
        common::bin()
    );
    let proxy = Proxy::serve(dir.path(), &toml);
    let first = client(&proxy, &key).await;
    // Every request of an identified customer counts, initialize included:
    // this session's initialize and two calls, then the next session's
    // initialize, use the four.
    for n in 1..=2 {
        let answer = first
            .post(&call(json!(n), "echo", json!({"message": "x"})))
            .await;
        let r = answer.response();
        assert!(r.get("result").is_some(), "call {n}: {r}");
        // HTTP clients see the limit in headers too.
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header("x-ratelimit-limit").as_deref(),
            Some("4"),
            "{:?}",
            answer.headers
        );
        let left = (4 - 1 - n).to_string();
        assert_eq!(header("x-ratelimit-remaining"), Some(left), "call {n}");
        assert!(header("retry-after").is_none());
    }
    let second = client(&proxy, &key).await;
    let answer = second
        .post(&call(json!(4), "echo", json!({"message": "x"})))
        .await;
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(answer.headers["x-ratelimit-remaining"], "0");
    let refused = answer.response();
    let data = &refused["error"]["data"];
    assert_eq!(data["reason"], "rate_limited", "{refused}");
    assert_eq!(data["window"], "minute");
    let retry = data["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 20_000, "{refused}");
    assert_eq!(
        retry_after,
        retry.div_ceil(1000),
        "Retry-After is retry_after_ms in whole seconds"
    );
    // The refused call was not charged.
    let charges = ledger(url, &acme)
        .iter()
        .filter(|e| e["kind"] == "charge")
        .count();
    assert_eq!(charges, 2);
}

/// `plans show` prints a plan's effective prices from the configuration;
/// `credits adjust` never takes a balance below zero.
#[tokio::test]
async fn plans_and_credit_adjustments_from_the_cli() {
    let example = common::root().join("config-examples/per-call.toml");
    let out = std::process::Command::new(common::bin())
        .args([
            "plans",
            "show",
            "payg",
            "--json",
            "--config",
            example.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["model"], "per_call");
    assert_eq!(plan["prices"]["search_web"], "0.002");
    assert_eq!(plan["schedule"]["tiers"][1]["price"], 800);
    assert_eq!(plan["minimum"], "5");

    let db = TestDb::sqlite().await;
    let url = db.url();
    let acme = add_customer(url, "Adjusted", "starter");
    grant(url, &acme, 5, "g1");
    let (ok, out) = admin_text(
        url,
        &[
            "credits",
            "adjust",
            "--customer",
            &acme,
            "--amount",
            "-6",
            "--reason",
            "typo",
        ],
    );
    assert!(!ok && out.contains("below zero"), "{out}");
    let (ok, out) = admin_text(
        url,
        &[
            "credits",
            "adjust",
            "--customer",
            &acme,
            "--amount",
            "-5",
            "--reason",
            "refund to card",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(balance(url, &acme), 0);
    let (ok, out) = admin_text(
        url,
        &["credits", "grant", "--customer", &acme, "--amount", "0"],
    );
    assert!(!ok && out.contains("at least 1"), "{out}");
    let (ok, out) = admin_text(url, &["credits", "balance", "--customer", "cus_nobody"]);
    assert!(!ok && out.contains("not found"), "{out}");
}

/// Bad admin input is refused with a message saying what to fix, and
/// changes nothing.
#[tokio::test]
async fn bad_credit_and_plan_commands_are_refused() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let acme = add_customer(url, "Careful", "starter");
    grant(url, &acme, 3, "g");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "credits",
                "adjust",
                "--customer",
                &acme,
                "--amount",
                "0",
                "--reason",
                "x",
            ],
            "changes nothing",
        ),
        (
            &[
                "credits",
                "adjust",
                "--customer",
                &acme,
                "--amount",
                "2",
                "--reason",
                " ",
            ],
            "--reason must say why",
        ),
        (
            &[
                "credits",
                "grant",
                "--customer",
                &acme,
                "--amount",
                "2",
                "--idempotency-key",
                "",
            ],
            "--idempotency-key must not be empty",
        ),
        (
            &["credits", "grant", "--customer", "acme", "--amount", "2"],
            "is not a customer id",
        ),
    ];
    for (args, says) in cases {
        let (ok, out) = admin_text(url, args);
        assert!(!ok && out.contains(says), "{args:?}: {out}");
    }
    assert_eq!(balance(url, &acme), 3);

    let plans = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = plans(&["plans", "list"]);
    assert!(!ok && err.contains("--config is required"), "{err}");
    let example = common::root().join("config-examples/credits.toml");
    let (ok, err) = plans(&[
        "plans",
        "show",
        "gold",
        "--config",
        example.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("there is no plan \"gold\""), "{err}");
}

/// `check` refuses billing that could not charge anyone: no database, or a
/// billing layer outside auth; and bad rate limits, with their keys.
#[test]
fn check_refuses_billing_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, toml: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(common::bin())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let plan = "[[plans]]\nid = \"p\"\nmodel = \"credits\"\nprices = { default = 1 }\n";
    let err = check(
        "nodb.toml",
        &format!("[upstream]\ncommand = \"sh\"\n{plan}"),
    );
    assert!(err.contains("plans: billing needs a [database]"), "{err}");
    let err = check(
        "order.toml",
        &format!(
            "[upstream]\ncommand = \"sh\"\n[database]\nurl = \"sqlite://x.db\"\n\
             [plugins]\norder = [\"usage_recorder\", \"billing\", \"auth\"]\n{plan}"
        ),
    );
    assert!(
        err.contains("plugins.order: \"billing\" must come after \"auth\""),
        "{err}"
    );
    let err = check(
        "limits.toml",
        "[upstream]\ncommand = \"sh\"\n[database]\nurl = \"sqlite://x.db\"\n\
         [rate_limits.plans.p]\nper_minute = { requests = 0 }\n",
    );
    assert!(
        err.contains("rate_limits.plans.p.per_minute.requests"),
        "{err}"
    );
}
