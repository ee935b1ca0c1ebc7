//! Compiling each model's table (`[plans.credits]`, `[plans.per_call]`,
//! `[plans.subscription]`, `[plans.usage]`, `[plans.freemium]`) into its
//! [`Model`], every problem reported with its key path.

use std::collections::HashSet;
use std::sync::Arc;

use mcp_meter_plugin::ledger::{GrantMode, PriceSchedule, Tier};

use super::config::{self, FreemiumConfig, SubscriptionConfig, UsageConfig};
use super::{FAILURE_KINDS, check_pattern};
use crate::money::Unit;
use crate::period::{BillingPeriod, Period};

/// Hours a `past_due` subscription is served unless configured.
pub const DEFAULT_GRACE_HOURS: i64 = 72;
/// Quota percentages that bring a warning unless configured.
pub const DEFAULT_WARN_AT_PERCENT: [i64; 3] = [80, 90, 100];
/// The longest meter event name the payment provider takes.
const EVENT_NAME_MAX: usize = 100;

/// How a plan charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// Prepaid credits, reserved before the call and settled after it.
    Credits {
        /// Failure kinds (from [`FAILURE_KINDS`]) that are refunded.
        refund_on: Arc<HashSet<String>>,
        /// Balances that trigger a warning, highest first.
        low_balance_warnings: Vec<i64>,
        /// Credits granted every period.
        grant: Option<CreditGrant>,
        /// Prices per unit of a meter other than calls.
        metering: Option<CreditMetering>,
    },
    /// Charges accrued per successful call.
    PerCall {
        /// How calls at the default price are priced by their number in
        /// the period.
        schedule: PriceSchedule,
        /// The billing period.
        period: Period,
        /// The least owed for a period with calls (micro-units).
        minimum: Option<i64>,
        /// Prices and tiers per blocks of a meter's units rather than per
        /// call (`None`: per call).
        metering: Option<UnitMetering>,
    },
    /// A recurring fee with included calls.
    Subscription(SubscriptionRules),
    /// Each call's units reported to the payment provider's meter.
    Usage(UsageRules),
    /// A free quota per window.
    Freemium(Arc<FreemiumRules>),
}

impl Model {
    /// The model's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Model::Credits { .. } => "credits",
            Model::PerCall { .. } => "per_call",
            Model::Subscription(_) => "subscription",
            Model::Usage(_) => "usage",
            Model::Freemium(_) => "freemium",
        }
    }
}

/// A credits plan's periodic grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditGrant {
    /// Credits per period.
    pub amount: i64,
    /// The period.
    pub period: Period,
    /// What happens to unused credits.
    pub mode: GrantMode,
}

/// A credits plan that prices units of a meter rather than calls: a call
/// reserves the price of `max_units` and settles the units it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditMetering {
    /// What a call counts.
    pub meter: Meter,
    /// The most units one call is charged for.
    pub max_units: i64,
    /// A price is per this many units (rounded up).
    pub unit_size: i64,
}

impl CreditMetering {
    /// The credits `units` cost at `price` per [`Self::unit_size`] units,
    /// counting at most [`Self::max_units`].
    pub fn cost(&self, price: i64, units: i64) -> i64 {
        price.saturating_mul(blocks(units.min(self.max_units), self.unit_size))
    }
}

/// A `per_call` or `subscription` plan that counts units of a meter rather
/// than calls: each call's units are rounded up to whole blocks of
/// `unit_size`, and prices, tiers and included amounts are per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMetering {
    /// What a call counts.
    pub meter: Meter,
    /// Units per block (a price is per this many units).
    pub unit_size: i64,
}

impl UnitMetering {
    /// How many blocks `units` make (rounded up; 0 for none).
    pub fn blocks(&self, units: i64) -> i64 {
        blocks(units, self.unit_size)
    }

