//! The billing admin commands: `credits grant|adjust|balance|ledger` on the
//! database, and `plans list|show` from a configuration file. Every write
//! carries an idempotency key, so running a command twice (a retry after a
//! timeout, a script run again) changes a balance once.

use std::path::Path;

use mcp_meter_billing::Catalog;
use mcp_meter_billing::plan::{Meter, Model, Plan, price_table};
use mcp_meter_plugin::identity::{CallId, UnixMillis};
use mcp_meter_plugin::ledger::{
    BalanceChange, ChangeOutcome, EntryKind, GrantMode, LedgerFilter, PriceSchedule,
};
use serde_json::json;

use super::{AdminError, customer_id, format_time, open_store, print_json, table};
use crate::cli::{CreditsAction, DatabaseArgs, PlansAction};
use crate::config::Config;

/// `mcp-meter credits …`.
pub async fn credits(args: &DatabaseArgs, action: &CreditsAction) -> Result<(), AdminError> {
    match action {
        CreditsAction::Grant {
            customer,
            amount,
            idempotency_key,
            reason,
        } => {
            if *amount < 1 {
                return Err(AdminError::BadInput(format!(
                    "--amount {amount}: a grant adds at least 1 credit (use `credits adjust` to remove credits)"
                )));
            }
            let change = change(
                customer,
                EntryKind::Grant,
                *amount,
                idempotency_key,
                reason.clone(),
            )?;
            apply(args, change).await
        }
        CreditsAction::Adjust {
            customer,
            amount,
            reason,
            idempotency_key,
        } => {
            if *amount == 0 {
                return Err(AdminError::BadInput("--amount 0 changes nothing".into()));
            }
            if reason.trim().is_empty() {
                return Err(AdminError::BadInput("--reason must say why".into()));
            }
            let change = change(
                customer,
                EntryKind::Adjustment,
                *amount,
                idempotency_key,
                Some(reason.clone()),
            )?;
            apply(args, change).await
        }
        CreditsAction::Balance { customer, json } => {
            let id = customer_id(customer)?;
            let store = open_store(args).await?;
            if store.find_customer(&id).await?.is_none() {
                return Err(mcp_meter_plugin::ports::StoreError::NotFound(format!(
                    "customer {id}"
                ))
                .into());
            }
            let balance = store.balance(&id).await?;
            if *json {
                print_json(&json!({"customer_id": id, "balance": balance, "unit": "credits"}));
            } else {
                println!("{id}: {balance} credits");
            }
            Ok(())
        }
        CreditsAction::Ledger {
            customer,
            after,
            limit,
            json,
        } => {
            let filter = LedgerFilter {
                customer: customer.as_deref().map(customer_id).transpose()?,
                after_id: *after,
                limit: (*limit).clamp(1, 10_000),
            };
            let store = open_store(args).await?;
            let entries = store.entries(&filter).await?;
            if *json {
                print_json(&entries);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        format_time(e.created_at),
                        e.customer_id.to_string(),
                        e.kind.as_str().to_owned(),
                        e.amount.to_string(),
                        e.unit.clone(),
                        e.balance_after.map(|b| b.to_string()).unwrap_or_default(),
                        e.tool.clone().unwrap_or_default(),
                        e.call_id
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                        e.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID", "AT", "CUSTOMER", "KIND", "AMOUNT", "UNIT", "BALANCE", "TOOL",
                        "CALL", "REASON"
                    ],
                    &rows
                )
            );
            Ok(())
        }
    }
}

fn change(
    customer: &str,
    kind: EntryKind,
    amount: i64,
    idempotency_key: &Option<String>,
    reason: Option<String>,
) -> Result<BalanceChange, AdminError> {
    let idempotency_key = match idempotency_key {
        Some(key) if key.trim().is_empty() => {
            return Err(AdminError::BadInput(
                "--idempotency-key must not be empty".into(),
            ));
        }
        Some(key) => key.clone(),
        // A fresh key: this run applies once, a second run is a new change.
        None => format!(
            "cli:{}",
            CallId::generate()
                .as_str()
                .trim_start_matches(CallId::PREFIX)
        ),
    };
    Ok(BalanceChange {
        customer_id: customer_id(customer)?,
        kind,
        amount,
        idempotency_key,
        reason,
        at: UnixMillis::now(),
    })
}

async fn apply(args: &DatabaseArgs, change: BalanceChange) -> Result<(), AdminError> {
    let store = open_store(args).await?;
    match store.change_balance(&change).await? {
        ChangeOutcome::Applied { balance_after } => {
            println!(
                "{}: {:+} credits ({}), balance {balance_after}",
                change.customer_id,
                change.amount,
                change.kind.as_str()
            );
            Ok(())
        }
        ChangeOutcome::AlreadyApplied { balance } => {
            println!(
                "{}: already applied under idempotency key {:?}; nothing changed, balance {balance}",
                change.customer_id, change.idempotency_key
            );
            Ok(())
        }
        ChangeOutcome::WouldGoNegative { balance } => Err(AdminError::BadInput(format!(
            "{}: the balance is {balance}; {:+} would take it below zero, nothing changed",
            change.customer_id, change.amount
        ))),
    }
}

