//! `[stripe]`: the API key and where the API is, the webhook endpoint's
//! signing secrets and tolerance, how Stripe's prices map to mcp-meter's
//! plans and credit packs, and where Checkout sends a customer.
//!
//! ```toml
//! [stripe]
//! secret_key = "${STRIPE_SECRET_KEY}"              # outbound calls
//! webhook_secrets = ["${STRIPE_WEBHOOK_SECRET}"]   # several during rotation
//! webhook_tolerance_secs = 300
//! public_url = "https://tools.example.com"         # for /pay/<token> links
//! success_url = "https://example.com/thanks"
//! cancel_url = "https://example.com/pricing"
//! plan_after_cancel = "free"
//! [stripe.checkout_on_refusal]
//! starter = "pack:pack-1000"
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
    /// The secret API key (`sk_…`, or a restricted `rk_…` key with write
    /// access to customers, Checkout Sessions, meter events and invoice
    /// items). Without it nothing is sent to Stripe: meter events wait in
    /// the outbox and checkout links are not offered.
    pub secret_key: Option<String>,
    /// Where Stripe's API is (tests point it at a local fake).
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// How long one request to Stripe may take, in seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Attempts at sending a batch of meter events before it is parked
    /// (backoff between them: 1 s, 2 s, 4 s, … at most 10 min).
    #[serde(default = "default_max_attempts")]
    pub meter_max_attempts: u32,
    /// How long after a per-call plan's period ends its invoice items are
    /// made, in seconds (calls running at the boundary settle meanwhile).
    #[serde(default = "default_invoice_delay_secs")]
    pub invoice_delay_secs: u64,
    /// Where Checkout sends a customer after paying.
    pub success_url: Option<String>,
    /// Where Checkout sends a customer who goes back without paying.
    pub cancel_url: Option<String>,
    /// The address customers reach this proxy at (`https://…`): payment
    /// links in refusals are `{public_url}/pay/<token>`.
    pub public_url: Option<String>,
    /// How long a payment link in a refusal stays valid, in seconds.
    #[serde(default = "default_pay_link_ttl_secs")]
    pub pay_link_ttl_secs: u64,
    /// The key payment links are signed with. Default: derived from
    /// `secret_key`, so rotating the API key also retires old links.
    pub pay_link_secret: Option<String>,
    /// Plan id → what a refused customer of that plan is offered:
    /// `"pack:<credit pack id>"` or `"plan:<subscription plan id>"`.
    #[serde(default)]
    pub checkout_on_refusal: BTreeMap<String, String>,
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
            .field("secret_key", &self.secret_key.as_ref().map(|_| "[hidden]"))
            .field("api_base", &self.api_base)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("meter_max_attempts", &self.meter_max_attempts)
            .field("invoice_delay_secs", &self.invoice_delay_secs)
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .field("public_url", &self.public_url)
            .field("pay_link_ttl_secs", &self.pay_link_ttl_secs)
            .field(
                "pay_link_secret",
                &self.pay_link_secret.as_ref().map(|_| "[hidden]"),
            )
            .field("checkout_on_refusal", &self.checkout_on_refusal)
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

/// Stripe's API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";

/// The default time one request to Stripe may take, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// The default lifetime of a payment link, in seconds (a day).
pub const DEFAULT_PAY_LINK_TTL_SECS: u64 = 86_400;

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_request_timeout_secs() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}

/// The default delay between a period's end and its invoice items.
pub const DEFAULT_INVOICE_DELAY_SECS: u64 = 600;

fn default_invoice_delay_secs() -> u64 {
    DEFAULT_INVOICE_DELAY_SECS
}

fn default_pay_link_ttl_secs() -> u64 {
    DEFAULT_PAY_LINK_TTL_SECS
}

/// What a customer can buy through Checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutItem {
    /// A credit pack (one-time payment), by id.
    Pack(String),
    /// A subscription plan (a subscription to its Stripe price), by id.
    Plan(String),
}

