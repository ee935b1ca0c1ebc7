//! How to reach the database: the URL and the pool's limits, which backend a
//! URL names, and the URL as it may be shown (password hidden).

use std::time::Duration;

use super::Backend;

/// Where the store lives and how many connections it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// `sqlite://FILE` (`sqlite:FILE`, `sqlite::memory:`), `postgres://…`
    /// or `mysql://…` (`mariadb://…`).
    pub url: String,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection (and `open` for the first
    /// one) before giving up.
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    /// Options for `url` with the default pool limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for StoreOptions {
    /// `sqlite://mcp-meter.db`, 10 connections, 3 s to acquire one.
    fn default() -> Self {
        Self {
            url: "sqlite://mcp-meter.db".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The backend a URL names by its scheme, if it is one we speak.
pub(super) fn backend_of(url: &str) -> Option<Backend> {
    let scheme = url.split_once(':')?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Some(Backend::Sqlite),
        "postgres" | "postgresql" => Some(Backend::Postgres),
        "mysql" | "mariadb" => Some(Backend::MySql),
        _ => None,
    }
}

/// `url` with any password replaced by `***`: the one in the user info
/// (`user:secret@host`) and a `password=` query parameter. Safe to log and to
/// put in error messages.
pub fn redact_url(url: &str) -> String {
    // The last `@` ends the user info even when an unencoded password holds
    // `@`, `/` or `?`; a URL without one has no user info.
    let (mut out, rest) = match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &url[scheme.len() + 3..at];
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => userinfo.to_owned(),
            };
            (format!("{scheme}://{user}"), &url[at..])
        }
        _ => (String::new(), url),
    };
    match rest.split_once('?') {
        Some((head, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(head);
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_name_backends() {
        assert_eq!(backend_of("sqlite://a.db"), Some(Backend::Sqlite));
        assert_eq!(backend_of("sqlite:a.db"), Some(Backend::Sqlite));
        assert_eq!(backend_of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(backend_of("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(backend_of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(backend_of("MySQL://h/db"), Some(Backend::MySql));
        assert_eq!(backend_of("mariadb://h/db"), Some(Backend::MySql));
        assert_eq!(backend_of("redis://h"), None);
        assert_eq!(backend_of("mcp-meter.db"), None);
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cr:et@db.example:5432/meter?sslmode=require"),
            "postgres://app:***@db.example:5432/meter?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=app&password=hunter2"),
            "postgres://h/db?user=app&password=***"
        );
        assert_eq!(
            redact_url("mysql://app:p@ss/w?rd@db:3306/meter"),
            "mysql://app:***@db:3306/meter"
        );
        assert_eq!(redact_url("sqlite://data/mcp.db"), "sqlite://data/mcp.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }
}