/// `mcp-meter plans …`.
pub fn plans(config: Option<&Path>, action: &PlansAction) -> Result<(), AdminError> {
    let config = config.ok_or_else(|| {
        AdminError::BadInput(
            "--config is required: plans are read from the configuration file".into(),
        )
    })?;
    let config = Config::load(config)?;
    let catalog = Catalog::compile(&config.billing, &config.plans)
        .map_err(|problems| AdminError::BadInput(problems.join("\n")))?;
    match action {
        PlansAction::List { json } => {
            let plans: Vec<_> = catalog.plans().collect();
            if *json {
                print_json(&plans.iter().map(|p| describe(p)).collect::<Vec<_>>());
                return Ok(());
            }
            let rows: Vec<Vec<String>> = plans
                .iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        p.name.clone(),
                        p.model.name().to_owned(),
                        p.unit.as_str().to_owned(),
                    ]
                })
                .collect();
            print!("{}", table::render(&["ID", "NAME", "MODEL", "UNIT"], &rows));
        }
        PlansAction::Show { id, json } => {
            let plan = catalog.plan(id).ok_or_else(|| {
                AdminError::BadInput(format!("there is no plan {id:?} in the configuration"))
            })?;
            if *json {
                print_json(&describe(plan));
                return Ok(());
            }
            println!(
                "{} ({}): {} in {}",
                plan.id,
                plan.name,
                plan.model.name(),
                plan.unit
            );
            print_model(plan);
            let rows: Vec<Vec<String>> = price_table(plan)
                .into_iter()
                .map(|(tool, price)| vec![tool, price])
                .collect();
            print!("{}", table::render(&["TOOL", "PRICE"], &rows));
        }
    }
    Ok(())
}

fn print_model(plan: &Plan) {
    match &plan.model {
        Model::PerCall {
            schedule,
            period,
            minimum,
            metering,
        } => {
            println!("period: {}", period.name());
            match metering {
                None => print_schedule(plan, schedule),
                Some(m) => {
                    println!(
                        "meter: {} (each call's units rounded up to blocks of {})",
                        m.meter.name(),
                        m.unit_size
                    );
                    print_schedule(plan, &m.in_units(schedule));
                }
            }
            if let Some(minimum) = minimum {
                println!("minimum per period: {}", plan.unit.format(*minimum));
            }
        }
        Model::Credits { grant, .. } => {
            if let Some(grant) = grant {
                let mode = match grant.mode {
                    GrantMode::Reset => "unused credits expire".to_owned(),
                    GrantMode::Rollover { cap: None } => "unused credits carry over".to_owned(),
                    GrantMode::Rollover { cap: Some(cap) } => {
                        format!("up to {cap} unused credits carry over")
                    }
                };
                println!(
                    "grant: {} credits per {} ({mode})",
                    grant.amount,
                    grant.period.name()
                );
            }
        }
        Model::Subscription(rules) => {
            if let Some(fee) = rules.fee {
                println!("fee: {} per period", plan.unit.format(fee));
            }
            if let Some(m) = &rules.metering {
                println!(
                    "meter: {} (each call's units rounded up to blocks of {})",
                    m.meter.name(),
                    m.unit_size
                );
            }
            let (included, counts) = rules.included();
            println!(
                "included: {included} {counts} per {}; beyond them: {}",
                rules.period.name(),
                if rules.overage {
                    "overage at the prices below"
                } else {
                    "refused"
                }
            );
            println!("past-due grace: {} hours", rules.grace_ms / 3_600_000);
        }
        Model::Usage(rules) => {
            let meter = match &rules.meter {
                Meter::Meta(key) => format!("meta (the result's _meta[{key:?}])"),
                meter => meter.name().to_owned(),
            };
            println!(
                "meter event: {}; each call counts {meter}",
                rules.event_name
            );
        }
        Model::Freemium(rules) => {
            println!(
                "free: {} calls per {}",
                rules.free_calls,
                rules.window.name()
            );
            for (tool, cap) in &rules.tool_quotas {
                println!("  {tool}: {cap} calls per {}", rules.window.name());
            }
            match &rules.then_plan {
                Some(then) => println!("beyond the quota: charged on plan {then}"),
                None => println!("beyond the quota: refused"),
            }
        }
    }
}

fn print_schedule(plan: &Plan, schedule: &PriceSchedule) {
    let per = plan.price_per();
    let (mode, tiers) = match schedule {
        PriceSchedule::Flat { price } => {
            println!("default price: {} per {per}", plan.unit.format(*price));
            return;
        }
        PriceSchedule::Volume { tiers } => ("volume", tiers),
        PriceSchedule::Graduated { tiers } => ("graduated", tiers),
    };
    let counted = if per == "call" { "calls" } else { "units" };
    println!("{mode} tiers ({counted} in the period → price per {per}):");
    for tier in tiers {
        let up_to = tier
            .up_to
            .map_or("and above".to_owned(), |n| format!("up to {n}"));
        println!("  {up_to}: {}", plan.unit.format(tier.price));
    }
}

/// A plan as JSON: its model, unit, effective prices and the model's numbers
/// (the CLI's `--json`; the API's `/plans` answers the same
/// [`PlanView`](crate::api::billing::PlanView)).
pub(crate) fn describe(plan: &Plan) -> serde_json::Value {
    serde_json::to_value(crate::api::billing::PlanView::of(plan)).unwrap_or_default()
}
