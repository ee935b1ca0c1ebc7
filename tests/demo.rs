//! The quickstart: `mcp-meter demo` serves the built-in demo server (a real
//! child process) and a client can use all of its tools through the proxy.

mod common;

use common::{Proxy, RawClient, first_text};
use serde_json::json;

#[tokio::test]
async fn the_demo_serves_its_tools_through_the_proxy() {
    let proxy = Proxy::start(&["demo", "--listen", "127.0.0.1:0"], &[]);
    let mut client = RawClient::new(&proxy.url);
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
    assert_eq!(first_text(&sum.response()), "42");
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
}
