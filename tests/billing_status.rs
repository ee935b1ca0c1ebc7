//! `[billing] status_tool` end to end: the real proxy over server-everything
//! with the Rust SDK (rmcp) as the client. The tool is listed for a
//! customer, answers with the balance `GET /api/v1/me` shows (and follows
//! it after a paid call), costs nothing and writes nothing to the ledger;
//! a freemium customer sees their free calls; an anonymous caller does not
//! get it; an upstream tool of the same name wins (its calls are forwarded
//! and charged, the list has it once); and `mcp-meter check` refuses a name
//! MCP does not allow.

mod common;

use std::process::Command;
use std::time::Duration;

use common::billing::{add_customer, balance, call, config_with, create_key, grant, ledger};
use common::db::TestDb;
use common::{Proxy, RawClient, admin_json, bin, first_text};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "adm_status_tool_test_token";

const PLANS: &str = r#"
[[plans]]
id = "prepaid"
name = "Prepaid"
model = "credits"
prices = { default = 1 }

[[plans]]
id = "free"
model = "freemium"
freemium = { free_calls = 3, window = "day" }
"#;

fn extra(status_tool: &str) -> String {
    format!(
        "[billing]\nstatus_tool = {status_tool:?}\n[api]\nadmin_tokens = [{ADMIN_TOKEN:?}]\n\
         [auth]\npublic_methods = [\"initialize\", \"ping\", \"tools/list\"]\n"
    )
}

async fn connect(url: &str, key: &str) -> RunningService<RoleClient, ()> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(key.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("connect with a key")
}

