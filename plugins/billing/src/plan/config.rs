//! The `[billing]` section and the `[[plans]]` tables as written in TOML.
//! Plain data: checking and compiling happen in [`super::Catalog::compile`],
//! which lists every problem with its key path.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::money::PriceText;

/// `[billing]`: settings shared by all plans.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// Methods that are charged besides `tools/call` (which always is):
    /// `resources/read`, `prompts/get`.
    #[serde(default)]
    pub metered_methods: Vec<String>,
    /// The plan of customers that have none (`None`: such customers are
    /// refused on metered calls).
    pub default_plan: Option<String>,
    /// How refusals reach the client unless a plan says otherwise.
    #[serde(default)]
    pub refusal: RefusalStyle,
    /// The JSON-RPC error code of billing refusals (default -32030).
    pub refusal_code: Option<i64>,
    /// In `tools/list`, leave out tools the caller's plan cannot call
    /// (`true`, the default) or list them marked as unavailable.
    pub hide_unavailable_tools: Option<bool>,
    /// In `tools/list`, append the price to each tool's description (a
    /// price is always in the tool's `_meta`). Default `false`.
    #[serde(default)]
    pub price_in_description: bool,
    /// After how many seconds a reservation still held is taken to be
    /// abandoned (its process was killed mid-call) and refunded by the
    /// recovery sweep, and a settled call still without a usage record
    /// gets a recovered one. `None`:
    /// [`DEFAULT_ABANDON_RESERVATIONS_AFTER_SECS`].
    /// Must be longer than the longest call (`[server]
    /// request_timeout_secs`): a younger reservation may still be in flight,
    /// on this instance or another one on the same database.
    pub abandon_reservations_after_secs: Option<u64>,
    /// The name of a tool the proxy adds to `tools/list` for authenticated
    /// callers and answers itself (never forwarded, never charged): the
    /// caller's plan, balance, quota and period. `None` (the default): no
    /// such tool. An upstream tool of the same name always wins: the proxy
    /// then adds nothing and forwards its calls.
    pub status_tool: Option<String>,
}

/// The default of `[billing] abandon_reservations_after_secs` (15 minutes).
pub const DEFAULT_ABANDON_RESERVATIONS_AFTER_SECS: u64 = 900;

impl BillingConfig {
    /// `abandon_reservations_after_secs`, or its default.
    pub fn abandon_reservations_after_secs(&self) -> u64 {
        self.abandon_reservations_after_secs
            .unwrap_or(DEFAULT_ABANDON_RESERVATIONS_AFTER_SECS)
    }
}

/// How a refusal reaches the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalStyle {
    /// A JSON-RPC error whose `data` carries the facts.
    #[default]
    Error,
    /// For `tools/call`, a tool result with `isError: true` whose text
    /// carries the facts (for clients that hide JSON-RPC error data); other
    /// methods still get the JSON-RPC error.
    ToolResult,
}

/// One `[[plans]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// The plan's id, as stored on customers (`plan_id`).
    pub id: String,
    /// A display name.
    pub name: Option<String>,
    /// The billing model: `per_call`, `subscription`, `usage`, `freemium`
    /// or `credits`.
    pub model: String,
    /// For priced models, the ISO 4217 currency code (`usd`, `eur`).
    pub currency: Option<String>,
    /// Where a refused customer can pay or upgrade (shown in refusals).
    pub upgrade_url: Option<String>,
    /// Overrides `[billing] refusal` for this plan.
    pub refusal: Option<RefusalStyle>,
    /// Overrides `[billing] refusal_code` for this plan.
    pub refusal_code: Option<i64>,
    /// Tool prices.
    #[serde(default)]
    pub prices: PricesConfig,
    /// `model = "credits"`: prepaid credits.
    pub credits: Option<CreditsConfig>,
    /// `model = "per_call"`: charges per call, with tiers.
    pub per_call: Option<PerCallConfig>,
    /// `model = "subscription"`: included calls, then overage or a cap.
    pub subscription: Option<SubscriptionConfig>,
    /// `model = "usage"`: units reported to the payment provider's meter.
    pub usage: Option<UsageConfig>,
    /// `model = "freemium"`: a free quota per window.
    pub freemium: Option<FreemiumConfig>,
}

/// `[plans.prices]`: what each tool costs on the plan.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    /// The price of a call to any tool not listed below (and of metered
    /// methods other than `tools/call`).
    pub default: Option<PriceText>,
    /// Prices of particular tools: exact names or patterns ending in `*`.
    /// The longest matching pattern wins.
    #[serde(default)]
    pub tools: BTreeMap<String, PriceText>,
    /// Tools that cost nothing (names or patterns).
    #[serde(default)]
    pub free: Vec<String>,
    /// Tools the plan may not call at all (names or patterns).
    #[serde(default)]
    pub not_included: Vec<String>,
}

