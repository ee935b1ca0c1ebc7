//! `mcp-meter stripe checkout|link|reconcile`: the operator opens a
//! Checkout Session for a customer (printing where they pay), makes the
//! payment link a refusal would carry, or compares local state with Stripe
//! (and repairs it with `--fix`). Each needs the configuration's `[stripe]`
//! (with `secret_key`; checkout also `success_url`, a link `public_url`)
//! and its `[database]`.

use std::path::Path;
use std::sync::Arc;

use mcp_meter_plugin::identity::UnixMillis;
use serde_json::json;

use super::{AdminError, customer_id, parse_time, print_json};
use crate::cli::{CheckoutItemArgs, StripeAction};
use crate::config::Config;
use crate::services::store_options;
use crate::store;
use crate::stripe::checkout::Checkout;
use crate::stripe::client::StripeApi;
use crate::stripe::pay_link::PayLinks;
use crate::stripe::reconcile::{ReconcileOptions, Reconciler};
use crate::stripe::{CheckoutItem, StripeConfig};

/// `mcp-meter stripe …`.
pub async fn run(config_path: Option<&Path>, action: &StripeAction) -> Result<(), AdminError> {
    let config_path = config_path.ok_or_else(|| {
        AdminError::BadInput("pass --config with the file that has [stripe] and [database]".into())
    })?;
    let config = Config::load(config_path)?;
    let stripe = config.stripe.clone().ok_or_else(|| {
        AdminError::BadInput(format!(
            "{} has no [stripe] section: add one with secret_key, success_url and the prices",
            config_path.display()
        ))
    })?;
    match action {
        StripeAction::Checkout {
            customer,
            item,
            json,
        } => {
            let customer = customer_id(customer)?;
            let item = checkout_item(&stripe, item)?;
            let database = config.database.as_ref().ok_or(AdminError::NoDatabase)?;
            let store = store::open(&store_options(database)).await?;
            let api = StripeApi::new(&stripe).map_err(|e| AdminError::BadInput(e.to_string()))?;
            let checkout = Checkout::new(api, Arc::clone(&store), stripe)
                .map_err(|e| AdminError::BadInput(e.to_string()))?;
            let session = checkout
                .open(&customer, &item, None)
                .await
                .map_err(|e| AdminError::BadInput(e.to_string()))?;
            if *json {
                print_json(
                    &json!({ "id": session.id, "url": session.url, "item": item.to_string() }),
                );
            } else {
                println!("Checkout Session {} for {customer} ({item}):", session.id);
                println!("{}", session.url);
            }
            Ok(())
        }
        StripeAction::Link { customer, item } => {
            let customer = customer_id(customer)?;
            let item = checkout_item(&stripe, item)?;
            let links = PayLinks::new(&stripe).ok_or_else(|| {
                AdminError::BadInput(
                    "payment links need public_url and secret_key (or pay_link_secret) in [stripe]"
                        .into(),
                )
            })?;
            let database = config.database.as_ref().ok_or(AdminError::NoDatabase)?;
            let store = store::open(&store_options(database)).await?;
            if store.find_customer(&customer).await?.is_none() {
                return Err(AdminError::BadInput(format!(
                    "there is no customer {customer}"
                )));
            }
            let link = links
                .link(customer.as_str(), &item, UnixMillis::now().0 / 1000)
                .ok_or_else(|| AdminError::BadInput("the link could not be signed".into()))?;
            println!("{link}");
            Ok(())
        }
        StripeAction::Reconcile { since, fix, json } => {
            reconcile(&config, &stripe, since.as_deref(), *fix, *json).await
        }
    }
}

/// `mcp-meter stripe reconcile`: prints the report; differences are not
/// errors (exit 0), a Stripe or database failure is.
async fn reconcile(
    config: &Config,
    stripe: &StripeConfig,
    since: Option<&str>,
    fix: bool,
    json: bool,
) -> Result<(), AdminError> {
    let options = ReconcileOptions {
        since: since.map(|t| parse_time(t, "--since")).transpose()?,
        fix,
    };
    let reconciler = Reconciler::new(stripe, config)?;
    let database = config.database.as_ref().ok_or(AdminError::NoDatabase)?;
    let store = store::open(&store_options(database)).await?;
    let report = reconciler.run(store.as_ref(), &options).await?;
    if json {
        print_json(&report);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The pack or plan named on the command line, checked against `[stripe]`.
fn checkout_item(
    stripe: &StripeConfig,
    args: &CheckoutItemArgs,
) -> Result<CheckoutItem, AdminError> {
    let item = match (&args.pack, &args.plan) {
        (Some(pack), None) => CheckoutItem::Pack(pack.clone()),
        (None, Some(plan)) => CheckoutItem::Plan(plan.clone()),
        _ => {
            return Err(AdminError::BadInput(
                "name exactly one of --pack or --plan".into(),
            ));
        }
    };
    stripe.price_of(&item).map_err(AdminError::BadInput)?;
    Ok(item)
}
