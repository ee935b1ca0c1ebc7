//! `mcp-meter subscriptions set|show`: the operator's hand on a customer's
//! subscription when no payment provider keeps it current (or to correct
//! one). Setting a subscription also moves the customer to its plan, in
//! the same transaction.

use mcp_meter_billing::Catalog;
use mcp_meter_billing::plan::Model;
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, SubscriptionStatus};
use serde_json::json;

use super::{AdminError, customer_id, format_time, open_store, parse_time, print_json};
use crate::cli::{DatabaseArgs, SubscriptionsAction};
use crate::config::Config;

/// `mcp-meter subscriptions …`.
pub async fn run(args: &DatabaseArgs, action: &SubscriptionsAction) -> Result<(), AdminError> {
    match action {
        SubscriptionsAction::Set {
            customer,
            plan,
            status,
            started_at,
            period_start,
            period_end,
            external_id,
            json,
        } => {
            let status = SubscriptionStatus::parse(status).ok_or_else(|| {
                let names: Vec<_> = SubscriptionStatus::ALL.iter().map(|s| s.as_str()).collect();
                AdminError::BadInput(format!(
                    "--status {status:?}: use one of {}",
                    names.join(", ")
                ))
            })?;
            if plan.trim().is_empty() {
                return Err(AdminError::BadInput("--plan must name a plan".into()));
            }
            if let Some(path) = &args.config {
                check_plan(path, plan.trim())?;
            }
            let current_period = match (period_start, period_end) {
                (Some(start), Some(end)) => {
                    let start = parse_time(start, "--period-start")?;
                    let end = parse_time(end, "--period-end")?;
                    if end <= start {
                        return Err(AdminError::BadInput(
                            "--period-end must be after --period-start".into(),
                        ));
                    }
                    Some((start, end))
                }
                _ => None,
            };
            let change = SubscriptionChange {
                customer_id: customer_id(customer)?,
                plan_id: plan.trim().to_owned(),
                status,
                started_at: started_at
                    .as_deref()
                    .map(|t| parse_time(t, "--started-at"))
                    .transpose()?,
                current_period,
                external_id: external_id.clone(),
                at: UnixMillis::now(),
                provider_event_at: None,
            };
            let store = open_store(args).await?;
            let subscription = store.set_subscription(&change).await?;
            // The customer's plan moved: instances may act on the plan they
            // read up to a lease ago.
            tokio::time::sleep(CREDENTIAL_LEASE).await;
            show(&subscription, *json);
            Ok(())
        }
        SubscriptionsAction::Show { customer, json } => {
            let id = customer_id(customer)?;
            let store = open_store(args).await?;
            if store.find_customer(&id).await?.is_none() {
                return Err(mcp_meter_plugin::ports::StoreError::NotFound(format!(
                    "customer {id}"
                ))
                .into());
            }
            match store.subscription(&id).await? {
                Some(subscription) => show(&subscription, *json),
                None if *json => print_json(&json!(null)),
                None => println!("{id} has no subscription"),
            }
            Ok(())
        }
    }
}

/// With a configuration at hand, the plan must be one of its subscription
/// plans.
fn check_plan(path: &std::path::Path, plan: &str) -> Result<(), AdminError> {
    let config = Config::load(path)?;
    let catalog = Catalog::compile(&config.billing, &config.plans)
        .map_err(|problems| AdminError::BadInput(problems.join("\n")))?;
    match catalog.plan(plan).map(|p| &p.model) {
        Some(Model::Subscription(_)) => Ok(()),
        Some(other) => Err(AdminError::BadInput(format!(
            "--plan {plan}: it is a {} plan, not a subscription plan",
            other.name()
        ))),
        None => Err(AdminError::BadInput(format!(
            "--plan {plan}: there is no such plan in {}",
            path.display()
        ))),
    }
}

fn show(subscription: &Subscription, json: bool) {
    if json {
        print_json(subscription);
        return;
    }
    let s = subscription;
    println!(
        "{}: {} on plan {} since {}",
        s.customer_id,
        s.status,
        s.plan_id,
        format_time(s.started_at)
    );
    if let Some(since) = s.past_due_since {
        println!("past due since {}", format_time(since));
    }
    if let (Some(start), Some(end)) = (s.current_period_start, s.current_period_end) {
        println!(
            "current period: {} to {}",
            format_time(start),
            format_time(end)
        );
    }
    if let Some(external) = &s.external_id {
        println!("payment provider id: {external}");
    }
}
