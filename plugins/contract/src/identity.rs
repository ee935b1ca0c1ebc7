//! Who is calling: customers, their API keys, and the authenticated caller a
//! request carries once the auth plugin has checked its credentials.
//!
//! These are plain values. Nothing here reads a database or checks a
//! credential; the store fills them and the auth plugin decides.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A point in time as milliseconds since the Unix epoch (UTC). Stored as a
/// 64-bit integer in every backend, so all three agree to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = i64, format = Int64))]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The current time from the system clock.
    pub fn now() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self(millis)
    }
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = $pattern))]
        pub struct $name(Arc<str>);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Wraps an id read from storage or input. It is not checked here;
            /// use [`Self::parse`] for input from a user.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// Accepts `text` only if it has this kind's prefix and a
            /// non-empty alphanumeric body.
            pub fn parse(text: &str) -> Option<Self> {
                let body = text.strip_prefix($prefix)?;
                (!body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .then(|| Self(text.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A customer's opaque id, `cus_…`.
    CustomerId,
    "cus_",
    "^cus_[A-Za-z0-9]+$"
);
prefixed_id!(
    /// An API key's id (not the secret), `key_…`.
    KeyId,
    "key_",
    "^key_[A-Za-z0-9]+$"
);
prefixed_id!(
    /// One proxied call's id in the usage records, `call_…`.
    CallId,
    "call_",
    "^call_"
);

impl CallId {
    /// Random characters after the prefix (about 143 bits).
    const RANDOM_CHARS: usize = 24;

    /// A fresh call id: `call_` and 24 random base62 characters, unique
    /// across processes and instances.
    pub fn generate() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        let body = Alphanumeric.sample_string(&mut rand::rng(), Self::RANDOM_CHARS);
        Self(format!("{}{body}", Self::PREFIX).into())
    }
}

/// Whether a customer may make calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CustomerStatus {
    /// Calls are allowed (subject to the plan).
    Active,
    /// Every call is refused until the customer is resumed.
    Suspended,
}

impl CustomerStatus {
    /// The name stored in the database and shown to operators.
    pub fn as_str(&self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
            CustomerStatus::Suspended => "suspended",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(CustomerStatus::Active),
            "suspended" => Some(CustomerStatus::Suspended),
            _ => None,
        }
    }
}

/// A customer of the operator's MCP service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Customer {
    /// Opaque id, `cus_…`.
    pub id: CustomerId,
    /// Display name.
    pub name: String,
    /// Contact email, if known.
    pub email: Option<String>,
    /// The plan the customer is on (a `[[plans]]` id), if any.
    pub plan_id: Option<String>,
    /// Active or suspended.
    pub status: CustomerStatus,
    /// The customer's id at Stripe, once one exists.
    pub stripe_customer_id: Option<String>,
    /// The identity-provider subject a JWT names this customer by, if any.
    pub external_subject: Option<String>,
    /// Free-form operator metadata (a JSON object).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When the customer was created.
    pub created_at: UnixMillis,
    /// When the customer was last changed.
    pub updated_at: UnixMillis,
}

/// What an API key may be used for. Empty lists mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyScope {
    /// Tools the key may call (`tools/call` names, exact or `prefix*` globs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// JSON-RPC methods the key may use (exact or `prefix*` globs, e.g.
    /// `tools/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

impl KeyScope {
    /// Whether the scope has no restriction at all.
    pub fn is_unrestricted(&self) -> bool {
        self.tools.is_empty() && self.methods.is_empty()
    }

    /// Whether a request for `method` (and, for `tools/call`, `tool`) is
    /// inside this scope.
    pub fn allows(&self, method: &str, tool: Option<&str>) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|p| glob(p, method));
        let tool_ok = match (method, tool) {
            ("tools/call", Some(tool)) => {
                self.tools.is_empty() || self.tools.iter().any(|p| glob(p, tool))
            }
            ("tools/call", None) => self.tools.is_empty(),
            _ => true,
        };
        method_ok && tool_ok
    }
}

