//! `Origin` validation against DNS rebinding, as the Streamable HTTP
//! transport requires.
//!
//! Requests without an `Origin` header (every non-browser client) pass. A
//! browser request passes only when its origin is on the allow-list, or, with
//! no list configured, when it is a loopback origin (`localhost`,
//! `127.0.0.1`, `[::1]`, any port). `"*"` in the list allows every origin.

use http::HeaderValue;

/// The configured policy.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// Builds the policy from `server.allowed_origins`.
    pub fn new(allowed: &[String]) -> Self {
        Self {
            any: allowed.iter().any(|o| o == "*"),
            allowed: allowed.iter().map(|o| normalize(o)).collect(),
        }
    }

    /// Whether a request with this `Origin` header may proceed.
    pub fn allows(&self, origin: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = normalize(origin);
        if self.allowed.is_empty() {
            is_loopback_origin(&origin)
        } else {
            self.allowed.contains(&origin)
        }
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn is_loopback_origin(origin: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(origin) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https")
        && matches!(
            url.host_str(),
            Some("localhost") | Some("127.0.0.1") | Some("[::1]")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(policy: &OriginPolicy, origin: &'static str) -> bool {
        policy.allows(Some(&HeaderValue::from_static(origin)))
    }

    #[test]
    fn default_allows_only_loopback_origins() {
        let p = OriginPolicy::new(&[]);
        assert!(p.allows(None));
        assert!(allows(&p, "http://localhost:6274"));
        assert!(allows(&p, "http://127.0.0.1"));
        assert!(allows(&p, "http://[::1]:3000"));
        assert!(!allows(&p, "http://evil.example"));
        assert!(!allows(&p, "http://localhost.evil.example"));
        assert!(!allows(&p, "null"));
    }

    #[test]
    fn allow_list_is_exact() {
        let p = OriginPolicy::new(&["https://app.example.com/".into()]);
        assert!(allows(&p, "https://APP.example.com"));
        assert!(!allows(&p, "http://localhost:1"));
        assert!(!allows(&p, "https://app.example.com.evil"));
        assert!(allows(&OriginPolicy::new(&["*".into()]), "http://anything"));
    }
}
