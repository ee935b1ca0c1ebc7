//! TOML configuration: typed sections, `${ENV}` expansion and validation.
//!
//! Loading goes in three steps, each reporting every problem it can find with
//! the key path it belongs to (`upstream.command: …`):
//! 1. the file is read as a TOML table and every string has `${VAR}` (or
//!    `${VAR:-default}`) expanded from the environment ([`env`]);
//! 2. the table is deserialized into [`Config`]; unknown keys are errors;
//! 3. [`validate`] checks what types cannot (one of `command`/`url`, a
//!    parseable listen address, known plugin names, …).
//!
//! Nothing here starts a process or opens a socket.

mod env;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use validate::{resolve_command, validate};

/// One problem found in a configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `server.listen` (empty for the whole file).
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Where the configuration came from (a file path, or `command line`).
    pub source_name: String,
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} problem{}:",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The downstream listener (Streamable HTTP) and proxy-wide limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The MCP server being proxied.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Which plugins run, outermost first.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Log output.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The SQL database for customers, keys and usage. Without it the proxy
    /// is a plain passthrough (no auth, no usage records).
    pub database: Option<DatabaseConfig>,
    /// Credentials: API keys and JWTs (the `auth` plugin).
    #[serde(default)]
    pub auth: mcp_meter_auth::AuthConfig,
    /// The usage recorder's queue and batching (the `usage_recorder` plugin).
    #[serde(default)]
    pub usage: mcp_meter_usage_recorder::RecorderConfig,
    /// Settings shared by all plans (the `billing` plugin).
    #[serde(default)]
    pub billing: mcp_meter_billing::plan::BillingConfig,
    /// The plans customers are on; with any plan, metered calls are charged.
    #[serde(default)]
    pub plans: Vec<mcp_meter_billing::plan::PlanConfig>,
    /// Request-rate and concurrency limits per customer, by plan (the
    /// `rate_limit` plugin).
    pub rate_limits: Option<mcp_meter_rate_limit::RateLimitConfig>,
    /// Stripe: the webhook endpoint's secrets and how Stripe's prices map
    /// to plans and credit packs. Without it `POST /webhooks/stripe`
    /// answers `404`.
    pub stripe: Option<crate::stripe::StripeConfig>,
    /// The management API under `/api/v1` (admin tokens, limits). Without
    /// it only `/api/v1/me/checkout` is served.
    pub api: Option<crate::api::ApiConfig>,
    /// `GET /metrics`: per-customer series and the label cap.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
}

impl Config {
    /// The plugin names in force, outermost first (see
    /// [`PluginsConfig::effective_order`]).
    pub fn plugin_order(&self) -> Vec<String> {
        self.plugins.effective_order(
            self.database.is_some(),
            self.rate_limits.is_some(),
            !self.plans.is_empty(),
        )
    }
}

/// `[database]`: where customers, keys and usage records live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://mcp-meter.db` (created on first start), `postgres://…` or
    /// `mysql://…` (MySQL or MariaDB).
    pub url: String,
    /// Most open connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a call may wait for a free connection before it is refused
    /// as "database unavailable", in seconds.
    #[serde(default = "default_acquire_timeout_secs")]
    pub acquire_timeout_secs: u64,
}

fn default_max_connections() -> u32 {
    10
}

fn default_acquire_timeout_secs() -> u64 {
    3
}

/// `[server]`: where clients connect and the limits that protect the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP listener binds, `host:port` (`:0` picks a free port).
    pub listen: String,
    /// Path of the MCP endpoint.
    pub mcp_path: String,
    /// Origins allowed to call the endpoint from a browser (`Origin` header).
    /// Empty: only loopback origins (`http://localhost:*`, `127.0.0.1`, `[::1]`).
    /// `"*"` allows any origin (only behind another guard).
    pub allowed_origins: Vec<String>,
    /// Largest JSON-RPC message (or batch) accepted from a client or upstream.
    pub max_message_bytes: usize,
    /// Most concurrent downstream sessions (and so stdio children).
    pub max_sessions: usize,
    /// A session with no traffic for this long is closed (its child stopped).
    pub session_idle_timeout_secs: u64,
    /// How long a request may wait for the upstream's answer.
    pub request_timeout_secs: u64,
    /// On SIGTERM/Ctrl-C, how long in-flight calls may take to finish.
    pub shutdown_grace_secs: u64,
    /// Server→client messages kept for a session with no open stream.
    pub max_buffered_messages: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            mcp_path: "/mcp".into(),
            allowed_origins: Vec::new(),
            max_message_bytes: 4 * 1024 * 1024,
            max_sessions: 256,
            session_idle_timeout_secs: 30 * 60,
            request_timeout_secs: 300,
            shutdown_grace_secs: 10,
            max_buffered_messages: 1000,
        }
    }
}

