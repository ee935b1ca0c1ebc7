//! The ports plugins talk to: what they need from storage, as traits. The
//! store (`src/store/`) implements them for SQLite, PostgreSQL and MySQL;
//! plugin unit tests use in-memory implementations.
//!
//! Every method is one short database operation. None of them may be called
//! while holding a lock, and none of them retries: a fault comes back as a
//! [`StoreError`] so the plugin can refuse the call with a clear message.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::identity::{ApiKeyRecord, CallId, Customer, CustomerId, KeyId, UnixMillis};

/// A storage fault, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, refused, pool timed out). Calls
    /// that need it are refused until it is back.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The write conflicts with existing data (a duplicate id or subject).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The named row does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Other(String),
}

/// An API key found by the hash of its secret, with its customer, both read
/// in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key (without its secret).
    pub key: ApiKeyRecord,
    /// The customer it belongs to.
    pub customer: Customer,
}

/// A customer to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewCustomer {
    /// Display name.
    pub name: String,
    /// Contact email.
    pub email: Option<String>,
    /// The plan to put the customer on.
    pub plan_id: Option<String>,
    /// The identity-provider subject (JWT `sub`) that names this customer.
    pub external_subject: Option<String>,
    /// Free-form metadata (a JSON object).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// How long an instance may act on a key or a customer it read from the
/// store: the auth plugin keeps valid keys this long, so a customer's calls
/// do not each read the store. A command that revokes a key or suspends a
/// customer must wait this long after its write before it reports
/// success; from then on every instance reads the change.
pub const CREDENTIAL_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Who is who: what the auth plugin reads on a call.
#[async_trait]
pub trait CustomerDirectory: Send + Sync + 'static {
    /// The key whose secret hashes to `hash` (SHA-256 of the whole key
    /// text), with its customer; `None` if no key has that hash. Revoked and
    /// expired keys are returned too: the caller decides.
    async fn find_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyGrant>, StoreError>;

    /// The customer with this id.
    async fn find_customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError>;

    /// The customer a JWT subject names (`external_subject`).
    async fn find_customer_by_subject(&self, subject: &str)
    -> Result<Option<Customer>, StoreError>;

    /// Creates a customer (auto-provisioning from a JWT). A concurrent
    /// creation of the same subject yields the one customer that won.
    async fn provision_customer(&self, new: NewCustomer) -> Result<Customer, StoreError>;

    /// Records that keys were used, latest time per key. Called in batches
    /// (every few seconds), never once per call.
    async fn touch_keys(&self, used: &[(KeyId, UnixMillis)]) -> Result<(), StoreError>;
}

/// How one call ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum UsageOutcome {
    /// A result (not a tool error).
    Ok,
    /// A `tools/call` result with `isError: true`.
    ToolError,
    /// A JSON-RPC error from the upstream, or the upstream failed (exited,
    /// unreachable).
    UpstreamError,
    /// A plugin refused the call (the reason is in the record).
    Refused,
    /// The upstream did not answer in time.
    Timeout,
    /// The client cancelled the call.
    Cancelled,
    /// Written after an unclean stop for a call the ledger charged but
    /// whose record was lost: the call happened, its details (duration,
    /// bytes, how it ended) are unknown.
    Recovered,
}

impl UsageOutcome {
    /// The name stored in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            UsageOutcome::Ok => "ok",
            UsageOutcome::ToolError => "tool_error",
            UsageOutcome::UpstreamError => "upstream_error",
            UsageOutcome::Refused => "refused",
            UsageOutcome::Timeout => "timeout",
            UsageOutcome::Cancelled => "cancelled",
            UsageOutcome::Recovered => "recovered",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ok" => UsageOutcome::Ok,
            "tool_error" => UsageOutcome::ToolError,
            "upstream_error" => UsageOutcome::UpstreamError,
            "refused" => UsageOutcome::Refused,
            "timeout" => UsageOutcome::Timeout,
            "cancelled" => UsageOutcome::Cancelled,
            "recovered" => UsageOutcome::Recovered,
            _ => return None,
        })
    }

    /// Whether the call counts as an error in the roll-ups (anything but
    /// `ok` and `recovered`: a recovered call was charged, so it served).
    pub fn is_error(&self) -> bool {
        !matches!(self, UsageOutcome::Ok | UsageOutcome::Recovered)
    }
}

/// One client→server request that reached the plugin stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRecord {
    /// Unique id of the call.
    pub call_id: CallId,
    /// The customer, when the call was authenticated.
    pub customer_id: Option<CustomerId>,
    /// The API key used, if any.
    pub key_id: Option<KeyId>,
    /// The downstream session (`None` for stateless requests).
    pub session_id: Option<String>,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool, for `tools/call`.
    pub tool: Option<String>,
    /// When the request entered the stack.
    pub started_at: UnixMillis,
    /// How long until its answer, in microseconds.
    pub duration_us: i64,
    /// Size of the request message in bytes.
    pub bytes_in: i64,
    /// Size of the response message in bytes (0 when there was none).
    pub bytes_out: i64,
    /// How it ended.
    pub outcome: UsageOutcome,
    /// Why it was refused (or which fault ended it), snake_case.
    pub reason: Option<String>,
    /// Metered units (1 per call unless a plan meters something else).
    pub units: i64,
}

/// Where usage records go: one transaction per batch, which also updates the
/// daily roll-ups.
#[async_trait]
pub trait UsageSink: Send + Sync + 'static {
    /// Stores a batch of records and adds them to the daily roll-ups, in one
    /// transaction. A record whose `call_id` is already stored is skipped
    /// (so a retried batch is not counted twice).
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError>;
}

/// The time, injected so that tests can move it without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis::now()
    }
}

/// A shared [`CustomerDirectory`].
pub type SharedDirectory = Arc<dyn CustomerDirectory>;
/// A shared [`UsageSink`].
pub type SharedUsageSink = Arc<dyn UsageSink>;
/// A shared [`Clock`].
pub type SharedClock = Arc<dyn Clock>;
