//! Helpers of the billing tests: customers, keys and credits through the
//! real CLI, and a proxy configuration over server-everything.

use serde_json::{Value, json};

use super::{Proxy, RawClient, admin_json, admin_text};

/// The `_meta` key of billing facts.
pub const META: &str = "mcp-meter/billing";

pub fn add_customer(db: &str, name: &str, plan: &str) -> String {
    let created = admin_json(
        db,
        &["customers", "add", "--name", name, "--plan", plan, "--json"],
    );
    created[0]["id"].as_str().unwrap().to_owned()
}

pub fn create_key(db: &str, customer: &str) -> String {
    let created = admin_json(db, &["keys", "create", "--customer", customer, "--json"]);
    created["key"].as_str().unwrap().to_owned()
}

pub fn grant(db: &str, customer: &str, amount: i64, key: &str) -> String {
    let (ok, out) = admin_text(
        db,
        &[
            "credits",
            "grant",
            "--customer",
            customer,
            "--amount",
            &amount.to_string(),
            "--idempotency-key",
            key,
        ],
    );
    assert!(ok, "{out}");
    out
}

pub fn balance(db: &str, customer: &str) -> i64 {
    admin_json(
        db,
        &["credits", "balance", "--customer", customer, "--json"],
    )["balance"]
        .as_i64()
        .unwrap()
}

pub fn ledger(db: &str, customer: &str) -> Vec<Value> {
    admin_json(
        db,
        &[
            "credits",
            "ledger",
            "--customer",
            customer,
            "--limit",
            "10000",
            "--json",
        ],
    )
    .as_array()
    .unwrap()
    .clone()
}

pub fn everything() -> (String, Vec<String>) {
    let mut command = super::everything_stdio();
    let program = command.remove(0);
    (program, command)
}

/// A configuration serving server-everything over HTTP on a free port,
/// with the database `db`, `extra` TOML, then `plans`.
pub fn config_with(db: &str, extra: &str, plans: &str) -> String {
    let (command, args) = everything();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 64\n[upstream]\ncommand = {command:?}\nargs = {args:?}\n\
         [database]\nurl = {db:?}\nmax_connections = 20\n{extra}\n{plans}"
    )
}

pub fn call(id: Value, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":arguments}})
}

pub async fn client(proxy: &Proxy, key: &str) -> RawClient {
    let mut client = RawClient::with_bearer(&proxy.url, key);
    client.initialize("2025-11-25").await;
    client
}