/// `[upstream]`: exactly one of `command` (a stdio server) or `url` (a
/// Streamable HTTP server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Program to run, one child per downstream session.
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables for the child.
    pub env: BTreeMap<String, String>,
    /// Working directory for the child.
    pub cwd: Option<PathBuf>,
    /// URL of a Streamable HTTP MCP endpoint.
    pub url: Option<String>,
    /// Extra headers on every request to `url` (e.g. its own bearer token).
    pub headers: BTreeMap<String, String>,
    /// First delay before restarting a crashed child; doubles per crash.
    pub restart_backoff_initial_ms: u64,
    /// Longest delay between restarts of a child that keeps crashing.
    pub restart_backoff_max_ms: u64,
    /// How long a new child (or HTTP connection) may take to answer the
    /// replayed `initialize` after a restart.
    pub connect_timeout_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            url: None,
            headers: BTreeMap::new(),
            restart_backoff_initial_ms: 250,
            restart_backoff_max_ms: 30_000,
            connect_timeout_secs: 10,
        }
    }
}

/// `[plugins]`: the plugin stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugin names, outermost first. Known: `usage_recorder`, `auth`,
    /// `call_log`. Unset: `["usage_recorder", "auth", "call_log"]` when a
    /// `[database]` is configured, `["call_log"]` otherwise.
    pub order: Option<Vec<String>>,
}

impl PluginsConfig {
    /// The plugin names in force, outermost first.
    /// Without `order`: `call_log` alone for a passthrough; with a
    /// database, `usage_recorder`, `auth`, then `rate_limit` when there are
    /// `[rate_limits]`, `billing` when there are plans, then `call_log`.
    pub fn effective_order(
        &self,
        has_database: bool,
        has_rate_limits: bool,
        has_plans: bool,
    ) -> Vec<String> {
        match &self.order {
            Some(order) => order.clone(),
            None if has_database => {
                let mut order = vec!["usage_recorder".to_owned(), "auth".to_owned()];
                if has_rate_limits {
                    order.push("rate_limit".to_owned());
                }
                if has_plans {
                    order.push("billing".to_owned());
                }
                order.push("call_log".to_owned());
                order
            }
            None => vec!["call_log".into()],
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` or `json` (the `--log-format` flag wins).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `mcp_meter=debug,info`
    /// (`RUST_LOG` wins).
    pub level: String,
    /// One `info` event per HTTP request (target `mcp_meter::access`) on
    /// every listener. Default `true`.
    pub access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

impl Config {
    /// Reads, expands, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::parse_file(path)?;
        let problems = validate(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source_name: path.display().to_string(),
                problems,
            })
        }
    }

    /// Reads, expands and parses a configuration file without the semantic
    /// checks, for callers that change it first (`wrap` sets the upstream)
    /// and then call [`validate`].
    pub fn parse_file(path: &Path) -> Result<Self, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse_str(&text, &source_name, &|name| std::env::var(name).ok())
    }

    /// Parses and validates configuration text, with `lookup` as the
    /// environment.
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse_str(text, source_name, lookup)?;
        let problems = validate(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source_name: source_name.to_owned(),
                problems,
            })
        }
    }

    /// Expands and parses configuration text, without [`validate`].
    pub fn parse_str(
        text: &str,
        source_name: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            fail(vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {}", e.message().trim()),
            }])
        })?;
        env::expand_table(&mut table, lookup).map_err(fail)?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            fail(vec![Problem {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().message().trim().to_owned(),
            }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml", &|name| match name {
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        })
    }

    #[test]
    fn minimal_stdio_config() {
        let c = load("[upstream]\ncommand = \"sh\"\nargs = [\"-c\", \"cat\"]\n").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(c.plugin_order(), vec!["call_log"]);
    }

    #[test]
    fn env_is_expanded_in_nested_strings() {
        let c = load(
            "[upstream]\nurl = \"http://127.0.0.1:9/mcp\"\n[upstream.headers]\nAuthorization = \"Bearer ${TOKEN}\"\n",
        )
        .unwrap();
        assert_eq!(c.upstream.headers["Authorization"], "Bearer s3cret");
    }

    #[test]
    fn unset_env_names_the_variable_and_key() {
        let e = load("[upstream]\ncommand = \"${NOPE}\"\nargs=[\"${ALSO_NOPE}\"]\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("upstream.command: environment variable NOPE is not set"),
            "{text}"
        );
        assert!(
            text.contains("upstream.args[0]: environment variable ALSO_NOPE is not set"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let e = load("[upstream]\ncommand = \"sh\"\ncomand = \"x\"\n").unwrap_err();
        assert_eq!(e.problems[0].path, "upstream.comand");
        assert!(
            e.problems[0].message.contains("unknown field `comand`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e =
            load("[server]\nmax_sessions = \"many\"\n[upstream]\ncommand = \"sh\"\n").unwrap_err();
        assert_eq!(e.problems[0].path, "server.max_sessions");
    }

    #[test]
    fn every_semantic_problem_is_listed() {
        let e = load(
            "[server]\nlisten = \"nowhere\"\nmax_message_bytes = 0\nmcp_path = \"mcp\"\n[upstream]\n[plugins]\norder = [\"call_log\", \"nope\", \"call_log\"]\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "server.listen",
                "server.mcp_path",
                "server.max_message_bytes",
                "upstream",
                "plugins.order[1]",
                "plugins.order[2]"
            ],
            "{e}"
        );
    }

    #[test]
    fn invalid_toml_is_reported() {
        let e = load("[upstream\n").unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }
}