impl CheckoutItem {
    /// Reads `pack:<id>` or `plan:<id>`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once(':')? {
            ("pack", id) if !id.is_empty() => Some(CheckoutItem::Pack(id.to_owned())),
            ("plan", id) if !id.is_empty() => Some(CheckoutItem::Plan(id.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for CheckoutItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckoutItem::Pack(id) => write!(f, "pack:{id}"),
            CheckoutItem::Plan(id) => write!(f, "plan:{id}"),
        }
    }
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

    /// What a customer can buy through Checkout for `item`: the Stripe
    /// price and the Checkout mode (`true` for a subscription). An error
    /// says why it cannot be sold.
    pub fn price_of(&self, item: &CheckoutItem) -> Result<(&str, bool), String> {
        match item {
            CheckoutItem::Pack(id) => self
                .pack(id)
                .map(|pack| (pack.price_id.as_str(), false))
                .ok_or_else(|| {
                    format!("there is no credit pack `{id}` in [[stripe.credit_packs]]")
                }),
            CheckoutItem::Plan(id) => self
                .plan_prices
                .get(id)
                .map(|price| (price.as_str(), true))
                .ok_or_else(|| format!("plan `{id}` has no Stripe price in [stripe.plan_prices]")),
        }
    }

    /// What a refused customer of `plan` is offered, if anything.
    pub fn refusal_offer(&self, plan: &str) -> Option<CheckoutItem> {
        self.checkout_on_refusal
            .get(plan)
            .and_then(|text| CheckoutItem::parse(text))
    }

