//! Real MCP SDK clients with credentials through mcp-meter: the Rust SDK
//! (rmcp) connects with its API key and uses the upstream's tools as itself;
//! without a key, or with a wrong one, it cannot even connect (the proxy
//! answers its `initialize` with 401) and the upstream is never reached.

mod common;

use common::db::TestDb;
use common::{Proxy, admin_json};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

fn config(url: &str, key: Option<&str>) -> StreamableHttpClientTransportConfig {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    match key {
        Some(key) => config.auth_header(key.to_owned()),
        None => config,
    }
}

#[tokio::test]
async fn rmcp_client_with_a_key_works_and_without_one_cannot_connect() {
    let db = TestDb::postgres().await;
    let customer = admin_json(db.url(), &["customers", "add", "--name", "SDK", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = admin_json(
        db.url(),
        &["keys", "create", "--customer", &customer, "--json"],
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let server = common::everything_stdio();
    let proxy = Proxy::serve(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = {:?}\n\
             [database]\nurl = {:?}\n[auth]\npublic_methods = []\n",
            server[0],
            &server[1..],
            db.url()
        ),
    );

    let client = ()
        .serve(StreamableHttpClientTransport::from_config(config(
            &proxy.url,
            Some(&key),
        )))
        .await
        .expect("connect with a key");
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    let echoed = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(
                serde_json::json!({"message": "from rmcp"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    let text = serde_json::to_value(&echoed.content[0]).unwrap();
    assert_eq!(text["text"], "Echo: from rmcp");
    client.cancel().await.unwrap();

    // public_methods = [] : even initialize needs a key.
    assert!(
        ().serve(StreamableHttpClientTransport::from_config(config(
            &proxy.url, None
        )))
        .await
        .is_err()
    );
    let stranger = mcp_meter_auth::key::ApiKey::generate();
    assert!(
        ().serve(StreamableHttpClientTransport::from_config(config(
            &proxy.url,
            Some(stranger.expose())
        )))
        .await
        .is_err()
    );

    assert!(proxy.terminate().success());
    let records = admin_json(db.url(), &["usage", "--customer", &customer, "--json"]);
    let methods: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"initialize") && methods.contains(&"tools/call"),
        "{methods:?}"
    );
}
