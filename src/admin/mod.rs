//! The admin commands (`migrate`, `customers`, `keys`, `usage`, `db copy`): each opens
//! the configured database, does one thing, and prints a table (or JSON with
//! `--json`). They mirror what the management API will offer.
//!
//! A new key is printed once, here, and never stored or shown again: the
//! store keeps its SHA-256 hash and its visible prefix only.

pub mod billing;
pub mod db;
pub mod export;
pub mod outbox;
pub mod stripe;
pub mod subscriptions;
mod table;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use mcp_meter_auth::key::ApiKey;
use mcp_meter_plugin::identity::{
    ApiKeyRecord, Customer, CustomerId, CustomerStatus, KeyId, KeyScope, UnixMillis,
};
use mcp_meter_plugin::ledger::{BalanceChange, EntryKind};
use mcp_meter_plugin::ports::{CREDENTIAL_LEASE, NewCustomer, StoreError, UsageRecord};
use serde::Serialize;

use crate::cli::{CustomersAction, DatabaseArgs, KeysAction};
use crate::config::{Config, ConfigError};
use crate::services::store_options;
use crate::store::{self, DailyUsage, NewApiKey, OpenError, Store, StoreOptions, UsageFilter};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither `--config` with a `[database]` nor `--database-url` was given.
    #[error(
        "no database: pass --database-url (or MCP_METER_DATABASE_URL), or --config with a [database] section"
    )]
    NoDatabase,
    /// The database cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The database refused or failed the operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `db copy` failed.
    #[error(transparent)]
    Copy(#[from] store::CopyError),
    /// An argument is not valid.
    #[error("{0}")]
    BadInput(String),
    /// An export could not be written.
    #[error("cannot write the export to {0}: {1}")]
    Write(String, std::io::Error),
    /// `stripe reconcile` could not run to the end.
    #[error(transparent)]
    Reconcile(#[from] crate::stripe::reconcile::ReconcileError),
}

/// Opens (and migrates) the database an admin command names.
pub async fn open_store(args: &DatabaseArgs) -> Result<Arc<dyn Store>, AdminError> {
    Ok(store::open(&options(args)?).await?)
}

fn options(args: &DatabaseArgs) -> Result<StoreOptions, AdminError> {
    if let Some(url) = &args.database_url {
        return Ok(StoreOptions {
            url: url.clone(),
            ..StoreOptions::default()
        });
    }
    let path = args.config.as_deref().ok_or(AdminError::NoDatabase)?;
    let config = Config::load(Path::new(path))?;
    let database = config.database.as_ref().ok_or(AdminError::NoDatabase)?;
    Ok(store_options(database))
}

/// `mcp-meter migrate`.
pub async fn migrate(args: &DatabaseArgs) -> Result<(), AdminError> {
    let report = store::migrate(&options(args)?).await?;
    println!("{report}");
    Ok(())
}

/// `mcp-meter customers …`.
pub async fn customers(args: &DatabaseArgs, action: &CustomersAction) -> Result<(), AdminError> {
    let store = open_store(args).await?;
    match action {
        CustomersAction::Add {
            name,
            email,
            plan,
            subject,
            json,
        } => {
            if name.trim().is_empty() {
                return Err(AdminError::BadInput("--name must not be empty".into()));
            }
            let customer = store
                .create_customer(NewCustomer {
                    name: name.clone(),
                    email: email.clone(),
                    plan_id: plan.clone(),
                    external_subject: subject.clone(),
                    metadata: Default::default(),
                })
                .await?;
            print_customers(&[customer], *json);
        }
        CustomersAction::List { after, limit, json } => {
            let after = after.as_deref().map(customer_id).transpose()?;
            let customers = store.list_customers(after.as_ref(), *limit).await?;
            print_customers(&customers, *json);
        }
        CustomersAction::Show { id, json } => {
            let id = customer_id(id)?;
            let customer = store
                .find_customer(&id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("customer {id}")))?;
            let keys = store.list_api_keys(Some(&id)).await?;
            if *json {
                print_json(&serde_json::json!({ "customer": customer, "keys": keys }));
            } else {
                print_customers(std::slice::from_ref(&customer), false);
                println!();
                print_keys(&keys, false);
            }
        }
        CustomersAction::Suspend { id } => {
            let customer = store
                .set_customer_status(&customer_id(id)?, CustomerStatus::Suspended)
                .await?;
            // Instances may act on a customer they read up to a lease ago.
            tokio::time::sleep(CREDENTIAL_LEASE).await;
            println!(
                "customer {} suspended: its calls are refused from now on",
                customer.id
            );
        }
        CustomersAction::Resume { id } => {
            let customer = store
                .set_customer_status(&customer_id(id)?, CustomerStatus::Active)
                .await?;
            println!("customer {} active again", customer.id);
        }
    }
    Ok(())
}