/// `pattern` matches `name` exactly, or as a prefix when it ends in `*`
/// (the tool and method patterns of key scopes and plans).
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// An API key as stored: everything but the secret, which is kept only as
/// its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyRecord {
    /// The key's id, `key_…`.
    pub id: KeyId,
    /// The customer the key belongs to.
    pub customer_id: CustomerId,
    /// The first characters of the key, for listings (`mcp_AbCd1234`).
    pub prefix: String,
    /// An optional label.
    pub name: Option<String>,
    /// What the key may be used for.
    pub scope: KeyScope,
    /// After this instant the key is refused.
    pub expires_at: Option<UnixMillis>,
    /// Set when the key was revoked; a revoked key is refused.
    pub revoked_at: Option<UnixMillis>,
    /// The last time a call was made with the key (kept up to date in
    /// batches, so it may lag by a few seconds).
    pub last_used_at: Option<UnixMillis>,
    /// When the key was created.
    pub created_at: UnixMillis,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now`: not revoked, not expired.
    pub fn is_usable_at(&self, now: UnixMillis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// An `mcp_…` API key, by id.
    ApiKey(KeyId),
    /// A JWT, by its subject.
    Jwt {
        /// The subject (or configured claim) the token named.
        subject: String,
    },
}

/// The authenticated caller of one request. The auth plugin puts an
/// `Arc<Caller>` into the request's extensions (for later layers) and into
/// the response's extensions (for outer layers such as the usage recorder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The customer, as read when the credential was checked.
    pub customer: Customer,
    /// The credential used.
    pub credential: CredentialKind,
}

impl Caller {
    /// The key id, when the caller used an API key.
    pub fn key_id(&self) -> Option<&KeyId> {
        match &self.credential {
            CredentialKind::ApiKey(id) => Some(id),
            CredentialKind::Jwt { .. } => None,
        }
    }
}

/// A place an outer layer (the usage recorder) leaves in the request's
/// extensions for the auth plugin to fill with the caller, so that the outer
/// layer learns who called even when the call ends in a fault (an `Err`,
/// which carries no response extensions).
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<std::sync::OnceLock<Arc<Caller>>>);

impl CallerSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the caller (the first one wins).
    pub fn fill(&self, caller: Arc<Caller>) {
        let _ = self.0.set(caller);
    }

    /// The caller, once filled.
    pub fn get(&self) -> Option<Arc<Caller>> {
        self.0.get().cloned()
    }
}

/// Marks a response as a refusal by a plugin (not an upstream error), with a
/// short machine-readable reason (`unauthenticated`, `key_revoked`,
/// `out_of_scope`, `customer_suspended`, `store_unavailable`, …). The usage
/// recorder records it as the call's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason, snake_case.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_need_their_prefix_and_an_alphanumeric_body() {
        assert!(CustomerId::parse("cus_abc123").is_some());
        assert!(CustomerId::parse("cus_").is_none());
        assert!(CustomerId::parse("key_abc").is_none());
        assert!(CustomerId::parse("cus_a b").is_none());
        assert_eq!(KeyId::parse("key_Z9").unwrap().as_str(), "key_Z9");
    }

    #[test]
    fn scope_limits_methods_and_tools() {
        let open = KeyScope::default();
        assert!(open.allows("tools/call", Some("anything")));
        let tools = KeyScope {
            tools: vec!["search_*".into(), "echo".into()],
            methods: vec![],
        };
        assert!(tools.allows("tools/call", Some("search_web")));
        assert!(tools.allows("tools/call", Some("echo")));
        assert!(!tools.allows("tools/call", Some("echo2")));
        assert!(!tools.allows("tools/call", None));
        assert!(tools.allows("tools/list", None));
        let methods = KeyScope {
            tools: vec![],
            methods: vec!["tools/*".into()],
        };
        assert!(methods.allows("tools/list", None));
        assert!(!methods.allows("resources/read", None));
    }

    #[test]
    fn usable_means_not_revoked_and_not_expired() {
        let mut key = ApiKeyRecord {
            id: KeyId::new("key_a"),
            customer_id: CustomerId::new("cus_a"),
            prefix: "mcp_abcd".into(),
            name: None,
            scope: KeyScope::default(),
            expires_at: Some(UnixMillis(1_000)),
            revoked_at: None,
            last_used_at: None,
            created_at: UnixMillis(0),
        };
        assert!(key.is_usable_at(UnixMillis(999)));
        assert!(!key.is_usable_at(UnixMillis(1_000)));
        key.expires_at = None;
        assert!(key.is_usable_at(UnixMillis(i64::MAX)));
        key.revoked_at = Some(UnixMillis(5));
        assert!(!key.is_usable_at(UnixMillis(0)));
    }
}