async fn call_tool(
    client: &RunningService<RoleClient, ()>,
    name: &str,
    args: Value,
) -> CallToolResult {
    client
        .call_tool(
            CallToolRequestParams::new(name.to_owned())
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap()
}

async fn me(proxy: &Proxy, key: &str) -> Value {
    let base = proxy.url.trim_end_matches("/mcp");
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn text_of(result: &CallToolResult) -> String {
    serde_json::to_value(&result.content[0]).unwrap()["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_status_tool_tells_the_balance_of_me_and_costs_nothing() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "prepaid");
    let key = create_key(url, &acme);
    grant(url, &acme, 10, "status-tool-grant");
    let proxy = Proxy::serve(
        dir.path(),
        &config_with(url, &extra("billing_status"), PLANS),
    );
    let client = connect(&proxy.url, &key).await;

    let tools = client.list_all_tools().await.unwrap();
    let ours: Vec<_> = tools
        .iter()
        .filter(|t| t.name == "billing_status")
        .collect();
    assert_eq!(ours.len(), 1, "{tools:#?}");
    assert!(
        tools.iter().any(|t| t.name == "echo"),
        "upstream tools are listed too"
    );
    let tool = ours[0];
    assert!(tool.description.as_deref().unwrap().contains("Free"));
    assert_eq!(tool.input_schema["type"], "object");
    let output = tool.output_schema.as_ref().expect("an outputSchema");
    assert_eq!(
        output["properties"]["balance"]["type"],
        json!(["integer", "null"])
    );

    let before = ledger(url, &acme);
    let status = call_tool(&client, "billing_status", json!({})).await;
    assert_eq!(status.is_error, Some(false));
    let facts = status
        .structured_content
        .clone()
        .expect("structuredContent");
    assert_eq!(facts["customer_id"], acme.as_str());
    assert_eq!(facts["plan_id"], "prepaid");
    assert_eq!(facts["plan_name"], "Prepaid");
    assert_eq!(facts["model"], "credits");
    assert_eq!(facts["unit"], "credits");
    assert_eq!(facts["balance"], 10);
    assert!(
        text_of(&status).contains("Balance: 10 credits"),
        "{}",
        text_of(&status)
    );
    let shown = me(&proxy, &key).await;
    assert_eq!(shown["balance"], facts["balance"]);
    assert_eq!(
        shown["billing"], facts,
        "/me and the tool tell the same facts"
    );

    // Free: a second look changes nothing either.
    let again = call_tool(&client, "billing_status", json!({})).await;
    assert_eq!(again.structured_content.unwrap()["balance"], 10);
    assert_eq!(balance(url, &acme), 10);
    assert_eq!(
        ledger(url, &acme),
        before,
        "the status tool wrote to the ledger"
    );

    // A paid call moves the balance, and the tool follows.
    let echoed = call_tool(&client, "echo", json!({"message": "paid"})).await;
    assert_eq!(text_of(&echoed), "Echo: paid");
    let after = call_tool(&client, "billing_status", json!({})).await;
    assert_eq!(after.structured_content.unwrap()["balance"], 9);
    assert_eq!(me(&proxy, &key).await["balance"], 9);
    assert_eq!(balance(url, &acme), 9);
    client.cancel().await.unwrap();

    // A freemium customer sees their free calls and the window.
    let bea = add_customer(url, "Bea", "free");
    let bea_key = create_key(url, &bea);
    let bea_client = connect(&proxy.url, &bea_key).await;
    call_tool(&bea_client, "echo", json!({"message": "one"})).await;
    let free = call_tool(&bea_client, "billing_status", json!({}))
        .await
        .structured_content
        .unwrap();
    assert_eq!(free["model"], "freemium");
    assert_eq!(
        free["quota"],
        json!({"used": 1, "limit": 3, "remaining": 2})
    );
    assert!(free["balance"].is_null());
    let start = free["period_start"].as_str().unwrap();
    let end = free["period_end"].as_str().unwrap();
    assert!(
        start.ends_with("T00:00:00Z") && end.ends_with("T00:00:00Z") && start < end,
        "{free}"
    );
    // Looking did not use a free call.
    let again = call_tool(&bea_client, "billing_status", json!({}))
        .await
        .structured_content
        .unwrap();
    assert_eq!(again["quota"]["used"], 1);
    bea_client.cancel().await.unwrap();

    // Without a key (tools/list is public here) the tool is not offered,
    // and calling it is refused like any billed call.
    let mut anonymous = RawClient::new(&proxy.url);
    anonymous.initialize("2025-11-25").await;
    let listed = anonymous
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await
        .response();
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && !names.contains(&"billing_status"),
        "{names:?}"
    );
    let refused = anonymous
        .call_tool(json!(3), "billing_status", json!({}))
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    // The calls are in the usage records (free, no ledger entry).
    assert!(proxy.terminate().success());
    let records = admin_json(url, &["usage", "--customer", &acme, "--json"]);
    let status_calls = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == "billing_status")
        .count();
    assert_eq!(status_calls, 3, "{records:#}");
}

#[tokio::test]
async fn an_upstream_tool_of_the_same_name_is_never_shadowed() {
    let db = TestDb::sqlite().await;
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let acme = add_customer(url, "Acme", "prepaid");
    let key = create_key(url, &acme);
    grant(url, &acme, 10, "shadow-grant");
    // server-everything has an `echo` tool.
    let proxy = Proxy::serve(dir.path(), &config_with(url, &extra("echo"), PLANS));

    // A call before any tools/list: the proxy asks the upstream first,
    // finds its `echo` and forwards the call (charged like any tool).
    let mut raw = RawClient::with_bearer(&proxy.url, &key);
    raw.initialize("2025-11-25").await;
    let first = raw
        .post(&call(json!(1), "echo", json!({"message": "first"})))
        .await
        .response();
    assert_eq!(first_text(&first), "Echo: first", "{first}");
    assert_eq!(balance(url, &acme), 9);
    proxy.wait_for_log("status_tool", Duration::from_secs(10));

    let client = connect(&proxy.url, &key).await;
    let tools = client.list_all_tools().await.unwrap();
    let echoes: Vec<_> = tools.iter().filter(|t| t.name == "echo").collect();
    assert_eq!(echoes.len(), 1, "no duplicate: {echoes:#?}");
    assert!(
        !echoes[0]
            .description
            .as_deref()
            .unwrap_or_default()
            .contains("billing status"),
        "{echoes:#?}"
    );
    let echoed = call_tool(&client, "echo", json!({"message": "second"})).await;
    assert_eq!(text_of(&echoed), "Echo: second");
    assert!(echoed.structured_content.is_none());
    assert_eq!(balance(url, &acme), 8);
    client.cancel().await.unwrap();
}

#[test]
fn check_names_the_key_of_a_status_tool_name_mcp_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(129);
    for (name, why) in [
        ("", "empty"),
        ("billing status", "' '"),
        ("billing/status", "'/'"),
        (long.as_str(), "at most 128"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "[upstream]\ncommand = \"true\"\n[database]\nurl = \"sqlite://{}/db.sqlite\"\n\
                 [billing]\nstatus_tool = {name:?}\n{PLANS}",
                dir.path().display()
            ),
        )
        .unwrap();
        let output = Command::new(bin())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name:?}: {stderr}");
        assert!(
            stderr.contains("billing.status_tool:"),
            "{name:?}: {stderr}"
        );
        assert!(stderr.contains(why), "{name:?}: {stderr}");
    }
    // Without [[plans]] nothing would answer it.
    let path = dir.path().join("no-plans.toml");
    std::fs::write(
        &path,
        "[upstream]\ncommand = \"true\"\n[billing]\nstatus_tool = \"billing_status\"\n",
    )
    .unwrap();
    let output = Command::new(bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("billing.status_tool:") && stderr.contains("[[plans]]"),
        "{stderr}"
    );
    // A good name passes.
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\ncommand = \"true\"\n[database]\nurl = \"sqlite://{}/db.sqlite\"\n\
             [billing]\nstatus_tool = \"my-server.billing_status\"\n{PLANS}",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = Command::new(bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
