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
                let tiered = matches!(plan.model, Model::PerCall { .. })
                    && plan.price_of(Some(&name)) != crate::plan::ToolPrice::Fixed(amount);
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
