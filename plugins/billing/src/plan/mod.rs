//! Plans: the TOML tables checked and compiled into what the billing layer
//! asks on every call ("what does this tool cost this customer?").
//!
//! [`Catalog::compile`] never stops at the first problem: it returns every
//! problem, each prefixed with its key path (`plans.pro.prices.default: …`),
//! so `mcp-meter check` can list them all.

pub mod config;
mod models;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use mcp_meter_plugin::identity::{CustomerId, glob};
use mcp_meter_plugin::ledger::PriceSchedule;

pub use config::{BillingConfig, PlanConfig, RefusalStyle};
pub use models::{
    CreditGrant, CreditMetering, DEFAULT_GRACE_HOURS, DEFAULT_WARN_AT_PERCENT, FreemiumRules,
    Meter, Model, SubscriptionRules, UnitMetering, UsageRules,
};

use crate::money::{PriceText, Unit};

/// The JSON-RPC error code of billing refusals unless configured.
pub const DEFAULT_REFUSAL_CODE: i64 = -32030;

/// Methods that may be metered besides `tools/call`.
const METERABLE_METHODS: [&str; 3] = ["tools/call", "resources/read", "prompts/get"];

/// The models whose amounts are in a currency.
const PRICED_MODELS: [&str; 2] = ["per_call", "subscription"];
/// The models that count calls and may name a currency for display.
const COUNTING_MODELS: [&str; 2] = ["usage", "freemium"];

/// The failures a credits plan may refund.
pub const FAILURE_KINDS: [&str; 5] = [
    "error",
    "tool_error",
    "timeout",
    "cancelled",
    "upstream_failure",
];

/// What a call to one tool costs on a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPrice {
    /// The plan may not call it.
    NotIncluded,
    /// Free.
    Free,
    /// A fixed amount per call (in the plan's unit).
    Fixed(i64),
    /// The plan's default price: for per-call plans with tiers, the
    /// schedule decides; otherwise this amount.
    Default(i64),
}

/// Makes checkout links for refused customers (the payment provider's
/// side: mcp-meter's Stripe module signs a `/pay/<token>` link).
pub trait CheckoutOffers: Send + Sync + 'static {
    /// A link where `customer`, refused on `plan`, can pay or upgrade;
    /// `None` when nothing is offered for that plan. Must not do I/O:
    /// refusals are on the hot path.
    fn checkout_url(&self, customer: &CustomerId, plan: &str) -> Option<String>;
}

/// A plan's [`CheckoutOffers`] (compared by identity).
#[derive(Clone)]
pub struct CheckoutHook(pub Arc<dyn CheckoutOffers>);

impl std::fmt::Debug for CheckoutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckoutHook")
    }
}

impl PartialEq for CheckoutHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CheckoutHook {}

/// A checked plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The id customers carry.
    pub id: String,
    /// Display name (the id when none was given).
    pub name: String,
    /// What amounts count.
    pub unit: Unit,
    /// How it charges.
    pub model: Model,
    /// Where to pay or upgrade.
    pub upgrade_url: Option<String>,
    /// Makes a per-customer checkout link for refusals, when the payment
    /// provider offers one for this plan.
    pub checkout: Option<CheckoutHook>,
    /// How refusals are signalled.
    pub refusal: RefusalStyle,
    /// The JSON-RPC code of refusals.
    pub refusal_code: i64,
    default_price: Option<i64>,
    /// Exact names and `*` patterns with their prices, longest first.
    tool_prices: Vec<(String, i64)>,
    free: Vec<String>,
    not_included: Vec<String>,
}

impl Plan {
    /// What a call to `tool` costs (`None` for a metered method that is not
    /// a tool call, which costs the default price).
    pub fn price_of(&self, tool: Option<&str>) -> ToolPrice {
        let Some(tool) = tool else {
            return ToolPrice::Default(self.default_price.unwrap_or(0));
        };
        if self.not_included.iter().any(|p| glob(p, tool)) {
            return ToolPrice::NotIncluded;
        }
        if self.free.iter().any(|p| glob(p, tool)) {
            return ToolPrice::Free;
        }
        if let Some((_, price)) = self.tool_prices.iter().find(|(p, _)| glob(p, tool)) {
            return if *price == 0 {
                ToolPrice::Free
            } else {
                ToolPrice::Fixed(*price)
            };
        }
        ToolPrice::Default(self.default_price.unwrap_or(0))
    }

