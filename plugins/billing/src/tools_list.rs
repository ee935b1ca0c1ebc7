//! Price discovery: a `tools/list` result annotated for the caller's plan.
//! Each tool gets its price in `_meta["mcp-meter/billing"]` and,
//! when configured, a short price note at the end of its description.
//! Tools the plan cannot call are left out, or listed marked as not
//! included (configurable).

use mcp_meter_plugin::McpResponse;
use serde_json::{Map, Value, json};

use crate::meta::{META_KEY, edit_result};
use crate::plan::{Catalog, Model, Plan, ToolPrice};

/// Annotates a `tools/list` response for `plan`.
pub(crate) fn annotate(response: McpResponse, plan: &Plan, catalog: &Catalog) -> McpResponse {
    edit_result(response, |top| {
        let tools: Vec<Value> = serde_json::from_str(top.get("tools")?.get()).ok()?;
        let tools: Vec<Value> = tools
            .into_iter()
            .filter_map(|tool| annotate_tool(tool, plan, catalog))
            .collect();
        top.set("tools", serde_json::value::to_raw_value(&tools).ok()?);
        Some(())
    })
}

fn annotate_tool(mut tool: Value, plan: &Plan, catalog: &Catalog) -> Option<Value> {
    let Some(name) = tool.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return Some(tool);
    };
    let object = tool.as_object_mut()?;
    // Only credits and per-call plans price each call; a zero there is
    // free, while the other models describe their quota or meter.
    let priced_per_call = matches!(plan.model, Model::Credits { .. } | Model::PerCall { .. });
    let (price, note) = match (plan.price_of(Some(&name)), plan.list_price(&name)) {
        (ToolPrice::NotIncluded, _) | (_, None) if catalog.hide_unavailable_tools => return None,
        (ToolPrice::NotIncluded, _) | (_, None) => (
            json!({"plan": plan.id, "included": false}),
            format!("Not included in your plan {}.", plan.name),
        ),
        (ToolPrice::Free, _) => free(plan),
        (_, Some(0)) if priced_per_call => free(plan),
        (_, Some(amount)) => priced(plan, &name, amount, catalog),
    };
    let meta = object
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(META_KEY.to_owned(), price);
    }
    if catalog.price_in_description {
        let description = object
            .get("description")
            .and_then(Value::as_str)
            .map_or_else(|| note.clone(), |d| format!("{d} ({note})"));
        object.insert("description".to_owned(), Value::from(description));
    }
    Some(tool)
}

/// The `_meta` entry of a tool the proxy answers itself at no charge
/// (`[billing] status_tool`), for the caller's plan if there is one.
pub(crate) fn free_of_charge(plan: Option<&Plan>) -> Value {
    match plan {
        Some(plan) => {
            json!({"plan": plan.id, "included": true, "unit": plan.unit.as_str(), "price": 0})
        }
        None => json!({"included": true, "price": 0}),
    }
}

/// The `_meta` entry and the note of a free tool.
fn free(plan: &Plan) -> (Value, String) {
    (
        json!({"plan": plan.id, "included": true, "unit": plan.unit.as_str(), "price": 0}),
        "Free.".to_owned(),
    )
}