/// A key as printed once at creation.
#[derive(Serialize)]
struct CreatedKey<'a> {
    key: &'a str,
    #[serde(flatten)]
    record: &'a ApiKeyRecord,
}

/// `mcp-meter keys …`.
pub async fn keys(args: &DatabaseArgs, action: &KeysAction) -> Result<(), AdminError> {
    let store = open_store(args).await?;
    match action {
        KeysAction::Create {
            customer,
            name,
            expires_at,
            expires_in_days,
            tools,
            methods,
            json,
        } => {
            let expires_at = match (expires_at, expires_in_days) {
                (Some(at), _) => Some(parse_time(at, "--expires-at")?),
                (None, Some(days)) => Some(UnixMillis(
                    UnixMillis::now().0 + i64::from(*days) * 86_400_000,
                )),
                (None, None) => None,
            };
            let key = ApiKey::generate();
            let record = store
                .create_api_key(NewApiKey {
                    customer_id: customer_id(customer)?,
                    key_hash: key.hash(),
                    prefix: key.visible_prefix().to_owned(),
                    name: name.clone(),
                    scope: KeyScope {
                        tools: tools.clone(),
                        methods: methods.clone(),
                    },
                    expires_at,
                })
                .await?;
            if *json {
                print_json(&CreatedKey {
                    key: key.expose(),
                    record: &record,
                });
            } else {
                println!("{}", key.expose());
                eprintln!(
                    "API key {} created for {}. This is the only time the key is shown: store it now.",
                    record.id, record.customer_id
                );
            }
        }
        KeysAction::List { customer, json } => {
            let customer = customer.as_deref().map(customer_id).transpose()?;
            let keys = store.list_api_keys(customer.as_ref()).await?;
            print_keys(&keys, *json);
        }
        KeysAction::Revoke { id } => {
            let id = KeyId::parse(id)
                .ok_or_else(|| AdminError::BadInput(format!("{id:?} is not a key id (key_…)")))?;
            let record = store.revoke_api_key(&id, UnixMillis::now()).await?;
            // Instances may act on a key they read up to a lease ago.
            tokio::time::sleep(CREDENTIAL_LEASE).await;
            println!(
                "key {} ({}…) revoked: refused from the next call on",
                record.id, record.prefix
            );
        }
    }
    Ok(())
}

/// The arguments of `mcp-meter usage`.
#[derive(Debug)]
pub struct UsageQuery<'a> {
    /// The customer id.
    pub customer: &'a str,
    /// RFC 3339 lower bound.
    pub since: Option<&'a str>,
    /// RFC 3339 upper bound.
    pub until: Option<&'a str>,
    /// Most rows.
    pub limit: u32,
    /// Roll-ups instead of records.
    pub daily: bool,
    /// JSON output.
    pub json: bool,
}

/// `mcp-meter usage`.
pub async fn usage(args: &DatabaseArgs, query: UsageQuery<'_>) -> Result<(), AdminError> {
    let filter = UsageFilter {
        customer: Some(customer_id(query.customer)?),
        since: query.since.map(|t| parse_time(t, "--since")).transpose()?,
        until: query.until.map(|t| parse_time(t, "--until")).transpose()?,
        limit: query.limit,
        ..UsageFilter::default()
    };
    let store = open_store(args).await?;
    if query.daily {
        let rows = store.usage_daily(&filter).await?;
        print_daily(&rows, query.json);
    } else {
        let rows = store.usage_records(&filter).await?;
        print_records(&rows, query.json);
    }
    Ok(())
}

pub(crate) fn customer_id(text: &str) -> Result<CustomerId, AdminError> {
    CustomerId::parse(text)
        .ok_or_else(|| AdminError::BadInput(format!("{text:?} is not a customer id (cus_…)")))
}

pub(crate) fn parse_time(text: &str, flag: &str) -> Result<UnixMillis, AdminError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| UnixMillis(t.timestamp_millis()))
        .map_err(|e| {
            AdminError::BadInput(format!(
                "{flag} {text:?} is not an RFC 3339 time like 2026-11-01T00:00:00Z: {e}"
            ))
        })
}

/// A time as RFC 3339 UTC, to the second.
pub(crate) fn format_time(at: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.0.to_string())
}

fn optional_time(at: Option<UnixMillis>) -> String {
    at.map(format_time).unwrap_or_default()
}