/// `[plans.credits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsConfig {
    /// Which failures give the reserved credits back. Any of `error` (a
    /// JSON-RPC error from the server), `tool_error` (a result with
    /// `isError: true`), `timeout`, `cancelled` (the client went away or
    /// cancelled), `upstream_failure` (the server crashed or could not be
    /// reached). Default: all of them.
    pub refund_on: Option<Vec<String>>,
    /// Balances at which the result's `_meta` carries a low-balance
    /// warning, e.g. `[100, 10]`.
    #[serde(default)]
    pub low_balance_warnings: Vec<i64>,
    /// Credits the plan gives each customer every period (applied at the
    /// customer's first billed call of the period).
    pub grant: Option<i64>,
    /// The period of `grant`: `month` (the default), `day` or `hour`, UTC.
    pub grant_period: Option<String>,
    /// What happens to unused credits when the next grant comes: `reset`
    /// (they expire; the default) or `rollover` (they carry over).
    pub grant_mode: Option<String>,
    /// With `rollover`, the most credits carried into a new period.
    pub rollover_cap: Option<i64>,
    /// What a call counts, when prices are per unit rather than per call:
    /// `calls` (the default), `request_bytes`, `response_bytes`,
    /// `duration_ms`, or `meta` (a number under the result's `_meta`
    /// key `meta_key`).
    pub meter: Option<String>,
    /// With `meter = "meta"`: the result's `_meta` key.
    pub meta_key: Option<String>,
    /// With a meter other than `calls`: the most units one call is charged
    /// for; their price is reserved before the call and the actual units
    /// are settled after it.
    pub max_units: Option<i64>,
    /// With a meter other than `calls`: a price is per this many units
    /// (rounded up; default 1).
    pub unit_size: Option<i64>,
}

/// `[plans.subscription]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The recurring fee per period (collected by the payment provider;
    /// shown in `plans show` and the API).
    pub fee: Option<PriceText>,
    /// Calls included in each period (a plan that counts calls).
    pub included_calls: Option<i64>,
    /// With a `meter` other than `calls`: the units included in each
    /// period (a whole number of `unit_size` blocks).
    pub included_units: Option<i64>,
    /// Beyond the included calls: `refuse` (a hard cap; the default) or
    /// `overage` (each further call charged at its price in
    /// `[plans.prices]`).
    pub beyond_included: Option<String>,
    /// The billing period: `month` (calendar, UTC; the default), `day`, or
    /// `subscription` (monthly from the day the subscription started, or
    /// the payment provider's current period).
    pub period: Option<String>,
    /// How long a `past_due` subscription is still served, in hours
    /// (default 72; 0 refuses at once).
    pub grace_period_hours: Option<i64>,
    /// What a call counts: `calls` (the default), `request_bytes`,
    /// `response_bytes`, `duration_ms`, or `meta` (a number under the
    /// result's `_meta` key `meta_key`). With a meter other than calls the
    /// plan includes `included_units` and charges overage per `unit_size`
    /// units.
    pub meter: Option<String>,
    /// With `meter = "meta"`: the result's `_meta` key.
    pub meta_key: Option<String>,
    /// With a meter other than `calls`: prices are per this many units, and
    /// each call's units are rounded up to whole blocks (default 1).
    pub unit_size: Option<i64>,
}

/// `[plans.usage]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// The payment provider's meter (its event name).
    pub event_name: Option<String>,
    /// What a call counts: `calls` (the default), `request_bytes`,
    /// `response_bytes`, `duration_ms`, or `meta` (a number the server
    /// puts in the result's `_meta`, under `meta_key`).
    pub meter: Option<String>,
    /// With `meter = "meta"`: the result's `_meta` key.
    pub meta_key: Option<String>,
}

/// `[plans.freemium]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreemiumConfig {
    /// Free calls per window (to tools without a quota of their own).
    pub free_calls: Option<i64>,
    /// The window: `hour`, `day` (the default) or `month`, UTC.
    pub window: Option<String>,
    /// Tools (names or patterns ending in `*`) with a free quota of their
    /// own; their calls do not count against `free_calls`.
    #[serde(default)]
    pub tool_quotas: BTreeMap<String, i64>,
    /// Beyond the free quota, charge calls on this plan (a `credits` or
    /// `per_call` plan) instead of refusing them.
    pub then_plan: Option<String>,
    /// Percentages of a quota at which the result's `_meta` carries a
    /// warning (default `[80, 90, 100]`).
    pub warn_at_percent: Option<Vec<i64>>,
}

/// `[plans.per_call]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerCallConfig {
    /// How tiers price calls: `volume` (all of the period's calls at the
    /// price of the tier reached) or `graduated` (each call at its own
    /// tier's price).
    pub tiering: Option<String>,
    /// Tiers over the period's call count, replacing `prices.default`.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// The billing period: `month` (calendar month, UTC; the default) or
    /// `day` (UTC).
    pub period: Option<String>,
    /// The least a customer pays for a period with any calls.
    pub minimum: Option<PriceText>,
    /// What a call counts: `calls` (the default), `request_bytes`,
    /// `response_bytes`, `duration_ms`, or `meta` (a number under the
    /// result's `_meta` key `meta_key`). With a meter other than calls,
    /// prices are per `unit_size` units and tiers' `up_to` count units.
    pub meter: Option<String>,
    /// With `meter = "meta"`: the result's `_meta` key.
    pub meta_key: Option<String>,
    /// With a meter other than `calls`: prices are per this many units, and
    /// each call's units are rounded up to whole blocks (default 1).
    pub unit_size: Option<i64>,
}

/// One `[[plans.per_call.tiers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The last call number of the period in this tier (with a meter, the
    /// last unit: a whole number of `unit_size` blocks); leave it out on
    /// the last tier.
    pub up_to: Option<i64>,
    /// The price per call in this tier.
    pub price: PriceText,
}