/// The `_meta` entry and the note of a tool that is not free, by model.
fn priced(plan: &Plan, tool: &str, amount: i64, catalog: &Catalog) -> (Value, String) {
    let formatted = plan.unit.format(amount);
    let unit = plan.unit.as_str();
    let mut price = json!({"plan": plan.id, "included": true, "unit": unit});
    let per = plan.price_per();
    if per != "call" {
        price["per"] = json!(per);
    }
    let note = match &plan.model {
        Model::Credits { .. } => {
            price["price"] = json!(amount);
            format!("Costs {formatted} credits per {per}.")
        }
        Model::PerCall { .. } => {
            price["price"] = json!(formatted);
            let tiered = plan.is_tiered(tool);
            if tiered {
                price["tiered"] = json!(true);
            }
            format!(
                "Costs {formatted} {} per {per}{}.",
                unit.to_ascii_uppercase(),
                if tiered { " (first tier)" } else { "" }
            )
        }
        Model::Subscription(rules) => {
            let (amount, counts) = rules.included();
            price[format!("included_{counts}")] = json!(amount);
            let what = rules.metering.as_ref().map_or("calls", |m| m.meter.unit());
            price["period"] = json!(rules.period.name());
            let included = format!(
                "Included in your subscription ({amount} {what} per {})",
                rules.period.name()
            );
            if rules.overage {
                price["overage_price"] = json!(formatted);
                format!(
                    "{included}, then {formatted} {} per {per}.",
                    unit.to_ascii_uppercase()
                )
            } else {
                format!("{included}.")
            }
        }
        Model::Usage(rules) => {
            price["metered"] = json!(rules.meter.name());
            price["unit"] = json!(rules.meter.unit());
            format!("Billed by usage ({}).", rules.meter.unit())
        }
        Model::Freemium(rules) => {
            let (_, cap) = rules.quota_for(Some(tool));
            price["free_calls"] = json!(cap);
            price["window"] = json!(rules.window.name());
            let then = rules
                .then_plan
                .as_deref()
                .and_then(|id| catalog.plan(id))
                .and_then(|then| {
                    let amount = then.list_price(tool)?;
                    price["then_plan"] = json!(then.id);
                    price["then_price"] = json!(then.unit.format(amount));
                    price["then_unit"] = json!(then.unit.as_str());
                    Some(format!(
                        ", then {} {} per call",
                        then.unit.format(amount),
                        then.unit.as_str().to_ascii_uppercase()
                    ))
                })
                .unwrap_or_default();
            format!("Free for {cap} calls per {}{then}.", rules.window.name())
        }
    };
    (price, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BillingConfig, PlanConfig};
    use mcp_meter_plugin::jsonrpc::Message;

    fn catalog(plans: &str) -> Catalog {
        #[derive(serde::Deserialize)]
        struct File {
            plans: Vec<PlanConfig>,
        }
        let file: File = toml::from_str(plans).unwrap();
        let billing = BillingConfig {
            hide_unavailable_tools: Some(false),
            price_in_description: true,
            ..BillingConfig::default()
        };
        Catalog::compile(&billing, &file.plans).unwrap()
    }

    fn listed(catalog: &Catalog, plan: &str) -> Vec<Value> {
        let response = McpResponse::new(
            Message::parse(
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","description":"Echoes."},{"name":"search","inputSchema":{}},{"name":"admin_x"}],"nextCursor":"c"}}"#
                    .to_owned()
                    .into(),
            )
            .unwrap(),
        );
        let annotated = annotate(response, catalog.plan(plan).unwrap(), catalog);
        let result: Value =
            serde_json::from_str(annotated.message.result().unwrap().get()).unwrap();
        assert_eq!(result["nextCursor"], "c");
        result["tools"].as_array().unwrap().clone()
    }

    #[test]
    fn flat_and_tiered_per_call_prices_are_told_apart() {
        let catalog = catalog(
            r#"
[[plans]]
id = "flat"
model = "per_call"
currency = "usd"
prices = { default = "0.002", not_included = ["admin_*"] }

[[plans]]
id = "tiers"
model = "per_call"
currency = "usd"
prices = { tools = { "search" = "0.01" } }
per_call = { tiering = "graduated", tiers = [ { up_to = 10, price = "0.005" }, { price = "0.001" } ] }
"#,
        );
        let flat = listed(&catalog, "flat");
        assert_eq!(flat[0]["_meta"][META_KEY]["price"], "0.002");
        assert!(
            flat[0]["_meta"][META_KEY].get("tiered").is_none(),
            "{}",
            flat[0]
        );
        assert_eq!(
            flat[0]["description"],
            "Echoes. (Costs 0.002 USD per call.)"
        );
        assert_eq!(flat[2]["_meta"][META_KEY]["included"], false);

        let tiers = listed(&catalog, "tiers");
        assert_eq!(tiers[0]["_meta"][META_KEY]["price"], "0.005");
        assert_eq!(tiers[0]["_meta"][META_KEY]["tiered"], true);
        assert_eq!(
            tiers[0]["description"],
            "Echoes. (Costs 0.005 USD per call (first tier).)"
        );
        // A tool with its own price is outside the tiers.
        assert_eq!(tiers[1]["_meta"][META_KEY]["price"], "0.01");
        assert!(tiers[1]["_meta"][META_KEY].get("tiered").is_none());
        assert_eq!(tiers[1]["description"], "Costs 0.01 USD per call.");
    }
}
