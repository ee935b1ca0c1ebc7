//! The SQL store: customers, API keys, usage, the ledger (balances,
//! reservations, charges, quota counters and the quota each call took,
//! metered usage, periodic grants), subscriptions and the meter outbox in
//! SQLite, PostgreSQL or MySQL/MariaDB, behind the contract's ports
//! ([`CustomerDirectory`], [`UsageSink`], [`Ledger`], [`Subscriptions`],
//! [`MeterOutbox`]) and the admin methods of [`Store`].
//!
//! [`open`] parses the `[database] url`, connects once (so a wrong URL, an
//! unreachable server or bad credentials fail right away with an
//! [`OpenError`] that says what to fix), applies the embedded migrations,
//! refuses a database migrated by a newer mcp-meter, and hands back a pool
//! that reconnects by itself. While serving, every fault is a
//! [`StoreError`]; nothing here retries on behalf of a caller except
//! `record_usage` and the ledger's writes, which re-run a transaction that
//! lost a race.
//!
//! The logic is written once over a sqlx [`Database`](sqlx::Database)
//! (`driver`, `statement`, then `customers`, `keys`, `usage`, `ledger`,
//! `subscriptions`, `outbox`, `analytics`);
//! `sqlite`, `postgres` and `mysql` hold only what differs per backend.
//! `copy` moves a whole store into another database, any backend to any
//! other (`mcp-meter db copy`).
//! This module must never hold a secret in clear: keys arrive as their
//! SHA-256 hash.

mod analytics;
mod copy;
mod customers;
mod driver;
mod error;
mod group_commit;
mod ids;
mod invoices;
mod keys;
mod ledger;
mod mysql;
mod open;
mod options;
mod outbox;
mod postgres;
mod queue;
mod rollup;
mod rows;
mod schema;
mod sql;
mod sqlite;
mod statement;
mod subscriptions;
mod usage;
mod webhooks;

use std::fmt;

use async_trait::async_trait;
use mcp_meter_plugin::identity::{
    ApiKeyRecord, CallId, Customer, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis,
};
use mcp_meter_plugin::ledger::{Ledger, LedgerEntry, LedgerFilter};
use mcp_meter_plugin::outbox::{MeterOutbox, OutboxFilter};
use mcp_meter_plugin::ports::{
    CustomerDirectory, NewCustomer, StoreError, UsageOutcome, UsageRecord, UsageSink,
};
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, Subscriptions};
use serde::Serialize;

pub use analytics::{
    Analytics, CREDITS_UNIT, CustomerSpend, GroupAmount, LedgerGroup, OutcomeCount, Span,
    UsageTotals,
};
pub use copy::{
    CopyError, CopyOptions, CopyReport, Progress, ResumePoint, TableProgress, TableReport,
    copy_database,
};
pub use error::OpenError;
pub use invoices::{InvoiceItemRow, NewInvoiceItem, PeriodCharges};
pub use open::{migrate, open};
pub use options::{StoreOptions, redact_url};
pub use schema::{MigrationReport, MigrationVersion};
pub use webhooks::{NewWebhookEvent, WebhookEvent, WebhookFilter, WebhookStatus};

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite: one file (or `:memory:`), the embedded default.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Backend {
    /// The lower-case name shown to operators (`sqlite`, `postgres`,
    /// `mysql`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key to store. The secret itself never reaches the store: only its
/// SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The customer the key belongs to (must exist).
    pub customer_id: CustomerId,
    /// SHA-256 of the whole key text.
    pub key_hash: [u8; 32],
    /// The first characters of the key, for listings.
    pub prefix: String,
    /// An optional label.
    pub name: Option<String>,
    /// What the key may be used for.
    pub scope: KeyScope,
    /// After this instant the key is refused.
    pub expires_at: Option<UnixMillis>,
}