    /// Whether a call to `tool` is priced by its number in the period
    /// (volume or graduated tiers) rather than by one fixed price.
    pub fn is_tiered(&self, tool: &str) -> bool {
        matches!(self.price_of(Some(tool)), ToolPrice::Default(_))
            && matches!(
                &self.model,
                Model::PerCall {
                    schedule: PriceSchedule::Volume { .. } | PriceSchedule::Graduated { .. },
                    ..
                }
            )
    }

    /// What one price of the plan is for: `call`, or with a meter the
    /// block of units (`1000 bytes`, `ms`).
    pub fn price_per(&self) -> String {
        let metering = match &self.model {
            Model::PerCall { metering, .. } => metering.clone(),
            Model::Subscription(rules) => rules.metering.clone(),
            Model::Credits {
                metering: Some(credits),
                ..
            } => Some(UnitMetering {
                meter: credits.meter.clone(),
                unit_size: credits.unit_size,
            }),
            _ => None,
        };
        metering.map_or_else(|| "call".to_owned(), |m| m.per())
    }

    /// The price a customer sees for `tool` in `tools/list`: for per-call
    /// plans with tiers, the first tier's price; for subscriptions, the
    /// overage price (`None`: the plan cannot call it).
    pub fn list_price(&self, tool: &str) -> Option<i64> {
        match self.price_of(Some(tool)) {
            ToolPrice::NotIncluded => None,
            ToolPrice::Free => Some(0),
            ToolPrice::Fixed(price) => Some(price),
            ToolPrice::Default(price) => Some(match &self.model {
                Model::PerCall { schedule, .. } => schedule.charge_for_call(1),
                _ => price,
            }),
        }
    }
}

/// All plans and the shared billing settings, checked.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    plans: HashMap<String, Arc<Plan>>,
    order: Vec<String>,
    default_plan: Option<String>,
    metered_methods: HashSet<String>,
    /// Hide tools a plan cannot call from `tools/list`.
    pub hide_unavailable_tools: bool,
    /// Append prices to tool descriptions.
    pub price_in_description: bool,
    /// The tool the proxy answers with the caller's billing status
    /// (`[billing] status_tool`), if any.
    pub status_tool: Option<String>,
}

impl Catalog {
    /// Lets every plan's refusals carry a checkout link made by `offers`.
    pub fn set_checkout_offers(&mut self, offers: Arc<dyn CheckoutOffers>) {
        for plan in self.plans.values_mut() {
            Arc::make_mut(plan).checkout = Some(CheckoutHook(offers.clone()));
        }
    }

