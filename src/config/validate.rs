//! Checks a parsed [`Config`] for everything its types cannot express.
//! Every problem is collected; none stops the others from being found.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Config, Problem};

/// The plugin names this build knows.
pub(super) const KNOWN_PLUGINS: &[&str] = &[
    "usage_recorder",
    "auth",
    "rate_limit",
    "billing",
    "call_log",
];

/// The plugins that need a `[database]`.
const DATABASE_PLUGINS: &[&str] = &["usage_recorder", "auth", "rate_limit", "billing"];

/// Returns every problem in `config`, in key order.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(Problem {
            path: path.to_owned(),
            message,
        })
    };
    let server = &config.server;
    if server.listen.parse::<SocketAddr>().is_err() {
        problem(
            "server.listen",
            format!("{:?} is not an address like 127.0.0.1:8080", server.listen),
        );
    }
    if !server.mcp_path.starts_with('/') {
        problem(
            "server.mcp_path",
            format!("{:?} must start with '/'", server.mcp_path),
        );
    } else if server.mcp_path == crate::stripe::webhook::PATH {
        problem(
            "server.mcp_path",
            format!(
                "{:?} is the Stripe webhook endpoint; choose another path",
                server.mcp_path
            ),
        );
    }
    for (i, origin) in server.allowed_origins.iter().enumerate() {
        if origin != "*" && reqwest::Url::parse(origin).is_err() {
            problem(
                &format!("server.allowed_origins[{i}]"),
                format!("{origin:?} is not an origin like https://app.example.com, or \"*\""),
            );
        }
    }
    for (key, value) in [
        ("server.max_message_bytes", server.max_message_bytes as u64),
        ("server.max_sessions", server.max_sessions as u64),
        (
            "server.session_idle_timeout_secs",
            server.session_idle_timeout_secs,
        ),
        ("server.request_timeout_secs", server.request_timeout_secs),
    ] {
        if value == 0 {
            problem(key, "must be greater than 0".into());
        }
    }
    let upstream = &config.upstream;
    match (&upstream.command, &upstream.url) {
        (None, None) => problem(
            "upstream",
            "set either `command` (a stdio MCP server) or `url` (a Streamable HTTP MCP server)"
                .into(),
        ),
        (Some(_), Some(_)) => problem(
            "upstream",
            "set only one of `command` and `url`, not both".into(),
        ),
        (Some(command), None) => {
            if command.trim().is_empty() {
                problem("upstream.command", "must not be empty".into());
            }
            if !upstream.headers.is_empty() {
                problem(
                    "upstream.headers",
                    "headers apply to a `url` upstream only".into(),
                );
            }
        }
        (None, Some(url)) => {
            match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => problem(
                    "upstream.url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ),
            }
            if !upstream.args.is_empty() || !upstream.env.is_empty() || upstream.cwd.is_some() {
                problem(
                    "upstream",
                    "`args`, `env` and `cwd` apply to a `command` upstream only".into(),
                );
            }
        }
    }
    for (name, value) in &upstream.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problem(
                &format!("upstream.headers.{name}"),
                "is not a valid HTTP header name".into(),
            );
        } else if http::HeaderValue::from_str(value).is_err() {
            problem(
                &format!("upstream.headers.{name}"),
                "the value has characters not allowed in an HTTP header".into(),
            );
        }
    }
    if upstream.restart_backoff_initial_ms > upstream.restart_backoff_max_ms {
        problem(
            "upstream.restart_backoff_initial_ms",
            "must not exceed restart_backoff_max_ms".into(),
        );
    }
    if let Some(database) = &config.database {
        let scheme = database.url.split(':').next().unwrap_or_default();
        if !matches!(
            scheme,
            "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb"
        ) {
            problem(
                "database.url",
                "must start with sqlite:, postgres:// or mysql:// (e.g. sqlite://mcp-meter.db)"
                    .into(),
            );
        }
        if database.max_connections == 0 {
            problem("database.max_connections", "must be greater than 0".into());
        }
        if database.acquire_timeout_secs == 0 {
            problem(
                "database.acquire_timeout_secs",
                "must be greater than 0".into(),
            );
        }
    }
    for (path, message) in config.auth.problems() {
        problem(&path, message);
    }
    billing_problems(config, &mut problem);
    if let Some(stripe) = &config.stripe {
        let plans: Vec<(&str, &str)> = config
            .plans
            .iter()
            .map(|plan| (plan.id.as_str(), plan.model.as_str()))
            .collect();
        for (path, message) in
            crate::stripe::config::problems(stripe, &plans, config.database.is_some())
        {
            problem(&path, message);
        }
    }
    if let Some(api) = &config.api {
        for (path, message) in
            crate::api::config::problems(api, config.database.is_some(), config.auth.jwt.is_some())
        {
            problem(&path, message);
        }
    }
    if let Some(limits) = &config.rate_limits {
        for found in limits.validate() {
            let found = found.under("rate_limits");
            problem(&found.path, found.message);
        }
    }
    let order = config.plugin_order();
    let mut seen = Vec::new();
    for (i, name) in order.iter().enumerate() {
        let path = format!("plugins.order[{i}]");
        if !KNOWN_PLUGINS.contains(&name.as_str()) {
            problem(
                &path,
                format!(
                    "unknown plugin {name:?}; known: {}",
                    KNOWN_PLUGINS.join(", ")
                ),
            );
        } else if seen.contains(&name) {
            problem(&path, format!("plugin {name:?} is listed twice"));
        } else if DATABASE_PLUGINS.contains(&name.as_str()) && config.database.is_none() {
            problem(
                &path,
                format!(
                    "plugin {name:?} needs a [database] section (e.g. url = \"sqlite://mcp-meter.db\")"
                ),
            );
        }
        seen.push(name);
    }
    problems
}

