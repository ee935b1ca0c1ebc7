//! `[stripe]`: the webhook endpoint's signing secrets and tolerance, and
//! how Stripe's prices map to mcp-meter's plans and credit packs.
//!
//! ```toml
//! [stripe]
//! webhook_secrets = ["${STRIPE_WEBHOOK_SECRET}"]   # several during rotation
//! webhook_tolerance_secs = 300
//! plan_after_cancel = "free"
//! [stripe.plan_prices]
//! team = "price_1PqTeam"
//! [[stripe.credit_packs]]
//! id = "pack-1000"
//! credits = 1000
//! price_id = "price_1PqPack1000"
//! ```
//!
//! [`problems`] lists what the types cannot check (with key paths); the
//! configuration's validation calls it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// The default timestamp tolerance of a webhook signature, in seconds
/// (the value Stripe's own libraries use).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The default number of attempts at processing an event before it is
/// given up on (`failed`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// `[stripe]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// The webhook endpoint's signing secrets (`whsec_…`). A delivery is
    /// accepted when any `v1` signature matches any of them, so an old and
    /// a new secret can both be listed while Stripe rotates them.
    pub webhook_secrets: Vec<String>,
    /// How far a signature's timestamp may be from the clock, either way,
    /// in seconds.
    #[serde(default = "default_tolerance_secs")]
    pub webhook_tolerance_secs: u64,
    /// Attempts at processing an event before it is marked `failed` (with
    /// exponential backoff between them: 1 s, 2 s, 4 s, … at most 10 min).
    #[serde(default = "default_max_attempts")]
    pub webhook_max_attempts: u32,
    /// Plan id → Stripe price id: a subscription to that price puts the
    /// customer on that plan (a `subscription` plan).
    #[serde(default)]
    pub plan_prices: BTreeMap<String, String>,
    /// Credit packs sold through one-time Checkout payments.
    #[serde(default)]
    pub credit_packs: Vec<CreditPack>,
    /// The plan a customer moves to when their subscription is deleted
    /// (ends). Default: `[billing] default_plan`; without either, the
    /// customer stays on the ended subscription's plan and is refused as
    /// having no active subscription.
    pub plan_after_cancel: Option<String>,
}

impl fmt::Debug for StripeConfig {
    /// Everything but the secrets (shown as their count).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field(
                "webhook_secrets",
                &format_args!("[{} hidden]", self.webhook_secrets.len()),
            )
            .field("webhook_tolerance_secs", &self.webhook_tolerance_secs)
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .field("plan_prices", &self.plan_prices)
            .field("credit_packs", &self.credit_packs)
            .field("plan_after_cancel", &self.plan_after_cancel)
            .finish()
    }
}

/// One `[[stripe.credit_packs]]` table: credits sold for a one-time price.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPack {
    /// The pack's id, named by a Checkout Session's
    /// `metadata.mcp_meter_credit_pack`.
    pub id: String,
    /// Whole credits granted when the payment completes (at least 1).
    pub credits: i64,
    /// The Stripe price the pack is sold at.
    pub price_id: String,
}