    /// `schedule` with its tiers' bounds in units rather than blocks, to
    /// show an operator what they configured.
    pub fn in_units(&self, schedule: &PriceSchedule) -> PriceSchedule {
        let scale = |tiers: &[Tier]| {
            tiers
                .iter()
                .map(|t| Tier {
                    up_to: t.up_to.map(|n| n.saturating_mul(self.unit_size)),
                    price: t.price,
                })
                .collect()
        };
        match schedule {
            PriceSchedule::Flat { price } => PriceSchedule::Flat { price: *price },
            PriceSchedule::Volume { tiers } => PriceSchedule::Volume {
                tiers: scale(tiers),
            },
            PriceSchedule::Graduated { tiers } => PriceSchedule::Graduated {
                tiers: scale(tiers),
            },
        }
    }

    /// What one price is for, e.g. `1000 units` or `byte`.
    pub fn per(&self) -> String {
        let unit = self.meter.unit();
        if self.unit_size == 1 {
            unit.strip_suffix('s').unwrap_or(unit).to_owned()
        } else {
            format!("{} {unit}", self.unit_size)
        }
    }
}

/// `units` in blocks of `size`, rounded up (0 for none or fewer).
fn blocks(units: i64, size: i64) -> i64 {
    let units = units.max(0);
    units / size + i64::from(units % size != 0)
}

/// A subscription plan's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRules {
    /// The recurring fee (micro-units), if stated.
    pub fee: Option<i64>,
    /// Calls included in each period; with [`Self::metering`], blocks of
    /// units.
    pub included_calls: i64,
    /// Beyond the included calls: charge overage (`true`) or refuse.
    pub overage: bool,
    /// The billing period.
    pub period: BillingPeriod,
    /// How long a `past_due` subscription is still served (ms).
    pub grace_ms: i64,
    /// Included amounts and overage per blocks of a meter's units rather
    /// than per call (`None`: per call).
    pub metering: Option<UnitMetering>,
}

impl SubscriptionRules {
    /// The included amount as configured and what it counts: calls, or
    /// with a meter, units.
    pub fn included(&self) -> (i64, &'static str) {
        match &self.metering {
            None => (self.included_calls, "calls"),
            Some(m) => (self.included_calls.saturating_mul(m.unit_size), "units"),
        }
    }
}

/// What a usage plan's meter counts per call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meter {
    /// One per call.
    Calls,
    /// The bytes of the request message.
    RequestBytes,
    /// The bytes of the response message.
    ResponseBytes,
    /// Milliseconds from forwarding to the answer.
    DurationMs,
    /// A non-negative integer the server puts in the result's `_meta`
    /// under this key.
    Meta(String),
}

impl Meter {
    /// What the units are called in the ledger.
    pub fn unit(&self) -> &'static str {
        match self {
            Meter::Calls => "calls",
            Meter::RequestBytes | Meter::ResponseBytes => "bytes",
            Meter::DurationMs => "ms",
            Meter::Meta(_) => "units",
        }
    }

    /// The name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Meter::Calls => "calls",
            Meter::RequestBytes => "request_bytes",
            Meter::ResponseBytes => "response_bytes",
            Meter::DurationMs => "duration_ms",
            Meter::Meta(_) => "meta",
        }
    }
}

/// A usage plan's meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRules {
    /// The payment provider's meter (event name).
    pub event_name: String,
    /// What each call counts.
    pub meter: Meter,
}

/// A freemium plan's quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreemiumRules {
    /// Free calls per window to tools without their own quota.
    pub free_calls: i64,
    /// The window.
    pub window: Period,
    /// Tools (names or patterns) with their own quota, exact names first,
    /// then longer patterns.
    pub tool_quotas: Vec<(String, i64)>,
    /// The plan that charges calls beyond the quota (`None`: refuse).
    pub then_plan: Option<String>,
    /// Quota percentages that bring a warning, lowest first.
    pub warn_at_percent: Vec<i64>,
}