/// Checks `[billing]` and `[[plans]]`: every plan problem (with its key
/// path), that billing has a database, and that the billing layer sits
/// inside auth (it charges the caller auth identified).
fn billing_problems(config: &Config, problem: &mut impl FnMut(&str, String)) {
    if let Err(plan_problems) = mcp_meter_billing::Catalog::compile(&config.billing, &config.plans)
    {
        for text in plan_problems {
            let (path, message) = text.split_once(": ").unwrap_or(("plans", &text));
            problem(path, message.to_owned());
        }
    }
    if config.plans.is_empty() {
        if config.billing.status_tool.is_some() {
            problem(
                "billing.status_tool",
                "the billing plugin answers this tool, and it runs only with [[plans]]; \
                 add a plan or remove the key"
                    .into(),
            );
        }
        return;
    }
    if config.database.is_none() {
        problem(
            "plans",
            "billing needs a [database] for customers and the ledger (e.g. url = \"sqlite://mcp-meter.db\")"
                .into(),
        );
    }
    let abandon_after = config.billing.abandon_reservations_after_secs();
    let request_timeout = config.server.request_timeout_secs;
    if abandon_after <= request_timeout {
        let set = if config.billing.abandon_reservations_after_secs.is_some() {
            ""
        } else {
            " (the default)"
        };
        problem(
            "billing.abandon_reservations_after_secs",
            format!(
                "{abandon_after}{set} must be greater than [server] request_timeout_secs \
                 ({request_timeout}): a reservation younger than the longest call may still be \
                 in flight, and would be refunded as abandoned"
            ),
        );
    }
    let order = config.plugin_order();
    let position = |name: &str| order.iter().position(|n| n == name);
    match (position("auth"), position("billing")) {
        (_, None) => problem(
            "plugins.order",
            "there are [[plans]] but no \"billing\" plugin, so no call would be charged; add it after \"auth\""
                .into(),
        ),
        (None, Some(_)) => problem(
            "plugins.order",
            "\"billing\" needs \"auth\" before it: it charges the customer auth identifies".into(),
        ),
        (Some(auth), Some(billing)) if billing < auth => problem(
            "plugins.order",
            "\"billing\" must come after \"auth\": it charges the customer auth identifies".into(),
        ),
        _ => {}
    }
}

/// Finds the program an upstream `command` names: a path as given, or the
/// first executable match on `PATH`. `cwd` is where a relative path is
/// resolved.
pub fn resolve_command(command: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let path = match cwd {
            Some(dir) if Path::new(command).is_relative() => dir.join(command),
            _ => PathBuf::from(command),
        };
        return is_executable(&path).then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(command))
            .find(|p| is_executable(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_on_path() {
        assert!(resolve_command("sh", None).is_some());
        assert!(resolve_command("/bin/sh", None).is_some());
        assert!(resolve_command("surely-not-a-command-xyz", None).is_none());
        assert!(resolve_command("./nope", Some(Path::new("/"))).is_none());
    }

    /// The problems of a billing configuration with `server` and
    /// `billing` keys, at `billing.abandon_reservations_after_secs`.
    fn abandon_problems(server: &str, billing: &str) -> Vec<String> {
        let text = format!(
            "[server]\n{server}\n[upstream]\ncommand = \"sh\"\n\
             [database]\nurl = \"sqlite://x.db\"\n[billing]\n{billing}\n\
             [[plans]]\nid = \"p\"\nmodel = \"credits\"\n[plans.prices]\ndefault = 1\n"
        );
        let config = Config::parse_str(&text, "test", &|_| None).expect("parses");
        validate(&config)
            .into_iter()
            .filter(|p| p.path == "billing.abandon_reservations_after_secs")
            .map(|p| p.message)
            .collect()
    }

    #[test]
    fn reservations_are_abandoned_only_after_the_longest_call() {
        assert!(abandon_problems("", "").is_empty(), "900 > 300 by default");
        assert!(
            abandon_problems(
                "request_timeout_secs = 2",
                "abandon_reservations_after_secs = 3"
            )
            .is_empty()
        );
        let equal = abandon_problems("", "abandon_reservations_after_secs = 300");
        assert_eq!(equal.len(), 1, "{equal:?}");
        assert!(equal[0].contains("request_timeout_secs (300)"), "{equal:?}");
        let by_default = abandon_problems("request_timeout_secs = 1200", "");
        assert_eq!(by_default.len(), 1, "{by_default:?}");
        assert!(
            by_default[0].starts_with("900 (the default)"),
            "{by_default:?}"
        );
    }
}
