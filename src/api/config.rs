//! `[api]`: the management API's admin credentials and limits.
//!
//! ```toml
//! [api]
//! admin_tokens = ["${MCP_METER_ADMIN_TOKEN}"]   # several while rotating
//! max_body_bytes = 65536
//! ```

use serde::Deserialize;

/// The shortest admin token accepted (a token is a password: long and
/// random, e.g. `openssl rand -hex 32`).
pub const MIN_TOKEN_CHARS: usize = 24;

/// The default largest request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// `[api]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens that open the admin routes (`/api/v1/…` but `/me`).
    pub admin_tokens: Vec<String>,
    /// The largest request body accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Serve the API (and `/metrics`) on this address instead of the
    /// proxy's listener, e.g. `127.0.0.1:9090` for a private network only.
    pub listen: Option<String>,
    /// An admin JWT (checked like customers' tokens, by `[auth.jwt]`) is
    /// accepted when this claim holds `admin_jwt_role` (a string equal to
    /// it, or an array containing it). Unset: no admin JWTs.
    pub admin_jwt_role_claim: Option<String>,
    /// The role that claim must hold (default `mcp-meter-admin`).
    #[serde(default = "default_admin_role")]
    pub admin_jwt_role: String,
}

/// The default role of an admin JWT.
pub const DEFAULT_ADMIN_ROLE: &str = "mcp-meter-admin";

fn default_admin_role() -> String {
    DEFAULT_ADMIN_ROLE.to_owned()
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field(
                "admin_tokens",
                &format_args!("[{} hidden]", self.admin_tokens.len()),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("listen", &self.listen)
            .field("admin_jwt_role_claim", &self.admin_jwt_role_claim)
            .field("admin_jwt_role", &self.admin_jwt_role)
            .finish()
    }
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// What is wrong with `[api]`, as (key path, message) pairs; `has_jwt`
/// says whether `[auth.jwt]` is configured.
pub fn problems(api: &ApiConfig, has_database: bool, has_jwt: bool) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if !has_database {
        found.push((
            "api".to_owned(),
            "the management API needs a [database] (e.g. url = \"sqlite://mcp-meter.db\")"
                .to_owned(),
        ));
    }
    if api.admin_tokens.is_empty() {
        found.push((
            "api.admin_tokens".to_owned(),
            "list at least one admin token (e.g. \"${MCP_METER_ADMIN_TOKEN}\")".to_owned(),
        ));
    }
    for (i, token) in api.admin_tokens.iter().enumerate() {
        let chars = token.chars().count();
        if chars < MIN_TOKEN_CHARS {
            found.push((
                format!("api.admin_tokens[{i}]"),
                format!(
                    "is {chars} characters; use at least {MIN_TOKEN_CHARS} random ones (e.g. `openssl rand -hex 32`)"
                ),
            ));
        } else if token.starts_with("mcp_") {
            found.push((
                format!("api.admin_tokens[{i}]"),
                "looks like a customer API key (mcp_…); admin tokens must not be customer keys"
                    .to_owned(),
            ));
        } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            found.push((
                format!("api.admin_tokens[{i}]"),
                "contains whitespace; copy the token exactly".to_owned(),
            ));
        }
    }
    if api.admin_jwt_role_claim.is_some() && !has_jwt {
        found.push((
            "api.admin_jwt_role_claim".to_owned(),
            "admin JWTs are verified by [auth.jwt]: configure it, or remove this key".to_owned(),
        ));
    }
    if let Some(listen) = &api.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        found.push((
            "api.listen".to_owned(),
            format!("`{listen}` is not an address like 127.0.0.1:9090"),
        ));
    }
    if api.max_body_bytes < 1024 {
        found.push((
            "api.max_body_bytes".to_owned(),
            "must be at least 1024".to_owned(),
        ));
    }
    found
}
