//! `[auth]`: which credentials are accepted and which methods need one.

use serde::Deserialize;

use crate::jwt::JwtConfig;

/// What to do when a valid JWT names a subject no customer has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSubject {
    /// Refuse the call as unauthenticated.
    #[default]
    Reject,
    /// Create a customer for the subject, on `auth.provision_plan`.
    Provision,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Methods a client may call without a credential. Protocol-level
    /// messages by default (`initialize`, `ping`); add `tools/list` to let
    /// anyone list the tools. `*` at the end of an entry matches a prefix.
    /// A credential that is present is always checked, even on these.
    pub public_methods: Vec<String>,
    /// Whether `mcp_…` API keys are accepted.
    pub api_keys: bool,
    /// JWT verification (`[auth.jwt]`); without it, JWTs are refused.
    pub jwt: Option<JwtConfig>,
    /// A valid JWT whose subject is no customer: `reject` or `provision`.
    pub unknown_subject: UnknownSubject,
    /// The plan a provisioned customer is put on.
    pub provision_plan: Option<String>,
    /// OAuth authorization servers that issue tokens for this MCP server.
    /// When set, `/.well-known/oauth-protected-resource` is served and 401
    /// answers point to it (`resource_metadata`), per the MCP authorization
    /// specification.
    pub authorization_servers: Vec<String>,
    /// The public URL of this MCP endpoint (the OAuth resource identifier),
    /// e.g. `https://mcp.example.com/mcp`. Required with
    /// `authorization_servers`.
    pub resource_url: Option<String>,
    /// How often `last_used_at` of keys is written back, in seconds (one
    /// batched write, never one per call).
    pub last_used_flush_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_methods: vec!["initialize".into(), "ping".into()],
            api_keys: true,
            jwt: None,
            unknown_subject: UnknownSubject::Reject,
            provision_plan: None,
            authorization_servers: Vec::new(),
            resource_url: None,
            last_used_flush_secs: 5,
        }
    }
}

impl AuthConfig {
    /// Every problem with this section, as `(key path, message)` pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.api_keys && self.jwt.is_none() {
            problems.push((
                "auth".to_owned(),
                "neither API keys nor JWT are enabled: no caller could ever authenticate; set api_keys = true or add [auth.jwt]".to_owned(),
            ));
        }
        if self.unknown_subject == UnknownSubject::Provision && self.jwt.is_none() {
            problems.push((
                "auth.unknown_subject".to_owned(),
                "\"provision\" only applies to JWT subjects; add [auth.jwt]".to_owned(),
            ));
        }
        if !self.authorization_servers.is_empty() {
            match &self.resource_url {
                None => problems.push((
                    "auth.resource_url".to_owned(),
                    "is required with authorization_servers: the public URL of this MCP endpoint"
                        .to_owned(),
                )),
                Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                    problems.push((
                        "auth.resource_url".to_owned(),
                        format!("{url:?} is not an http(s) URL"),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.last_used_flush_secs == 0 {
            problems.push((
                "auth.last_used_flush_secs".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        problems
    }

    /// Whether `method` may be called without a credential.
    pub fn is_public(&self, method: &str) -> bool {
        self.public_methods
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => method.starts_with(prefix),
                None => p == method,
            })
    }
}
