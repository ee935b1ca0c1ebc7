//! A proxy with the management API on, for the API's tests: an admin
//! token, three plans (one per charging style) and the demo upstream.

use std::path::Path;

use super::{Proxy, bin};

/// The admin token of [`start`]'s `[api]`.
pub const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";

/// The plans of [`start`]'s configuration.
pub const PLANS: &str = r#"
[[plans]]
id = "starter"
model = "credits"
prices = { default = 1 }

[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 100 }

[[plans]]
id = "payg"
model = "per_call"
currency = "usd"
prices = { default = "0.01" }
"#;

/// The proxy over its demo upstream, on `db`, with `[api]`
/// (`admin_tokens = [TOKEN]`) and request bodies up to `max_body_bytes`;
/// its configuration is written in `dir`.
pub fn start(dir: &Path, db: &str, max_body_bytes: usize) -> Proxy {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\nmax_connections = 10\n{PLANS}\n\
         [api]\nadmin_tokens = [\"{TOKEN}\"]\nmax_body_bytes = {max_body_bytes}\n",
        bin()
    );
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    Proxy::start(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    )
}
