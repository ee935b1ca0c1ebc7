//! Price discovery: a `tools/list` result annotated for the caller's plan.
//! Each tool gets its price in `_meta["mcp-meter/billing"]` and,
//! when configured, a short price note at the end of its description.
//! Tools the plan cannot call are left out, or listed marked as not
//! included (configurable).

use mcp_meter_plugin::McpResponse;
use serde_json::{Map, Value, json};

use crate::meta::{META_KEY, edit_result};
use crate::plan::{Catalog, Model, Plan};

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
    let (price, note) = match plan.list_price(&name) {
        None if catalog.hide_unavailable_tools => return None,
        None => (
            json!({"plan": plan.id, "included": false}),
            format!("Not included in your plan {}.", plan.name),
        ),
        Some(amount) => {
            let formatted = plan.unit.format(amount);
            let unit = plan.unit.as_str();
            let mut price = json!({"plan": plan.id, "included": true, "unit": unit});
            let note = if amount == 0 {
                price["price"] = json!(0);
                "Free.".to_owned()
            } else if let Model::Credits { .. } = plan.model {
                price["price"] = json!(amount);
                format!("Costs {formatted} credits per call.")
            } else {
                price["price"] = json!(formatted);
                let tiered = plan.is_tiered(&name);
                if tiered {
                    price["tiered"] = json!(true);
                }
                format!(
                    "Costs {formatted} {} per call{}.",
                    unit.to_ascii_uppercase(),
                    if tiered { " (first tier)" } else { "" }
                )
            };
            (price, note)
        }
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