fn default_tolerance_secs() -> u64 {
    DEFAULT_TOLERANCE_SECS
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl StripeConfig {
    /// The plan a Stripe price puts a subscriber on.
    pub fn plan_for_price(&self, price_id: &str) -> Option<&str> {
        self.plan_prices
            .iter()
            .find(|(_, price)| price.as_str() == price_id)
            .map(|(plan, _)| plan.as_str())
    }

    /// The credit pack with this id.
    pub fn pack(&self, id: &str) -> Option<&CreditPack> {
        self.credit_packs.iter().find(|pack| pack.id == id)
    }

    /// The plan a customer moves to when their subscription ends:
    /// `plan_after_cancel`, else `default_plan` (of `[billing]`).
    pub fn plan_after_cancel<'a>(&'a self, default_plan: Option<&'a str>) -> Option<&'a str> {
        self.plan_after_cancel.as_deref().or(default_plan)
    }
}

/// What is wrong with `[stripe]`, as (key path, message) pairs.
/// `plans` are the `[[plans]]` as (id, model) pairs; `has_database` says
/// whether a `[database]` is configured.
pub fn problems(
    stripe: &StripeConfig,
    plans: &[(&str, &str)],
    has_database: bool,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut problem = |path: String, message: String| found.push((path, message));
    if !has_database {
        problem(
            "stripe".into(),
            "Stripe webhooks need a [database] to store events, customers and subscriptions \
             (e.g. url = \"sqlite://mcp-meter.db\")"
                .into(),
        );
    }
    if stripe.webhook_secrets.is_empty() {
        problem(
            "stripe.webhook_secrets".into(),
            "list at least one webhook signing secret (whsec_…, shown for the endpoint in the \
             Stripe dashboard or printed by `stripe listen`)"
                .into(),
        );
    }
    for (i, secret) in stripe.webhook_secrets.iter().enumerate() {
        let path = format!("stripe.webhook_secrets[{i}]");
        match secret.strip_prefix("whsec_") {
            None => problem(
                path,
                "is not a webhook signing secret: it must start with `whsec_` (an API key \
                 such as sk_… is not one)"
                    .into(),
            ),
            Some("") => problem(path, "has nothing after `whsec_`".into()),
            Some(rest) if rest.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                problem(path, "contains whitespace; copy the secret exactly".into())
            }
            Some(_) => {}
        }
    }
    if stripe.webhook_tolerance_secs == 0 {
        problem(
            "stripe.webhook_tolerance_secs".into(),
            format!("must be greater than 0 (Stripe's libraries use {DEFAULT_TOLERANCE_SECS})"),
        );
    }
    if stripe.webhook_max_attempts == 0 {
        problem(
            "stripe.webhook_max_attempts".into(),
            "must be at least 1".into(),
        );
    }
    let model_of = |id: &str| {
        plans
            .iter()
            .find(|(plan, _)| *plan == id)
            .map(|(_, model)| *model)
    };
    let mut prices_seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (plan, price) in &stripe.plan_prices {
        let path = format!("stripe.plan_prices.{plan}");
        match model_of(plan) {
            None => problem(
                path.clone(),
                format!("there is no plan `{plan}` in [[plans]]"),
            ),
            Some("subscription") => {}
            Some(model) => problem(
                path.clone(),
                format!(
                    "plan `{plan}` is a `{model}` plan; only `subscription` plans are sold as \
                     Stripe subscriptions"
                ),
            ),
        }
        if price.trim().is_empty() || price.chars().any(char::is_whitespace) {
            problem(
                path,
                format!("{price:?} is not a Stripe price id (like price_1Pq…)"),
            );
        } else if let Some(other) = prices_seen.insert(price.as_str(), plan.as_str()) {
            problem(
                path,
                format!(
                    "price {price} is also the price of plan `{other}`; a price maps to one plan"
                ),
            );
        }
    }
    let mut pack_ids: Vec<&str> = Vec::new();
    for (i, pack) in stripe.credit_packs.iter().enumerate() {
        let path = format!("stripe.credit_packs[{i}]");
        if pack.id.trim().is_empty() {
            problem(format!("{path}.id"), "must not be empty".into());
        } else if pack_ids.contains(&pack.id.as_str()) {
            problem(
                format!("{path}.id"),
                format!("pack `{}` is listed twice", pack.id),
            );
        }
        pack_ids.push(pack.id.as_str());
        if pack.credits < 1 {
            problem(
                format!("{path}.credits"),
                format!("must be at least 1, not {}", pack.credits),
            );
        }
        if pack.price_id.trim().is_empty() || pack.price_id.chars().any(char::is_whitespace) {
            problem(
                format!("{path}.price_id"),
                format!(
                    "{:?} is not a Stripe price id (like price_1Pq…)",
                    pack.price_id
                ),
            );
        }
    }
    if let Some(plan) = &stripe.plan_after_cancel
        && model_of(plan).is_none()
    {
        problem(
            "stripe.plan_after_cancel".into(),
            format!("there is no plan `{plan}` in [[plans]]"),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> StripeConfig {
        toml::from_str(text).expect("parses")
    }

    const PLANS: &[(&str, &str)] = &[("team", "subscription"), ("starter", "credits")];

    #[test]
    fn defaults_and_lookups() {
        let c = config(
            "webhook_secrets = [\"whsec_a\"]\nplan_prices = { team = \"price_t\" }\n\
             credit_packs = [{ id = \"p\", credits = 10, price_id = \"price_p\" }]\n",
        );
        assert_eq!(c.webhook_tolerance_secs, 300);
        assert_eq!(c.webhook_max_attempts, 10);
        assert_eq!(c.plan_for_price("price_t"), Some("team"));
        assert_eq!(c.plan_for_price("price_x"), None);
        assert_eq!(c.pack("p").map(|p| p.credits), Some(10));
        assert_eq!(c.plan_after_cancel(Some("free")), Some("free"));
        assert!(problems(&c, PLANS, true).is_empty());
        assert!(!format!("{c:?}").contains("whsec_a"));
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let c = config(
            "webhook_secrets = [\"sk_live_x\", \"whsec_\", \"whsec_a b\"]\n\
             webhook_tolerance_secs = 0\nwebhook_max_attempts = 0\n\
             plan_after_cancel = \"gone\"\n\
             plan_prices = { team = \"price_t\", starter = \"price_t\", nope = \"price_n\" }\n\
             credit_packs = [{ id = \"p\", credits = 0, price_id = \"\" }, \
             { id = \"p\", credits = 5, price_id = \"price_q\" }]\n",
        );
        let found = problems(&c, PLANS, false);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "stripe",
                "stripe.webhook_secrets[0]",
                "stripe.webhook_secrets[1]",
                "stripe.webhook_secrets[2]",
                "stripe.webhook_tolerance_secs",
                "stripe.webhook_max_attempts",
                "stripe.plan_prices.nope",
                "stripe.plan_prices.starter",
                "stripe.plan_prices.team",
                "stripe.credit_packs[0].credits",
                "stripe.credit_packs[0].price_id",
                "stripe.credit_packs[1].id",
                "stripe.plan_after_cancel",
            ],
            "{found:?}"
        );
        let empty = config("webhook_secrets = []\n");
        assert_eq!(problems(&empty, PLANS, true)[0].0, "stripe.webhook_secrets");
    }
}
