//! The command line (clap). Each subcommand maps to one function in
//! [`crate::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// mcp-meter: a transparent metering and billing proxy for MCP servers.
#[derive(Debug, Parser)]
#[command(name = "mcp-meter", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (overrides `logging.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `mcp_meter=debug` (overrides
    /// `logging.level`; `RUST_LOG` overrides both).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy as configured: Streamable HTTP on `server.listen`.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Wrap a stdio MCP server without writing a configuration first.
    Wrap {
        /// Optional configuration; its `[upstream]` is replaced by COMMAND.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve Streamable HTTP on this address (default: `server.listen`,
        /// 127.0.0.1:8080). `:0` picks a free port.
        #[arg(long, conflicts_with = "stdio")]
        listen: Option<String>,
        /// Speak MCP on this process's stdin/stdout, for clients that launch
        /// the server themselves (Claude Desktop, Cursor, agents).
        #[arg(long)]
        stdio: bool,
        /// The customer's API key for `--stdio` (later plugins check it).
        #[arg(long, env = "MCP_METER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The MCP server to run, and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate a configuration, print every problem, exit 2 if any.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The quickstart: the proxy on 127.0.0.1:8080/mcp in front of a small
    /// built-in demo MCP server.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo keeps its customer, key and usage records.
        #[arg(long, default_value = "sqlite://mcp-meter-demo.db")]
        database_url: String,
    },
    /// Apply the database migrations (also done by `serve` at start).
    Migrate {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Database maintenance: copy a whole store into another database.
    Db {
        /// What to do.
        #[command(subcommand)]
        action: DbAction,
    },
    /// Manage customers.
    Customers {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: CustomersAction,
    },
    /// Manage API keys.
    Keys {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Prepaid credits: grant, adjust, show balances and the ledger.
    Credits {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: CreditsAction,
    },
    /// Subscriptions: set a customer's subscription and its status (when
    /// no payment provider keeps it current), or show it.
    Subscriptions {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: SubscriptionsAction,
    },
    /// The meter outbox: usage events waiting for the payment provider.
    Outbox {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Invoice items of per-call plans' closed periods, queued for Stripe.
    Invoices {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to do.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Stripe: open a Checkout Session or make a payment link for a
    /// customer, or compare local state with Stripe.
    Stripe {
        /// The configuration file (its [stripe] and [database]); required.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        action: StripeAction,
    },
    /// The plans of a configuration, with their effective prices.
    Plans {
        /// The configuration file whose [[plans]] to show.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        action: PlansAction,
    },
    /// Show a customer's usage records (or daily roll-ups).
    Usage {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// The customer (`cus_…`).
        #[arg(long)]
        customer: String,
        /// Only calls at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only calls before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Most rows to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Show the daily roll-ups instead of single calls.
        #[arg(long)]
        daily: bool,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export usage records or ledger entries as CSV or JSON lines, to a
    /// file or stdout, streamed (memory stays flat however many rows).
    Export {
        /// Which database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// What to export.
        #[command(subcommand)]
        action: ExportAction,
    },
    /// The built-in demo MCP server on stdio (what `demo` runs as its
    /// upstream).
    #[command(hide = true)]
    DemoUpstream,
}

/// How an admin command finds the database: a configuration file's
/// `[database]`, or a URL.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// A configuration file whose `[database]` to use.
    #[arg(long, short, global = true, conflicts_with = "database_url")]
    pub config: Option<PathBuf>,
    /// The database URL (`sqlite://mcp-meter.db`, `postgres://…`, `mysql://…`).
    #[arg(
        long,
        global = true,
        env = "MCP_METER_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Copy every row of one database into another (SQLite, PostgreSQL,
    /// MySQL/MariaDB, in any direction), then verify the copy. The target is
    /// migrated first and must be empty, or hold what an interrupted run of
    /// the same copy left (it then continues). Stop the proxy first.
    Copy {
        /// The database to copy from (only read), e.g.
        /// `sqlite://mcp-meter.db`.
        #[arg(long, env = "MCP_METER_COPY_FROM", hide_env_values = true)]
        from: String,
        /// The database to copy into, e.g. `postgres://user:pass@host/meter`.
        #[arg(long, env = "MCP_METER_COPY_TO", hide_env_values = true)]
        to: String,
        /// Rows per batch; each batch is one transaction on the target.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
    },
}

/// `customers` subcommands.
#[derive(Debug, Subcommand)]
pub enum CustomersAction {
    /// Create a customer.
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Contact email.
        #[arg(long)]
        email: Option<String>,
        /// Plan id.
        #[arg(long)]
        plan: Option<String>,
        /// The JWT subject that names this customer.
        #[arg(long)]
        subject: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List customers.
    List {
        /// Start after this customer id (pagination).
        #[arg(long)]
        after: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one customer and its keys.
    Show {
        /// The customer id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse every call of a customer from the next call on.
    Suspend {
        /// The customer id.
        id: String,
    },
    /// Allow a suspended customer's calls again.
    Resume {
        /// The customer id.
        id: String,
    },
}

/// `credits` subcommands. Writes take an idempotency key: running the same
/// command again with the same key changes nothing.
#[derive(Debug, Subcommand)]
pub enum CreditsAction {
    /// Add credits to a customer's balance.
    Grant {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Whole credits to add (at least 1).
        #[arg(long)]
        amount: i64,
        /// Makes the grant apply once (default: a new random key).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// A note kept in the ledger.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Correct a balance up or down (never below zero).
    Adjust {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Signed whole credits, e.g. `-20` or `15`.
        #[arg(long, allow_hyphen_values = true)]
        amount: i64,
        /// Why (kept in the ledger).
        #[arg(long)]
        reason: String,
        /// Makes the adjustment apply once (default: a new random key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a customer's balance.
    Balance {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show ledger entries, oldest first.
    Ledger {
        /// Only this customer's entries.
        #[arg(long)]
        customer: Option<String>,
        /// Start after this entry id (pagination).
        #[arg(long)]
        after: Option<i64>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `subscriptions` subcommands.
#[derive(Debug, Subcommand)]
pub enum SubscriptionsAction {
    /// Create or change a customer's subscription; the customer is moved to
    /// its plan. Setting the same values again changes nothing else.
    Set {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// The plan subscribed to (a `subscription` plan of the
        /// configuration).
        #[arg(long)]
        plan: String,
        /// active, trialing, past_due, unpaid, canceled, incomplete or paused.
        #[arg(long)]
        status: String,
        /// When it started (RFC 3339): the anchor of subscription-anchored
        /// periods (default: kept, or now for a new subscription).
        #[arg(long)]
        started_at: Option<String>,
        /// The payment provider's current period start (RFC 3339), with
        /// --period-end.
        #[arg(long, requires = "period_end")]
        period_start: Option<String>,
        /// The payment provider's current period end (RFC 3339).
        #[arg(long, requires = "period_start")]
        period_end: Option<String>,
        /// The payment provider's subscription id.
        #[arg(long)]
        external_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a customer's subscription.
    Show {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `outbox` and `invoices` subcommands: a queue for the payment provider.
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List the queue's rows, oldest first.
    List {
        /// Only rows in this state: pending, sent or parked.
        #[arg(long)]
        status: Option<String>,
        /// Only this customer's rows.
        #[arg(long)]
        customer: Option<String>,
        /// Start after this row id (pagination).
        #[arg(long)]
        after: Option<i64>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a parked row back in the queue, due now (a meter event with the
    /// rest of its batch).
    Retry {
        /// The row id.
        id: i64,
    },
}

/// What a customer buys: one of the two.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct CheckoutItemArgs {
    /// A credit pack id ([[stripe.credit_packs]]).
    #[arg(long)]
    pub pack: Option<String>,
    /// A subscription plan id ([stripe.plan_prices]).
    #[arg(long)]
    pub plan: Option<String>,
}

/// `stripe` subcommands.
#[derive(Debug, Subcommand)]
pub enum StripeAction {
    /// Create a Checkout Session for a customer now and print its URL.
    Checkout {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// What they buy.
        #[command(flatten)]
        item: CheckoutItemArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a payment link (`{public_url}/pay/<token>`) for a customer;
    /// Stripe is called only when the link is opened.
    Link {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// What they buy.
        #[command(flatten)]
        item: CheckoutItemArgs,
    },
    /// Compare local state with Stripe and print every difference: credit
    /// packs of completed Checkout Sessions, subscriptions, Stripe
    /// customers, the meter outbox. Changes nothing without --fix.
    Reconcile {
        /// Only Checkout Sessions created at or after this time (RFC 3339);
        /// subscriptions, customers and the outbox are always compared whole.
        #[arg(long)]
        since: Option<String>,
        /// Repair what can be repaired: grant credit packs never granted,
        /// apply Stripe's subscription state, queue parked meter batches
        /// again.
        #[arg(long)]
        fix: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `plans` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlansAction {
    /// List the plans.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one plan's model and effective prices.
    Show {
        /// The plan id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key; the key is printed once and cannot be shown again.
    Create {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// A label.
        #[arg(long)]
        name: Option<String>,
        /// Refuse the key after this time (RFC 3339).
        #[arg(long, conflicts_with = "expires_in_days")]
        expires_at: Option<String>,
        /// Refuse the key after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Tools the key may call (repeat, or comma-separated; `prefix*` globs).
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Methods the key may use (repeat, or comma-separated; e.g. `tools/*`).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Only this customer's keys.
        #[arg(long)]
        customer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused from the next call on, on every instance.
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
}

/// `export` subcommands.
#[derive(Debug, Subcommand)]
pub enum ExportAction {
    /// Usage records, by start time then call id.
    Usage {
        /// Format, filters and output.
        #[command(flatten)]
        common: ExportArgs,
        /// Only calls of this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only calls with this outcome (ok, tool_error, upstream_error,
        /// refused, timeout, cancelled, recovered).
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Ledger entries, by id.
    Ledger {
        /// Format, filters and output.
        #[command(flatten)]
        common: ExportArgs,
    },
}

/// What every export takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// csv (RFC 4180, with a header row) or jsonl (one JSON object a line).
    #[arg(long, value_enum)]
    pub format: crate::export::Format,
    /// Only this customer's rows.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only rows at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Only rows before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}