    /// Checks and compiles the plans; every problem is returned, each with
    /// its key path.
    pub fn compile(billing: &BillingConfig, plans: &[PlanConfig]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut catalog = Catalog {
            hide_unavailable_tools: billing.hide_unavailable_tools.unwrap_or(true),
            price_in_description: billing.price_in_description,
            default_plan: billing.default_plan.clone(),
            status_tool: billing.status_tool.clone(),
            ..Catalog::default()
        };
        if let Some(name) = &billing.status_tool
            && let Err(why) = check_tool_name(name)
        {
            problems.push(format!("billing.status_tool: {why}"));
        }
        catalog.metered_methods.insert("tools/call".to_owned());
        for method in &billing.metered_methods {
            if METERABLE_METHODS.contains(&method.as_str()) {
                catalog.metered_methods.insert(method.clone());
            } else {
                problems.push(format!(
                    "billing.metered_methods: `{method}` cannot be metered; use any of {}",
                    METERABLE_METHODS.join(", ")
                ));
            }
        }
        let mut seen = HashSet::new();
        for (index, plan) in plans.iter().enumerate() {
            let path = if plan.id.trim().is_empty() {
                format!("plans[{index}]")
            } else {
                format!("plans.{}", plan.id)
            };
            if plan.id.trim().is_empty() {
                problems.push(format!("{path}.id: a plan needs a non-empty id"));
                continue;
            }
            if !seen.insert(plan.id.as_str()) {
                problems.push(format!("{path}.id: plan `{}` is defined twice", plan.id));
                continue;
            }
            if let Some(compiled) = compile_plan(plan, billing, &path, &mut problems) {
                catalog.order.push(plan.id.clone());
                catalog.plans.insert(plan.id.clone(), Arc::new(compiled));
            }
        }
        check_then_plans(&catalog, &mut problems);
        if let Some(default) = &billing.default_plan
            && !plans.iter().any(|p| &p.id == default)
        {
            problems.push(format!(
                "billing.default_plan: there is no plan `{default}` in [[plans]]"
            ));
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    /// Whether there are any plans (billing is on).
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The plan with this id.
    pub fn plan(&self, id: &str) -> Option<&Arc<Plan>> {
        self.plans.get(id)
    }

    /// The plan a customer is on: theirs, or the default plan when they
    /// have none. `Err` carries the plan id that is not configured.
    pub fn plan_for(&self, plan_id: Option<&str>) -> Result<Option<&Arc<Plan>>, String> {
        match plan_id.or(self.default_plan.as_deref()) {
            None => Ok(None),
            Some(id) => self.plans.get(id).map(Some).ok_or_else(|| id.to_owned()),
        }
    }

    /// Plans in configuration order.
    pub fn plans(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.order.iter().filter_map(|id| self.plans.get(id))
    }

    /// Whether calls of `method` are charged.
    pub fn is_metered(&self, method: &str) -> bool {
        self.metered_methods.contains(method)
    }
}

fn compile_plan(
    plan: &PlanConfig,
    billing: &BillingConfig,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Plan> {
    let before = problems.len();
    let unit = match (plan.model.as_str(), &plan.currency) {
        ("credits", None) => Unit::Credits,
        ("credits", Some(_)) => {
            problems.push(format!(
                "{path}.currency: a credits plan counts whole credits; remove `currency`"
            ));
            Unit::Credits
        }
        (model, None) if COUNTING_MODELS.contains(&model) => Unit::Calls,
        // An unknown model is reported once, under `model`.
        (model, _) if !PRICED_MODELS.contains(&model) && !COUNTING_MODELS.contains(&model) => {
            Unit::Credits
        }
        (_, Some(code)) if is_currency_code(code) => Unit::Currency(code.to_ascii_lowercase()),
        (_, Some(code)) => {
            problems.push(format!(
                "{path}.currency: `{code}` is not a three-letter ISO 4217 code (e.g. \"usd\")"
            ));
            Unit::Currency(String::new())
        }
        (_, None) => {
            problems.push(format!(
                "{path}.currency: a `{}` plan needs a currency (e.g. currency = \"usd\")",
                plan.model
            ));
            Unit::Currency(String::new())
        }
    };
    let amount =
        |text: &PriceText, key: &str, problems: &mut Vec<String>| match text.to_amount(&unit) {
            Ok(amount) => Some(amount),
            Err(error) => {
                problems.push(format!("{path}.{key}: {error}"));
                None
            }
        };
    let prices = &plan.prices;
    let default_price = prices
        .default
        .as_ref()
        .and_then(|p| amount(p, "prices.default", problems));
    let mut tool_prices = Vec::new();
    for (pattern, price) in &prices.tools {
        check_pattern(pattern, &format!("{path}.prices.tools"), problems);
        if let Some(value) = amount(price, &format!("prices.tools.\"{pattern}\""), problems) {
            tool_prices.push((pattern.clone(), value));
        }
    }
    // Exact names before patterns, longer patterns before shorter ones.
    tool_prices.sort_by(|(a, _), (b, _)| {
        a.ends_with('*')
            .cmp(&b.ends_with('*'))
            .then(b.len().cmp(&a.len()))
    });
    for (key, list) in [
        ("free", &prices.free),
        ("not_included", &prices.not_included),
    ] {
        for pattern in list {
            check_pattern(pattern, &format!("{path}.prices.{key}"), problems);
        }
    }
    let has_price = default_price.is_some() || !tool_prices.is_empty();
    for (set, table, model) in [
        (plan.credits.is_some(), "credits", "credits"),
        (plan.per_call.is_some(), "per_call", "per_call"),
        (plan.subscription.is_some(), "subscription", "subscription"),
        (plan.usage.is_some(), "usage", "usage"),
        (plan.freemium.is_some(), "freemium", "freemium"),
    ] {
        if set && plan.model != model {
            problems.push(format!(
                "{path}.{table}: only a {model} plan takes [plans.{table}]"
            ));
        }
    }
    let model = match plan.model.as_str() {
        "credits" => {
            if !has_price {
                problems.push(format!(
                    "{path}.prices.default: a credits plan needs a price (the credits a call costs)"
                ));
            }
            models::compile_credits(plan.credits.clone().unwrap_or_default(), path, problems)
        }
        "per_call" => models::compile_per_call(
            plan.per_call.clone().unwrap_or_default(),
            default_price,
            !tool_prices.is_empty(),
            &unit,
            path,
            problems,
        ),
        "subscription" => models::compile_subscription(
            plan.subscription.as_ref(),
            has_price,
            &unit,
            path,
            problems,
        ),
        "usage" => models::compile_usage(plan.usage.as_ref(), has_price, path, problems),
        "freemium" => models::compile_freemium(plan.freemium.as_ref(), has_price, path, problems),
        other => {
            problems.push(format!(
                "{path}.model: unknown billing model `{other}`; use `per_call`, \
                 `subscription`, `usage`, `freemium` or `credits`"
            ));
            None
        }
    };
    if let Some(url) = &plan.upgrade_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(format!(
            "{path}.upgrade_url: `{url}` must be an http:// or https:// URL"
        ));
    }
    let model = model?;
    if problems.len() > before {
        return None;
    }
    Some(Plan {
        id: plan.id.clone(),
        name: plan.name.clone().unwrap_or_else(|| plan.id.clone()),
        unit,
        model,
        upgrade_url: plan.upgrade_url.clone(),
        checkout: None,
        refusal: plan.refusal.unwrap_or(billing.refusal),
        refusal_code: plan
            .refusal_code
            .or(billing.refusal_code)
            .unwrap_or(DEFAULT_REFUSAL_CODE),
        default_price,
        tool_prices,
        free: prices.free.clone(),
        not_included: prices.not_included.clone(),
    })
}

/// A freemium plan's `then_plan` must be a plan that charges each call.
fn check_then_plans(catalog: &Catalog, problems: &mut Vec<String>) {
    for plan in catalog.plans() {
        let Model::Freemium(rules) = &plan.model else {
            continue;
        };
        let Some(then) = &rules.then_plan else {
            continue;
        };
        let key = format!("plans.{}.freemium.then_plan", plan.id);
        match catalog.plan(then).map(|p| &p.model) {
            Some(Model::Credits { .. } | Model::PerCall { .. }) => {}
            Some(other) => problems.push(format!(
                "{key}: `{then}` is a {} plan; calls beyond the free quota can only fall \
                 through to a `credits` or `per_call` plan",
                other.name()
            )),
            None => problems.push(format!("{key}: there is no plan `{then}` in [[plans]]")),
        }
    }
}

pub(crate) fn check_pattern(pattern: &str, key: &str, problems: &mut Vec<String>) {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    if pattern.is_empty() || body.contains('*') {
        problems.push(format!(
            "{key}: `{pattern}` is not a tool name or a pattern ending in `*`"
        ));
    }
}

/// The longest tool name MCP allows.
pub const MAX_TOOL_NAME_CHARS: usize = 128;

/// Checks a tool name against MCP's rules: 1 to 128 characters, each an
/// ASCII letter, a digit, `_`, `-` or `.`.
fn check_tool_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the tool name is empty; use e.g. \"billing_status\"".to_owned());
    }
    if name.len() > MAX_TOOL_NAME_CHARS {
        return Err(format!(
            "the tool name is {} characters long; MCP allows at most {MAX_TOOL_NAME_CHARS}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "`{name}` has the character {bad:?}; a tool name may only use ASCII letters, \
             digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic())
}

/// A plan's prices as a table, for `mcp-meter plans show` and the API:
/// the default and each configured tool price, formatted in the plan's
/// unit.
pub fn price_table(plan: &Plan) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    if let Some(price) = plan.default_price {
        table.insert("(default)".to_owned(), plan.unit.format(price));
    }
    for (pattern, price) in &plan.tool_prices {
        table.insert(pattern.clone(), plan.unit.format(*price));
    }
    for pattern in &plan.free {
        table.insert(pattern.clone(), "free".to_owned());
    }
    for pattern in &plan.not_included {
        table.insert(pattern.clone(), "not included".to_owned());
    }
    table
}

#[cfg(test)]
mod tests;