/// What to change of a customer: each `Some` field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerUpdate {
    /// The new plan.
    pub plan_id: Option<String>,
    /// The new display name.
    pub name: Option<String>,
    /// The new email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// The new metadata (replaces the whole object).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Which usage to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Only this customer's usage (all usage when `None`).
    pub customer: Option<CustomerId>,
    /// From this instant on (inclusive). For daily roll-ups: from the UTC day
    /// containing it.
    pub since: Option<UnixMillis>,
    /// Before this instant (exclusive). For daily roll-ups: up to the UTC day
    /// containing the millisecond before it.
    pub until: Option<UnixMillis>,
    /// At most this many rows.
    pub limit: u32,
    /// Only calls of this tool.
    pub tool: Option<String>,
    /// Only calls with this outcome (records only; roll-ups have none).
    pub outcome: Option<UsageOutcome>,
    /// Records after this one in their order (`started_at`, `call_id`):
    /// the keyset of the last record of the previous page.
    pub after: Option<(UnixMillis, CallId)>,
}

/// One row of the daily roll-up: the totals of one UTC day for one customer,
/// method and tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DailyUsage {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The customer (`None` for unauthenticated calls).
    pub customer_id: Option<CustomerId>,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool, for `tools/call`.
    pub tool: Option<String>,
    /// Number of calls.
    pub calls: i64,
    /// Calls whose outcome was neither `ok` nor `recovered`.
    pub errors: i64,
    /// Metered units.
    pub units: i64,
    /// Total duration in microseconds.
    pub duration_us: i64,
    /// Total request bytes.
    pub bytes_in: i64,
    /// Total response bytes.
    pub bytes_out: i64,
}

