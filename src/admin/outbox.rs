//! `mcp-meter outbox list|retry`: the meter outbox as the operator sees it.
//! Events are written with the usage they report and sent by the payment
//! worker; one that failed too often is parked until the operator puts it
//! back.

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
            let status = status
                .as_deref()
                .map(|s| {
                    OutboxStatus::parse(s).ok_or_else(|| {
                        AdminError::BadInput(format!("--status {s:?}: use pending, sent or parked"))
                    })
                })
                .transpose()?;
            let filter = OutboxFilter {
                status,
                customer: customer.as_deref().map(customer_id).transpose()?,
                after_id: *after,
                limit: (*limit).clamp(1, 10_000),
            };
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