pub(crate) fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("cannot render JSON: {e}"),
    }
}

fn print_customers(customers: &[Customer], json: bool) {
    if json {
        return print_json(&customers);
    }
    let rows: Vec<Vec<String>> = customers
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.email.clone().unwrap_or_default(),
                c.plan_id.clone().unwrap_or_default(),
                c.status.as_str().to_owned(),
                format_time(c.created_at),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["ID", "NAME", "EMAIL", "PLAN", "STATUS", "CREATED"], &rows)
    );
}

fn print_keys(keys: &[ApiKeyRecord], json: bool) {
    if json {
        return print_json(&keys);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let status = if k.revoked_at.is_some() {
                "revoked"
            } else if !k.is_usable_at(UnixMillis::now()) {
                "expired"
            } else {
                "active"
            };
            vec![
                k.id.to_string(),
                format!("{}…", k.prefix),
                k.customer_id.to_string(),
                k.name.clone().unwrap_or_default(),
                status.to_owned(),
                optional_time(k.expires_at),
                optional_time(k.last_used_at),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID",
                "PREFIX",
                "CUSTOMER",
                "NAME",
                "STATUS",
                "EXPIRES",
                "LAST USED"
            ],
            &rows
        )
    );
}

fn print_records(records: &[UsageRecord], json: bool) {
    if json {
        return print_json(&records);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                format_time(r.started_at),
                r.call_id.to_string(),
                r.method.clone(),
                r.tool.clone().unwrap_or_default(),
                r.outcome.as_str().to_owned(),
                r.reason.clone().unwrap_or_default(),
                r.duration_us.to_string(),
                r.bytes_in.to_string(),
                r.bytes_out.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "STARTED",
                "CALL",
                "METHOD",
                "TOOL",
                "OUTCOME",
                "REASON",
                "DURATION_US",
                "BYTES_IN",
                "BYTES_OUT"
            ],
            &rows
        )
    );
}

fn print_daily(rows: &[DailyUsage], json: bool) {
    if json {
        return print_json(&rows);
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            vec![
                d.day.clone(),
                d.method.clone(),
                d.tool.clone().unwrap_or_default(),
                d.calls.to_string(),
                d.errors.to_string(),
                d.units.to_string(),
                d.duration_us.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "DAY",
                "METHOD",
                "TOOL",
                "CALLS",
                "ERRORS",
                "UNITS",
                "DURATION_US"
            ],
            &rows
        )
    );
}

/// The subject that marks the demo customer, so `mcp-meter demo` reuses it.
const DEMO_SUBJECT: &str = "mcp-meter-demo";

/// The demo customer's plan (see `crate::run`'s demo configuration).
pub const DEMO_PLAN: &str = "demo";
/// Credits the demo customer starts with, granted once per database.
pub const DEMO_CREDITS: i64 = 100;

/// What `mcp-meter demo` prints: the demo customer, a new key in clear
/// (shown once) and the balance.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    /// The demo customer's id.
    pub customer: CustomerId,
    /// The new API key.
    pub key: String,
    /// The customer's credits now.
    pub balance: i64,
}

/// For `mcp-meter demo`: the demo customer on the demo credits plan
/// (created on first run, reused after) with its welcome credits (granted
/// once per database), and a new API key for it.
pub async fn demo_account(database_url: &str) -> Result<DemoAccount, AdminError> {
    let store = open_store(&DatabaseArgs {
        config: None,
        database_url: Some(database_url.to_owned()),
    })
    .await?;
    let customer = store
        .provision_customer(NewCustomer {
            name: "Demo customer".into(),
            external_subject: Some(DEMO_SUBJECT.into()),
            plan_id: Some(DEMO_PLAN.into()),
            ..NewCustomer::default()
        })
        .await?;
    store
        .change_balance(&BalanceChange {
            customer_id: customer.id.clone(),
            kind: EntryKind::Grant,
            amount: DEMO_CREDITS,
            idempotency_key: "demo-welcome-credits".into(),
            reason: Some("mcp-meter demo: welcome credits".into()),
            at: UnixMillis::now(),
        })
        .await?;
    let balance = store.balance(&customer.id).await?;
    let key = ApiKey::generate();
    store
        .create_api_key(NewApiKey {
            customer_id: customer.id.clone(),
            key_hash: key.hash(),
            prefix: key.visible_prefix().to_owned(),
            name: Some("demo".into()),
            scope: KeyScope::default(),
            expires_at: None,
        })
        .await?;
    Ok(DemoAccount {
        customer: customer.id,
        key: key.expose().to_owned(),
        balance,
    })
}
