//! `mcp-meter outbox list|retry` and `mcp-meter invoices list|retry`: what
//! waits for the payment provider, as the operator sees it. Meter events
//! are written with the usage they report, invoice items when a per-call
//! plan's period closes; both are sent by background workers, and one that
//! failed too often is parked until the operator puts it back.

use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::outbox::{OutboxFilter, OutboxStatus};

use super::{AdminError, customer_id, format_time, open_store, print_json, table};
use crate::cli::{DatabaseArgs, OutboxAction};

/// `mcp-meter outbox …`.
pub async fn run(args: &DatabaseArgs, action: &OutboxAction) -> Result<(), AdminError> {
    match action {
        OutboxAction::List {
            status,
            customer,
            after,
            limit,
            json,
        } => {
            let filter = filter(status.as_deref(), customer.as_deref(), *after, *limit)?;
            let store = open_store(args).await?;
            let events = store.meter_events(&filter).await?;
            if *json {
                print_json(&events);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        format_time(e.occurred_at),
                        e.customer_id.to_string(),
                        e.event_name.clone(),
                        e.value.to_string(),
                        e.status.as_str().to_owned(),
                        e.attempts.to_string(),
                        e.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID", "AT", "CUSTOMER", "EVENT", "VALUE", "STATUS", "ATTEMPTS", "ERROR"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        OutboxAction::Retry { id } => {
            let store = open_store(args).await?;
            if store.retry_meter_event(*id, UnixMillis::now()).await? {
                println!("meter event {id} is queued again");
                Ok(())
            } else {
                Err(AdminError::BadInput(format!(
                    "there is no parked meter event {id} (only parked events can be retried)"
                )))
            }
        }
    }
}

/// The filter the `list` flags give.
fn filter(
    status: Option<&str>,
    customer: Option<&str>,
    after: Option<i64>,
    limit: u32,
) -> Result<OutboxFilter, AdminError> {
    let status = status
        .map(|s| {
            OutboxStatus::parse(s).ok_or_else(|| {
                AdminError::BadInput(format!("--status {s:?}: use pending, sent or parked"))
            })
        })
        .transpose()?;
    Ok(OutboxFilter {
        status,
        customer: customer.map(customer_id).transpose()?,
        after_id: after,
        limit: limit.clamp(1, 10_000),
    })
}

/// `mcp-meter invoices …`.
pub async fn invoices(args: &DatabaseArgs, action: &OutboxAction) -> Result<(), AdminError> {
    match action {
        OutboxAction::List {
            status,
            customer,
            after,
            limit,
            json,
        } => {
            let filter = filter(status.as_deref(), customer.as_deref(), *after, *limit)?;
            let store = open_store(args).await?;
            let items = store.invoice_items(&filter).await?;
            if *json {
                print_json(&items);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        i.id.to_string(),
                        i.customer_id.to_string(),
                        i.plan_id.clone(),
                        format_time(i.period_start),
                        format!("{} {}", i.amount, i.currency),
                        i.status.as_str().to_owned(),
                        i.attempts.to_string(),
                        i.external_id.clone().unwrap_or_default(),
                        i.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID", "CUSTOMER", "PLAN", "PERIOD", "AMOUNT", "STATUS", "ATTEMPTS",
                        "STRIPE", "ERROR"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        OutboxAction::Retry { id } => {
            let store = open_store(args).await?;
            if store.retry_invoice_item(*id, UnixMillis::now()).await? {
                println!("invoice item {id} is queued again");
                Ok(())
            } else {
                Err(AdminError::BadInput(format!(
                    "there is no parked invoice item {id} (only parked items can be retried)"
                )))
            }
        }
    }
}