impl FreemiumRules {
    /// The counter and the cap a call to `tool` counts against.
    pub fn quota_for(&self, tool: Option<&str>) -> (String, i64) {
        if let Some(tool) = tool
            && let Some((pattern, cap)) = self
                .tool_quotas
                .iter()
                .find(|(p, _)| mcp_meter_plugin::identity::glob(p, tool))
        {
            return (format!("free:{pattern}"), *cap);
        }
        ("free".to_owned(), self.free_calls)
    }
}

/// Reads a period name, reporting one that is not among `allowed`.
fn period(
    name: Option<&str>,
    default: Period,
    allowed: &[Period],
    key: &str,
    problems: &mut Vec<String>,
) -> Period {
    let Some(name) = name else {
        return default;
    };
    Period::parse(name, allowed).unwrap_or_else(|| {
        let names: Vec<_> = allowed.iter().map(|p| format!("`{}`", p.name())).collect();
        problems.push(format!(
            "{key}: unknown period `{name}`; use {}",
            names.join(" or ")
        ));
        default
    })
}

pub(super) fn compile_credits(
    credits: config::CreditsConfig,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Model> {
    let grant = compile_grant(&credits, path, problems);
    let metering = compile_credit_metering(&credits, &format!("{path}.credits"), problems);
    let refund_on: HashSet<String> = match credits.refund_on {
        None => FAILURE_KINDS.iter().map(|k| (*k).to_owned()).collect(),
        Some(kinds) => kinds.into_iter().collect(),
    };
    for kind in &refund_on {
        if !FAILURE_KINDS.contains(&kind.as_str()) {
            problems.push(format!(
                "{path}.credits.refund_on: unknown failure `{kind}`; use any of {}",
                FAILURE_KINDS.join(", ")
            ));
        }
    }
    let mut warnings = credits.low_balance_warnings;
    for threshold in &warnings {
        if *threshold < 0 {
            problems.push(format!(
                "{path}.credits.low_balance_warnings: {threshold} is negative"
            ));
        }
    }
    warnings.sort_unstable_by(|a, b| b.cmp(a));
    warnings.dedup();
    Some(Model::Credits {
        refund_on: Arc::new(refund_on),
        low_balance_warnings: warnings,
        grant,
        metering,
    })
}

fn compile_credit_metering(
    credits: &config::CreditsConfig,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<CreditMetering> {
    let meter = MeterConfig {
        meter: credits.meter.as_deref(),
        meta_key: credits.meta_key.as_ref(),
        unit_size: credits.unit_size,
    };
    let Some(units) = compile_unit_metering(meter, key, problems) else {
        if credits.max_units.is_some() {
            problems.push(format!(
                "{key}.max_units: set only with a `meter` other than `calls`"
            ));
        }
        return None;
    };
    let max_units = match credits.max_units {
        Some(n) if n >= 1 => n,
        Some(n) => {
            problems.push(format!("{key}.max_units: {n} must be at least 1"));
            1
        }
        None => {
            problems.push(format!(
                "{key}.max_units: say the most units a call is charged for (its price is \
                 reserved before the call)"
            ));
            1
        }
    };
    Some(CreditMetering {
        meter: units.meter,
        max_units,
        unit_size: units.unit_size,
    })
}

/// The meter keys of a plan's model table.
#[derive(Clone, Copy)]
pub(super) struct MeterConfig<'a> {
    meter: Option<&'a str>,
    meta_key: Option<&'a String>,
    unit_size: Option<i64>,
}

/// Reads `meter`, `meta_key` and `unit_size` of the table at `key`:
/// `None` when the table counts calls.
fn compile_unit_metering(
    config: MeterConfig<'_>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<UnitMetering> {
    let meter = compile_meter(config.meter, config.meta_key, key, problems);
    if meter == Meter::Calls {
        if config.unit_size.is_some() {
            problems.push(format!(
                "{key}.unit_size: set only with a `meter` other than `calls`"
            ));
        }
        return None;
    }
    let unit_size = match config.unit_size {
        None => 1,
        Some(n) if n >= 1 => n,
        Some(n) => {
            problems.push(format!("{key}.unit_size: {n} must be at least 1"));
            1
        }
    };
    Some(UnitMetering { meter, unit_size })
}

/// `amount` units in blocks of the metering's unit size, reporting an
/// amount that is not a whole number of blocks.
fn in_blocks(
    amount: i64,
    metering: Option<&UnitMetering>,
    key: &str,
    problems: &mut Vec<String>,
) -> i64 {
    let Some(metering) = metering else {
        return amount;
    };
    if amount % metering.unit_size != 0 {
        problems.push(format!(
            "{key}: {amount} is not a whole number of blocks of {} units (unit_size)",
            metering.unit_size
        ));
    }
    amount / metering.unit_size
}

/// Reads `meter` and `meta_key` of the table at `key`.
fn compile_meter(
    meter: Option<&str>,
    meta_key: Option<&String>,
    key: &str,
    problems: &mut Vec<String>,
) -> Meter {
    match (meter, meta_key) {
        (None | Some("calls"), None) => Meter::Calls,
        (Some("request_bytes"), None) => Meter::RequestBytes,
        (Some("response_bytes"), None) => Meter::ResponseBytes,
        (Some("duration_ms"), None) => Meter::DurationMs,
        (Some("meta"), Some(meta_key)) if !meta_key.trim().is_empty() => {
            Meter::Meta(meta_key.clone())
        }
        (Some("meta"), _) => {
            problems.push(format!(
                "{key}.meta_key: `meter = \"meta\"` needs the result's `_meta` key to read"
            ));
            Meter::Calls
        }
        (Some(known), Some(_))
            if ["calls", "request_bytes", "response_bytes", "duration_ms"].contains(&known) =>
        {
            problems.push(format!(
                "{key}.meta_key: set only together with `meter = \"meta\"`"
            ));
            Meter::Calls
        }
        (None, Some(_)) => {
            problems.push(format!(
                "{key}.meta_key: set only together with `meter = \"meta\"`"
            ));
            Meter::Calls
        }
        (Some(other), _) => {
            problems.push(format!(
                "{key}.meter: unknown meter `{other}`; use `calls`, `request_bytes`, \
                 `response_bytes`, `duration_ms` or `meta`"
            ));
            Meter::Calls
        }
    }
}

fn compile_grant(
    credits: &config::CreditsConfig,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<CreditGrant> {
    let key = format!("{path}.credits");
    let Some(amount) = credits.grant else {
        for (set, name) in [
            (credits.grant_period.is_some(), "grant_period"),
            (credits.grant_mode.is_some(), "grant_mode"),
            (credits.rollover_cap.is_some(), "rollover_cap"),
        ] {
            if set {
                problems.push(format!("{key}.{name}: set only together with `grant`"));
            }
        }
        return None;
    };
    if amount < 1 {
        problems.push(format!("{key}.grant: {amount} must be at least 1"));
    }
    let period = period(
        credits.grant_period.as_deref(),
        Period::Month,
        &[Period::Month, Period::Day, Period::Hour],
        &format!("{key}.grant_period"),
        problems,
    );
    let mode = match (credits.grant_mode.as_deref(), credits.rollover_cap) {
        (None | Some("reset"), None) => GrantMode::Reset,
        (None | Some("reset"), Some(_)) => {
            problems.push(format!(
                "{key}.rollover_cap: only `grant_mode = \"rollover\"` carries credits over"
            ));
            GrantMode::Reset
        }
        (Some("rollover"), cap) => {
            if let Some(cap) = cap
                && cap < 0
            {
                problems.push(format!("{key}.rollover_cap: {cap} is negative"));
            }
            GrantMode::Rollover { cap }
        }
        (Some(other), _) => {
            problems.push(format!(
                "{key}.grant_mode: unknown mode `{other}`; use `reset` or `rollover`"
            ));
            GrantMode::Reset
        }
    };
    Some(CreditGrant {
        amount,
        period,
        mode,
    })
}

/// Checks `[plans.subscription]`. `has_price` says whether `[plans.prices]`
/// prices any call (the overage prices).
pub(super) fn compile_subscription(
    subscription: Option<&SubscriptionConfig>,
    has_price: bool,
    unit: &Unit,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Model> {
    let key = format!("{path}.subscription");
    let Some(subscription) = subscription else {
        problems.push(format!(
            "{key}: a subscription plan needs [plans.subscription] with `included_calls`"
        ));
        return None;
    };
    let metering = compile_unit_metering(
        MeterConfig {
            meter: subscription.meter.as_deref(),
            meta_key: subscription.meta_key.as_ref(),
            unit_size: subscription.unit_size,
        },
        &key,
        problems,
    );
    let (included_key, included, wrong_key) = match metering {
        None => (
            "included_calls",
            subscription.included_calls,
            subscription.included_units.map(|_| "included_units"),
        ),
        Some(_) => (
            "included_units",
            subscription.included_units,
            subscription.included_calls.map(|_| "included_calls"),
        ),
    };
    if let Some(wrong) = wrong_key {
        problems.push(format!(
            "{key}.{wrong}: this plan's meter counts {}; use `{included_key}`",
            if metering.is_some() { "units" } else { "calls" }
        ));
    }
    let included_calls = match included {
        Some(n) if n >= 0 => in_blocks(
            n,
            metering.as_ref(),
            &format!("{key}.{included_key}"),
            problems,
        ),
        Some(n) => {
            problems.push(format!("{key}.{included_key}: {n} is negative"));
            0
        }
        None => {
            problems.push(format!(
                "{key}.{included_key}: say how many {} each period includes (0 for none)",
                if metering.is_some() { "units" } else { "calls" }
            ));
            0
        }
    };
    let overage = match subscription.beyond_included.as_deref() {
        None | Some("refuse") => {
            if has_price {
                problems.push(format!(
                    "{path}.prices: prices are charged only for overage; set \
                     `beyond_included = \"overage\"` or remove the prices"
                ));
            }
            false
        }
        Some("overage") => {
            if !has_price {
                problems.push(format!(
                    "{path}.prices.default: `beyond_included = \"overage\"` needs the price \
                     of a call beyond the included ones"
                ));
            }
            true
        }
        Some(other) => {
            problems.push(format!(
                "{key}.beyond_included: unknown choice `{other}`; use `refuse` or `overage`"
            ));
            false
        }
    };
    let period = match subscription.period.as_deref() {
        Some("subscription") => BillingPeriod::Subscription,
        None | Some("month") => BillingPeriod::Calendar(Period::Month),
        Some("day") => BillingPeriod::Calendar(Period::Day),
        Some(other) => {
            problems.push(format!(
                "{key}.period: unknown period `{other}`; use `month`, `day` or `subscription`"
            ));
            BillingPeriod::Calendar(Period::Month)
        }
    };
    let grace_hours = subscription
        .grace_period_hours
        .unwrap_or(DEFAULT_GRACE_HOURS);
    if grace_hours < 0 {
        problems.push(format!(
            "{key}.grace_period_hours: {grace_hours} is negative"
        ));
    }
    let fee = subscription.fee.as_ref().and_then(|fee| {
        fee.to_amount(unit)
            .map_err(|error| problems.push(format!("{key}.fee: {error}")))
            .ok()
    });
    if metering.is_some() && !overage {
        problems.push(format!(
            "{key}.beyond_included: a plan with a `meter` charges overage \
             (`beyond_included = \"overage\"`): a call's units are known only after it, \
             so a hard cap on units cannot be enforced exactly"
        ));
    }
    Some(Model::Subscription(SubscriptionRules {
        fee,
        included_calls,
        overage,
        period,
        grace_ms: grace_hours.saturating_mul(3_600_000),
        metering,
    }))
}

/// Checks `[plans.usage]`. Usage plans are priced at the payment provider,
/// so `has_price` is a mistake.
pub(super) fn compile_usage(
    usage: Option<&UsageConfig>,
    has_price: bool,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Model> {
    let key = format!("{path}.usage");
    let Some(usage) = usage else {
        problems.push(format!(
            "{key}: a usage plan needs [plans.usage] with `event_name` (the payment provider's meter)"
        ));
        return None;
    };
    if has_price {
        problems.push(format!(
            "{path}.prices: a usage plan is priced by the payment provider's meter;              keep only `free` and `not_included` here"
        ));
    }
    let event_name = match usage.event_name.as_deref().map(str::trim) {
        Some(name)
            if !name.is_empty()
                && name.len() <= EVENT_NAME_MAX
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)) =>
        {
            name.to_owned()
        }
        Some(name) => {
            problems.push(format!(
                "{key}.event_name: `{name}` must be 1 to {EVENT_NAME_MAX} letters, digits,                  `_`, `-`, `.` or `:`"
            ));
            String::new()
        }
        None => {
            problems.push(format!(
                "{key}.event_name: name the payment provider's meter (its event name)"
            ));
            String::new()
        }
    };
    let meter = compile_meter(
        usage.meter.as_deref(),
        usage.meta_key.as_ref(),
        &key,
        problems,
    );
    Some(Model::Usage(UsageRules { event_name, meter }))
}

/// Checks `[plans.freemium]`. Whether `then_plan` names a plan that can
/// charge is checked once every plan is compiled.
pub(super) fn compile_freemium(
    freemium: Option<&FreemiumConfig>,
    has_price: bool,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Model> {
    let key = format!("{path}.freemium");
    let Some(freemium) = freemium else {
        problems.push(format!(
            "{key}: a freemium plan needs [plans.freemium] with `free_calls`"
        ));
        return None;
    };
    if has_price {
        problems.push(format!(
            "{path}.prices: a freemium plan charges nothing; price calls beyond the quota              on the plan named by `freemium.then_plan`"
        ));
    }
    let free_calls = match freemium.free_calls {
        Some(n) if n >= 0 => n,
        Some(n) => {
            problems.push(format!("{key}.free_calls: {n} is negative"));
            0
        }
        None => {
            problems.push(format!(
                "{key}.free_calls: say how many free calls each window allows"
            ));
            0
        }
    };
    let window = period(
        freemium.window.as_deref(),
        Period::Day,
        &[Period::Hour, Period::Day, Period::Month],
        &format!("{key}.window"),
        problems,
    );
    let mut tool_quotas = Vec::new();
    for (pattern, cap) in &freemium.tool_quotas {
        check_pattern(pattern, &format!("{key}.tool_quotas"), problems);
        if *cap < 0 {
            problems.push(format!(
                "{key}.tool_quotas.\"{pattern}\": {cap} is negative"
            ));
        }
        tool_quotas.push((pattern.clone(), *cap));
    }
    tool_quotas.sort_by(|(a, _), (b, _)| {
        a.ends_with('*')
            .cmp(&b.ends_with('*'))
            .then(b.len().cmp(&a.len()))
    });
    let mut warn_at_percent = freemium
        .warn_at_percent
        .clone()
        .unwrap_or_else(|| DEFAULT_WARN_AT_PERCENT.to_vec());
    for percent in &warn_at_percent {
        if !(1..=100).contains(percent) {
            problems.push(format!(
                "{key}.warn_at_percent: {percent} is not a percentage from 1 to 100"
            ));
        }
    }
    warn_at_percent.sort_unstable();
    warn_at_percent.dedup();
    Some(Model::Freemium(Arc::new(FreemiumRules {
        free_calls,
        window,
        tool_quotas,
        then_plan: freemium.then_plan.clone(),
        warn_at_percent,
    })))
}

pub(super) fn compile_per_call(
    per_call: config::PerCallConfig,
    default_price: Option<i64>,
    has_tool_prices: bool,
    unit: &Unit,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Model> {
    let period = period(
        per_call.period.as_deref(),
        Period::Month,
        &[Period::Month, Period::Day],
        &format!("{path}.per_call.period"),
        problems,
    );
    let minimum = per_call.minimum.as_ref().and_then(|m| {
        m.to_amount(unit)
            .map_err(|error| problems.push(format!("{path}.per_call.minimum: {error}")))
            .ok()
    });
    let metering = compile_unit_metering(
        MeterConfig {
            meter: per_call.meter.as_deref(),
            meta_key: per_call.meta_key.as_ref(),
            unit_size: per_call.unit_size,
        },
        &format!("{path}.per_call"),
        problems,
    );
    let schedule = if per_call.tiers.is_empty() {
        if per_call.tiering.is_some() {
            problems.push(format!(
                "{path}.per_call.tiering: set only together with [[plans.per_call.tiers]]"
            ));
        }
        match default_price {
            Some(price) => PriceSchedule::Flat { price },
            None if has_tool_prices => PriceSchedule::Flat { price: 0 },
            None => {
                problems.push(format!(
                    "{path}.prices.default: a per_call plan needs a price \
                     (prices.default, prices.tools or [[plans.per_call.tiers]])"
                ));
                return None;
            }
        }
    } else {
        if default_price.is_some() {
            problems.push(format!(
                "{path}.prices.default: remove it; [[plans.per_call.tiers]] price the calls \
                 that have no price of their own"
            ));
        }
        let tiers = compile_tiers(&per_call.tiers, metering.as_ref(), unit, path, problems)?;
        match per_call.tiering.as_deref() {
            Some("volume") => PriceSchedule::Volume { tiers },
            Some("graduated") => PriceSchedule::Graduated { tiers },
            Some(other) => {
                problems.push(format!(
                    "{path}.per_call.tiering: unknown tiering `{other}`; use `volume` or `graduated`"
                ));
                return None;
            }
            None => {
                problems.push(format!(
                    "{path}.per_call.tiering: say how tiers price calls: `volume` or `graduated`"
                ));
                return None;
            }
        }
    };
    Some(Model::PerCall {
        schedule,
        period,
        minimum,
        metering,
    })
}

fn compile_tiers(
    tiers: &[config::TierConfig],
    metering: Option<&UnitMetering>,
    unit: &Unit,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<Tier>> {
    let before = problems.len();
    let mut compiled = Vec::with_capacity(tiers.len());
    let mut previous_up_to = 0i64;
    for (index, tier) in tiers.iter().enumerate() {
        let key = format!("{path}.per_call.tiers[{index}]");
        let last = index + 1 == tiers.len();
        match (tier.up_to, last) {
            (None, false) => {
                problems.push(format!("{key}.up_to: only the last tier may be open-ended"))
            }
            (Some(_), true) => problems.push(format!(
                "{key}.up_to: the last tier must be open-ended (leave out up_to)"
            )),
            (Some(up_to), false) if up_to <= previous_up_to => problems.push(format!(
                "{key}.up_to: {up_to} overlaps the tier before (tiers must rise; the previous \
                 one ends at {previous_up_to})"
            )),
            (Some(up_to), false) => previous_up_to = up_to,
            (None, true) => {}
        }
        let up_to = tier
            .up_to
            .map(|up_to| in_blocks(up_to, metering, &format!("{key}.up_to"), problems));
        match tier.price.to_amount(unit) {
            Ok(price) => compiled.push(Tier { up_to, price }),
            Err(error) => problems.push(format!("{key}.price: {error}")),
        }
    }
    (problems.len() == before).then_some(compiled)
}
