//! The quickstart: `mcp-meter demo` serves the built-in demo server (a real
//! child process) and a client can use all of its tools through the proxy.

mod common;

use common::{Proxy, RawClient, first_text};
use serde_json::json;

/// The demo's printed API key and balance (the banner lines `API key:
/// mcp_…` and `Balance: N credits`).
fn printed_key_and_balance(proxy: &Proxy) -> (String, i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut key = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = proxy
            .stdout
            .recv_timeout(left)
            .expect("the demo prints its API key and balance");
        if let Some(printed) = line.trim().strip_prefix("API key:") {
            key = Some(printed.trim().to_owned());
        }
        if let Some(balance) = line
            .trim()
            .strip_prefix("Balance:")
            .and_then(|b| b.trim().strip_suffix(" credits"))
        {
            let key = key.expect("the key comes before the balance");
            return (key, balance.parse().expect("a whole balance"));
        }
    }
}

#[tokio::test]
async fn the_demo_serves_its_tools_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let proxy = Proxy::start(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ],
        &[],
    );
    let (key, balance) = printed_key_and_balance(&proxy);
    assert!(key.starts_with("mcp_") && key.len() == 53, "{key}");
    assert_eq!(balance, 100, "the demo customer starts with 100 credits");

    // Without the key, calls are refused before any session exists.
    let anonymous = RawClient::new(&proxy.url);
    let refused = anonymous
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.headers.contains_key("www-authenticate"));

    let mut client = RawClient::with_bearer(&proxy.url, &key);
    let init = client.initialize("2025-11-25").await;
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "mcp-meter-demo-upstream"
    );

    let list = client
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await
        .response();
    let mut names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["add", "echo", "fail", "slow"]);

    let sum = client
        .call_tool(json!(2), "add", json!({"a": 40, "b": 2}))
        .await;
    let sum = sum.response();
    assert_eq!(first_text(&sum), "42");
    let billing = &sum["result"]["_meta"]["mcp-meter/billing"];
    assert_eq!(
        (billing["charged"].clone(), billing["balance"].clone()),
        (json!(1), json!(99)),
        "{sum}"
    );
    let overflow = client
        .call_tool(json!(3), "add", json!({"a": i64::MAX, "b": 1}))
        .await
        .response();
    assert_eq!(overflow["result"]["isError"], true, "{overflow}");

    let echo = client
        .call_tool(json!(4), "echo", json!({"message": "grüß dich ✓"}))
        .await;
    assert_eq!(first_text(&echo.response()), "grüß dich ✓");

    let failed = client
        .call_tool(json!(5), "fail", json!({}))
        .await
        .response();
    assert_eq!(failed["result"]["isError"], true);

    // `slow` with a progress token answers as an SSE stream: progress first,
    // then the result.
    let slow = client
        .post(
            &json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{
            "name":"slow","arguments":{"steps":3,"delay_ms":20},"_meta":{"progressToken":"p-1"}}}),
        )
        .await;
    assert!(
        slow.content_type.starts_with("text/event-stream"),
        "{slow:?}"
    );
    let messages = slow.messages();
    let progress: Vec<_> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{messages:?}");
    assert_eq!(progress[2]["params"]["progressToken"], "p-1");
    assert_eq!(progress[2]["params"]["progress"], 3.0);
    assert_eq!(first_text(messages.last().unwrap()), "done after 3 steps");

    // Out-of-range arguments are refused, not run for hours.
    let refused = client
        .call_tool(json!(7), "slow", json!({"steps": 1_000_000}))
        .await
        .response();
    assert_eq!(refused["error"]["code"], -32602, "{refused}");

    // Every call is in the usage records once the proxy has stopped.
    assert!(proxy.terminate().success());
    let customers = common::admin_json(&database, &["customers", "list", "--json"]);
    let demo = customers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Demo customer")
        .expect("the demo customer exists");
    let id = demo["id"].as_str().unwrap();
    let records = common::admin_json(&database, &["usage", "--customer", id, "--json"]);
    let mut outcomes: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .map(|r| {
            (
                r["tool"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    outcomes.sort();
    let expected = [
        ("add", "ok"),
        ("add", "tool_error"),
        ("echo", "ok"),
        ("fail", "tool_error"),
        ("slow", "ok"),
        ("slow", "upstream_error"),
    ];
    assert_eq!(
        outcomes,
        expected.map(|(t, o)| (t.to_owned(), o.to_owned())),
        "{records}"
    );
    // Three calls were served and charged (add, echo: 1 credit; slow: 5);
    // the three failures were refunded.
    let balance = common::admin_json(
        &database,
        &["credits", "balance", "--customer", id, "--json"],
    );
    assert_eq!(balance["balance"], 100 - 1 - 1 - 5, "{balance}");
}