/// The whole store: the ports the plugins use (customers and keys, usage,
/// the ledger, subscriptions, the meter outbox) plus what the CLI and the
/// management API need. An `Arc<dyn Store>` coerces to the port a plugin
/// takes (`Arc<dyn Ledger>`, `Arc<dyn Subscriptions>`,
/// `Arc<dyn MeterOutbox>`, …) by trait upcasting.
#[async_trait]
pub trait Store:
    CustomerDirectory
    + UsageSink
    + Ledger
    + Subscriptions
    + MeterOutbox
    + WebhookStore
    + InvoiceOutbox
    + Analytics
{
    /// The database engine behind this store.
    fn backend(&self) -> Backend;

    /// Checks that the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Rows per status of the payment queues (meter outbox, invoice
    /// outbox, webhook events), as (queue, status, rows).
    async fn queue_counts(&self) -> Result<Vec<(&'static str, &'static str, i64)>, StoreError>;

    /// Creates a customer with a new `cus_…` id. A duplicate
    /// `external_subject` is a [`StoreError::Conflict`].
    async fn create_customer(&self, new: NewCustomer) -> Result<Customer, StoreError>;

    /// Customers ordered by id, starting after `after`, at most `limit`.
    async fn list_customers(
        &self,
        after: Option<&CustomerId>,
        limit: u32,
    ) -> Result<Vec<Customer>, StoreError>;

    /// Changes a customer's plan, name, email or metadata (the fields
    /// `update` names), bumping `updated_at`; [`StoreError::NotFound`] if
    /// there is no such customer.
    async fn update_customer(
        &self,
        id: &CustomerId,
        update: &CustomerUpdate,
    ) -> Result<Customer, StoreError>;

    /// Activates or suspends a customer, bumping `updated_at`;
    /// [`StoreError::NotFound`] if there is no such customer.
    async fn set_customer_status(
        &self,
        id: &CustomerId,
        status: CustomerStatus,
    ) -> Result<Customer, StoreError>;

    /// Stores a key with a new `key_…` id; [`StoreError::NotFound`] if the
    /// customer does not exist, [`StoreError::Conflict`] if the hash is
    /// already stored.
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyRecord, StoreError>;

    /// Keys (of one customer, or all), ordered by creation time then id.
    async fn list_api_keys(
        &self,
        customer: Option<&CustomerId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes a key at `at`. Idempotent: revoking again keeps the first
    /// `revoked_at`. [`StoreError::NotFound`] if there is no such key.
    async fn revoke_api_key(&self, id: &KeyId, at: UnixMillis) -> Result<ApiKeyRecord, StoreError>;

    /// Raw usage records, ordered by `started_at` then `call_id`.
    async fn usage_records(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError>;

    /// Daily roll-ups, ordered by day, customer, method and tool.
    async fn usage_daily(&self, filter: &UsageFilter) -> Result<Vec<DailyUsage>, StoreError>;

    /// Ledger entries matching `filter` and created in `[since, until)`
    /// (either bound optional), by id ascending: [`Ledger::entries`] with a
    /// time range, for exports.
    async fn ledger_entries_between(
        &self,
        filter: &LedgerFilter,
        since: Option<UnixMillis>,
        until: Option<UnixMillis>,
    ) -> Result<Vec<LedgerEntry>, StoreError>;
}

/// Per-call plans' charges invoiced through the payment provider: the
/// charges of a closed period, and the invoice items queued for them.
#[async_trait]
pub trait InvoiceOutbox: Send + Sync + 'static {
    /// Each customer's `charge` entries on `plan_id` created in
    /// `[start, end)`, summed per customer and currency.
    async fn period_charges(
        &self,
        plan_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> Result<Vec<PeriodCharges>, StoreError>;

    /// Queues an invoice item unless one for its customer, plan and period
    /// is queued already; `true` when queued now.
    async fn queue_invoice_item(&self, new: &NewInvoiceItem) -> Result<bool, StoreError>;

    /// Pending items due at `now`, oldest first, at most `limit`.
    async fn due_invoice_items(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<InvoiceItemRow>, StoreError>;

    /// Marks an item sent at `at`, with the provider's id for it.
    async fn mark_invoice_item_sent(
        &self,
        id: i64,
        external_id: Option<&str>,
        at: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Records a failed attempt: due again at `retry_at`, or parked.
    async fn mark_invoice_item_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError>;

    /// Puts a parked item back in the queue, due at `now`; `false` when no
    /// parked item has this id.
    async fn retry_invoice_item(&self, id: i64, now: UnixMillis) -> Result<bool, StoreError>;

    /// Items matching `filter`, by id.
    async fn invoice_items(&self, filter: &OutboxFilter)
    -> Result<Vec<InvoiceItemRow>, StoreError>;
}

/// What the payment provider's webhooks need from the store: the events,
/// each stored once by its id and processed from here, and the customers
/// they name by the provider's customer id.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores an event unless one with its id is already stored; `true`
    /// when stored now. A redelivery, or a concurrent delivery of the same
    /// event, is `false`, never an error.
    async fn insert_webhook_event(&self, new: &NewWebhookEvent) -> Result<bool, StoreError>;

    /// The stored event with this id.
    async fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>, StoreError>;

    /// Pending events due at `now` (`next_attempt_at <= now`), oldest first
    /// by the provider's event time, at most `limit`.
    async fn due_webhook_events(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError>;

    /// Marks a pending event processed at `at` (a processed or failed event
    /// stays as it is).
    async fn mark_webhook_event_processed(
        &self,
        id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Records a failed attempt of a pending event: `attempts` goes up, the
    /// error is kept, and the event is due again at `retry_at`, or `failed`
    /// for good when `None`.
    async fn mark_webhook_event_failed(
        &self,
        id: &str,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError>;

    /// Puts a `failed` event back in the queue, due at `now` (its failed
    /// attempts are kept); `false` when no failed event has this id.
    async fn retry_webhook_event(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError>;

    /// Stored events matching `filter`, by id ascending.
    async fn webhook_events(&self, filter: &WebhookFilter)
    -> Result<Vec<WebhookEvent>, StoreError>;

    /// The customer with this Stripe customer id (`cus_…` at Stripe);
    /// [`StoreError::Conflict`] if several customers have it.
    async fn find_customer_by_stripe_id(
        &self,
        stripe_id: &str,
    ) -> Result<Option<Customer>, StoreError>;

    /// Records the customer's Stripe customer id unless they already have
    /// one; `true` when recorded now. [`StoreError::NotFound`] if there is
    /// no such customer.
    async fn attach_stripe_customer(
        &self,
        id: &CustomerId,
        stripe_id: &str,
        at: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Applies a provider's change that ends a subscription (as
    /// [`Subscriptions::set_subscription`], older events ignored) and moves
    /// the customer to `plan_after` instead of the subscription's plan, in
    /// one transaction.
    async fn end_subscription(
        &self,
        change: &SubscriptionChange,
        plan_after: &str,
    ) -> Result<Subscription, StoreError>;
}