    /// Whether outbound calls are configured (`secret_key`).
    pub fn can_call(&self) -> bool {
        self.secret_key.is_some()
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
    outbound_problems(stripe, &|id| model_of(id).is_some(), &mut problem);
    found
}

/// What is wrong with the outbound settings: the key, the URLs, the
/// refusal offers.
fn outbound_problems(
    stripe: &StripeConfig,
    has_plan: &dyn Fn(&str) -> bool,
    problem: &mut dyn FnMut(String, String),
) {
    if let Some(key) = &stripe.secret_key
        && !(key.starts_with("sk_") || key.starts_with("rk_"))
    {
        let what = if key.starts_with("pk_") {
            "a publishable key (pk_…); use the secret key (sk_…)"
        } else {
            "not a secret API key: it must start with `sk_` (or `rk_` for a restricted key)"
        };
        problem("stripe.secret_key".into(), format!("is {what}"));
    }
    let url_problem = |value: &str| -> Option<String> {
        let ok = (value.starts_with("https://") || value.starts_with("http://"))
            && !value.chars().any(char::is_whitespace);
        (!ok).then(|| format!("`{value}` must be an http:// or https:// URL"))
    };
    for (key, value) in [
        ("api_base", Some(&stripe.api_base)),
        ("success_url", stripe.success_url.as_ref()),
        ("cancel_url", stripe.cancel_url.as_ref()),
        ("public_url", stripe.public_url.as_ref()),
    ] {
        if let Some(message) = value.and_then(|v| url_problem(v)) {
            problem(format!("stripe.{key}"), message);
        }
    }
    if stripe.request_timeout_secs == 0 {
        problem(
            "stripe.request_timeout_secs".into(),
            "must be greater than 0".into(),
        );
    }
    if stripe.meter_max_attempts == 0 {
        problem(
            "stripe.meter_max_attempts".into(),
            "must be at least 1".into(),
        );
    }
    if stripe.pay_link_ttl_secs == 0 {
        problem(
            "stripe.pay_link_ttl_secs".into(),
            "must be greater than 0".into(),
        );
    }
    let sells = !stripe.credit_packs.is_empty() || !stripe.plan_prices.is_empty();
    if stripe.secret_key.is_some() && sells && stripe.success_url.is_none() {
        problem(
            "stripe.success_url".into(),
            "Checkout needs a page to send a customer to after paying              (e.g. success_url = \"https://example.com/thanks\")"
                .into(),
        );
    }
    for (plan, offer) in &stripe.checkout_on_refusal {
        let path = format!("stripe.checkout_on_refusal.{plan}");
        if !has_plan(plan) {
            problem(
                path.clone(),
                format!("there is no plan `{plan}` in [[plans]]"),
            );
        }
        match CheckoutItem::parse(offer) {
            None => problem(
                path,
                format!("`{offer}` must be `pack:<credit pack id>` or `plan:<plan id>`"),
            ),
            Some(item) => {
                if let Err(message) = stripe.price_of(&item) {
                    problem(path, message);
                } else if stripe.secret_key.is_none() || stripe.public_url.is_none() {
                    problem(
                        path,
                        "payment links need `secret_key` and `public_url` in [stripe]".into(),
                    );
                }
            }
        }
    }
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

    #[test]
    fn outbound_settings_are_checked() {
        let good = config(
            "webhook_secrets = [\"whsec_a\"]\nsecret_key = \"sk_test_1\"\n\
             success_url = \"https://example.com/ok\"\npublic_url = \"https://tools.example.com\"\n\
             plan_prices = { team = \"price_t\" }\n\
             credit_packs = [{ id = \"p\", credits = 10, price_id = \"price_p\" }]\n\
             checkout_on_refusal = { starter = \"pack:p\", team = \"plan:team\" }\n",
        );
        assert!(
            problems(&good, PLANS, true).is_empty(),
            "{:?}",
            problems(&good, PLANS, true)
        );
        assert_eq!(good.api_base, DEFAULT_API_BASE);
        assert_eq!(
            good.refusal_offer("starter"),
            Some(CheckoutItem::Pack("p".into()))
        );
        assert_eq!(
            good.refusal_offer("team"),
            Some(CheckoutItem::Plan("team".into()))
        );
        assert_eq!(good.refusal_offer("free"), None);
        assert_eq!(
            good.price_of(&CheckoutItem::Plan("team".into())),
            Ok(("price_t", true))
        );
        assert_eq!(
            good.price_of(&CheckoutItem::Pack("p".into())),
            Ok(("price_p", false))
        );
        assert!(good.price_of(&CheckoutItem::Pack("x".into())).is_err());
        let shown = format!("{good:?}");
        assert!(
            !shown.contains("sk_test_1") && !shown.contains("whsec_a"),
            "{shown}"
        );

        let bad = config(
            "webhook_secrets = [\"whsec_a\"]\nsecret_key = \"pk_live_1\"\n\
             api_base = \"ftp://x\"\nrequest_timeout_secs = 0\nmeter_max_attempts = 0\n\
             pay_link_ttl_secs = 0\ncancel_url = \"not a url\"\n\
             plan_prices = { team = \"price_t\" }\n\
             checkout_on_refusal = { starter = \"pack:nope\", team = \"coupon:x\", gone = \"plan:team\" }\n",
        );
        let found = problems(&bad, PLANS, true);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "stripe.secret_key",
                "stripe.api_base",
                "stripe.cancel_url",
                "stripe.request_timeout_secs",
                "stripe.meter_max_attempts",
                "stripe.pay_link_ttl_secs",
                "stripe.success_url",
                "stripe.checkout_on_refusal.gone",
                "stripe.checkout_on_refusal.gone",
                "stripe.checkout_on_refusal.starter",
                "stripe.checkout_on_refusal.team",
            ],
            "{found:?}"
        );
        assert!(found[0].1.contains("publishable key"), "{found:?}");
        // Offers need a way to make links.
        let no_links = config(
            "webhook_secrets = [\"whsec_a\"]\ncredit_packs = [{ id = \"p\", credits = 1, price_id = \"price_p\" }]\n\
             checkout_on_refusal = { starter = \"pack:p\" }\n",
        );
        let found = problems(&no_links, PLANS, true);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains("public_url"), "{found:?}");
    }

    #[test]
    fn checkout_items_read_and_print() {
        for text in ["pack:pack-1000", "plan:team"] {
            let item = CheckoutItem::parse(text).expect("parses");
            assert_eq!(item.to_string(), text);
        }
        for bad in ["pack:", "plan", "coupon:x", ""] {
            assert_eq!(CheckoutItem::parse(bad), None, "{bad}");
        }
    }
}
