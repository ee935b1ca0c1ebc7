use super::*;
use crate::period::{BillingPeriod, Period};
use mcp_meter_plugin::ledger::{GrantMode, Tier};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    billing: BillingConfig,
    #[serde(default)]
    plans: Vec<PlanConfig>,
}

use serde::Deserialize;

fn compile(text: &str) -> Result<Catalog, Vec<String>> {
    let file: File = toml::from_str(text).unwrap();
    Catalog::compile(&file.billing, &file.plans)
}

const PLANS: &str = r#"
[billing]
default_plan = "starter"
metered_methods = ["resources/read"]

[[plans]]
id = "starter"
model = "credits"
upgrade_url = "https://example.com/buy"
[plans.prices]
default = 2
tools = { "search_*" = 5, "search_web" = 7, "echo" = 0 }
free = ["get-sum"]
not_included = ["admin_*"]
[plans.credits]
refund_on = ["error", "timeout"]
low_balance_warnings = [10, 100]

[[plans]]
id = "pay"
name = "Pay as you go"
model = "per_call"
currency = "USD"
[plans.prices]
tools = { "translate" = "0.01" }
[plans.per_call]
tiering = "volume"
period = "day"
minimum = "5"
tiers = [ { up_to = 1000, price = "0.001" }, { up_to = 10000, price = "0.0008" }, { price = "0.0005" } ]
"#;

#[test]
fn plans_compile_with_exact_prices() {
    let catalog = compile(PLANS).unwrap();
    let starter = catalog.plan("starter").unwrap();
    assert_eq!(starter.unit, Unit::Credits);
    assert_eq!(starter.price_of(Some("anything")), ToolPrice::Default(2));
    assert_eq!(starter.price_of(Some("search_news")), ToolPrice::Fixed(5));
    // The exact name wins over the pattern.
    assert_eq!(starter.price_of(Some("search_web")), ToolPrice::Fixed(7));
    assert_eq!(starter.price_of(Some("echo")), ToolPrice::Free);
    assert_eq!(starter.price_of(Some("get-sum")), ToolPrice::Free);
    assert_eq!(
        starter.price_of(Some("admin_reset")),
        ToolPrice::NotIncluded
    );
    assert_eq!(starter.refusal_code, DEFAULT_REFUSAL_CODE);
    match &starter.model {
        Model::Credits {
            refund_on,
            low_balance_warnings,
            grant: None,
            metering: None,
        } => {
            assert!(refund_on.contains("error") && !refund_on.contains("tool_error"));
            assert_eq!(low_balance_warnings, &vec![100, 10]);
        }
        other => panic!("{other:?}"),
    }

    let pay = catalog.plan("pay").unwrap();
    assert_eq!(pay.unit, Unit::Currency("usd".into()));
    assert_eq!(pay.price_of(Some("translate")), ToolPrice::Fixed(10_000));
    assert_eq!(pay.list_price("other"), Some(1000));
    match &pay.model {
        Model::PerCall {
            schedule,
            period,
            minimum,
            metering: None,
        } => {
            assert_eq!(*period, Period::Day);
            assert_eq!(*minimum, Some(5_000_000));
            assert_eq!(schedule.total_for_calls(10_000), 10_000 * 800);
        }
        other => panic!("{other:?}"),
    }
    assert!(catalog.is_metered("tools/call") && catalog.is_metered("resources/read"));
    assert!(!catalog.is_metered("prompts/get"));
    assert_eq!(
        catalog.plan_for(None).unwrap().map(|p| p.id.as_str()),
        Some("starter")
    );
    assert_eq!(catalog.plan_for(Some("gold")).unwrap_err(), "gold");
}

#[test]
fn every_problem_is_listed_with_its_key() {
    let problems = compile(
        r#"
[billing]
default_plan = "nope"
metered_methods = ["tools/list"]

[[plans]]
id = "a"
model = "credits"
currency = "usd"
[plans.prices]
default = "0.5"
tools = { "x*y" = 1 }

[[plans]]
id = "b"
model = "per_call"
currency = "dollars"
[plans.prices]
default = "0.0000001"
[plans.per_call]
tiering = "volume"
tiers = [ { up_to = 100, price = "-1" }, { up_to = 50, price = "0.1" }, { price = "0.2" } ]

[[plans]]
id = "c"
model = "gold"

[[plans]]
id = "d"
model = "per_call"
currency = "eur"

[[plans]]
id = "a"
model = "credits"
"#,
    )
    .unwrap_err();
    let expected = [
        "billing.metered_methods: `tools/list` cannot be metered",
        "plans.a.currency: a credits plan counts whole credits",
        "plans.a.prices.default: `0.5` has more than 0 digits",
        "plans.a.prices.tools: `x*y` is not a tool name or a pattern",
        "plans.b.currency: `dollars` is not a three-letter ISO 4217 code",
        "plans.b.prices.default: `0.0000001` has more than 6 digits",
        "plans.b.per_call.tiers[0].price: `-1` is negative",
        "plans.b.per_call.tiers[1].up_to: 50 overlaps the tier before",
        "plans.c.model: unknown billing model `gold`",
        "plans.d.prices.default: a per_call plan needs a price",
        "plans.a.id: plan `a` is defined twice",
        "billing.default_plan: there is no plan `nope`",
    ];
    for want in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing {want:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[test]
fn tier_shapes_are_checked() {
    let problems = compile(
        r#"
[[plans]]
id = "t"
model = "per_call"
currency = "usd"
[plans.per_call]
tiers = [ { price = "0.1" }, { up_to = 10, price = "0.2" } ]
"#,
    )
    .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("plans.t.per_call.tiers[0].up_to: only the last tier")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p
                .starts_with("plans.t.per_call.tiers[1].up_to: the last tier must be open-ended")),
        "{problems:?}"
    );
}

const MODELS: &str = r#"
[[plans]]
id = "team"
model = "subscription"
currency = "usd"
prices = { default = "0.002", tools = { "search" = "0.01" }, free = ["ping"] }
[plans.subscription]
fee = "49"
included_calls = 10000
beyond_included = "overage"
period = "subscription"
grace_period_hours = 24

[[plans]]
id = "capped"
model = "subscription"
currency = "eur"
[plans.subscription]
included_calls = 500

[[plans]]
id = "metered"
model = "usage"
[plans.usage]
event_name = "mcp_bytes"
meter = "meta"
meta_key = "tokens"

[[plans]]
id = "free"
model = "freemium"
[plans.freemium]
free_calls = 100
window = "hour"
tool_quotas = { "search_*" = 10, "search_web" = 3 }
then_plan = "payg"

[[plans]]
id = "payg"
model = "per_call"
currency = "usd"
prices = { default = "0.001" }

[[plans]]
id = "monthly"
model = "credits"
prices = { default = 1 }
[plans.credits]
grant = 1000
grant_mode = "rollover"
rollover_cap = 500
"#;

#[test]
fn every_model_compiles_with_its_numbers() {
    let catalog = compile(MODELS).unwrap();
    let Model::Subscription(team) = &catalog.plan("team").unwrap().model else {
        panic!("team is a subscription");
    };
    assert_eq!(team.fee, Some(49_000_000));
    assert_eq!(team.included_calls, 10_000);
    assert!(team.overage);
    assert_eq!(team.period, BillingPeriod::Subscription);
    assert_eq!(team.grace_ms, 24 * 3_600_000);
    assert_eq!(
        catalog.plan("team").unwrap().list_price("search"),
        Some(10_000)
    );
    let Model::Subscription(capped) = &catalog.plan("capped").unwrap().model else {
        panic!("capped is a subscription");
    };
    assert!(!capped.overage);
    assert_eq!(capped.period, BillingPeriod::Calendar(Period::Month));
    assert_eq!(capped.grace_ms, DEFAULT_GRACE_HOURS * 3_600_000);
    let metered = catalog.plan("metered").unwrap();
    assert_eq!(metered.unit, Unit::Calls);
    assert_eq!(
        metered.model,
        Model::Usage(UsageRules {
            event_name: "mcp_bytes".into(),
            meter: Meter::Meta("tokens".into()),
        })
    );
    let Model::Freemium(free) = &catalog.plan("free").unwrap().model else {
        panic!("free is freemium");
    };
    assert_eq!(free.window, Period::Hour);
    assert_eq!(free.warn_at_percent, vec![80, 90, 100]);
    // The exact name wins over the pattern; other tools share `free_calls`.
    assert_eq!(
        free.quota_for(Some("search_web")),
        ("free:search_web".into(), 3)
    );
    assert_eq!(
        free.quota_for(Some("search_news")),
        ("free:search_*".into(), 10)
    );
    assert_eq!(free.quota_for(Some("echo")), ("free".into(), 100));
    assert_eq!(free.quota_for(None), ("free".into(), 100));
    let Model::Credits { grant, .. } = &catalog.plan("monthly").unwrap().model else {
        panic!("monthly is credits");
    };
    assert_eq!(
        *grant,
        Some(CreditGrant {
            amount: 1000,
            period: Period::Month,
            mode: GrantMode::Rollover { cap: Some(500) },
        })
    );
}

#[test]
fn each_models_mistakes_are_listed_with_their_keys() {
    let problems = compile(
        r#"
[[plans]]
id = "s"
model = "subscription"
currency = "usd"
prices = { default = "0.01" }
[plans.subscription]
included_calls = -1
period = "week"
grace_period_hours = -2

[[plans]]
id = "o"
model = "subscription"
currency = "usd"
[plans.subscription]
beyond_included = "overage"

[[plans]]
id = "u"
model = "usage"
prices = { default = "1" }
[plans.usage]
event_name = "has space"
meter = "tokens"

[[plans]]
id = "f"
model = "freemium"
[plans.freemium]
window = "week"
tool_quotas = { "a*b" = -1 }
then_plan = "u"
warn_at_percent = [0, 150]

[[plans]]
id = "g"
model = "freemium"
per_call = {}
[plans.freemium]
free_calls = 5
then_plan = "nowhere"

[[plans]]
id = "c"
model = "credits"
prices = { default = 1 }
[plans.credits]
grant = 0
grant_mode = "keep"
grant_period = "year"

[[plans]]
id = "c2"
model = "credits"
prices = { default = 1 }
[plans.credits]
rollover_cap = 5
"#,
    )
    .unwrap_err();
    for expected in [
        "plans.s.subscription.included_calls: -1 is negative",
        "plans.s.subscription.period: unknown period `week`; use `month`, `day` or `subscription`",
        "plans.s.subscription.grace_period_hours: -2 is negative",
        "plans.s.prices: prices are charged only for overage",
        "plans.o.subscription.included_calls: say how many calls",
        "plans.o.prices.default: `beyond_included = \"overage\"` needs the price",
        "plans.u.prices: a usage plan is priced by the payment provider's meter",
        "plans.u.usage.event_name: `has space` must be",
        "plans.u.usage.meter: unknown meter `tokens`",
        "plans.f.freemium.free_calls: say how many free calls",
        "plans.f.freemium.window: unknown period `week`; use `hour` or `day` or `month`",
        "plans.f.freemium.tool_quotas: `a*b` is not a tool name or a pattern",
        "plans.f.freemium.tool_quotas.\"a*b\": -1 is negative",
        "plans.f.freemium.warn_at_percent: 0 is not a percentage",
        "plans.f.freemium.warn_at_percent: 150 is not a percentage",
        "plans.g.per_call: only a per_call plan takes [plans.per_call]",
        "plans.c.credits.grant: 0 must be at least 1",
        "plans.c.credits.grant_mode: unknown mode `keep`",
        "plans.c.credits.grant_period: unknown period `year`",
        "plans.c2.credits.rollover_cap: set only together with `grant`",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
}

#[test]
fn a_credits_meter_reserves_its_most_and_rounds_up() {
    let catalog = compile(
        r#"
[[plans]]
id = "bytes"
model = "credits"
prices = { default = 2 }
credits = { meter = "response_bytes", max_units = 1000, unit_size = 100 }
"#,
    )
    .unwrap();
    let Model::Credits {
        metering: Some(metering),
        ..
    } = &catalog.plan("bytes").unwrap().model
    else {
        panic!("bytes is a metered credits plan");
    };
    assert_eq!(metering.meter, Meter::ResponseBytes);
    // 2 credits per started 100 bytes, at most 1,000 bytes.
    assert_eq!(metering.cost(2, metering.max_units), 20);
    assert_eq!(metering.cost(2, 0), 0);
    assert_eq!(metering.cost(2, 1), 2);
    assert_eq!(metering.cost(2, 100), 2);
    assert_eq!(metering.cost(2, 101), 4);
    assert_eq!(metering.cost(2, 50_000), 20);
    assert_eq!(metering.cost(2, -5), 0);

    let problems = compile(
        r#"
[[plans]]
id = "a"
model = "credits"
prices = { default = 1 }
credits = { meter = "meta" }

[[plans]]
id = "b"
model = "credits"
prices = { default = 1 }
credits = { max_units = 5, unit_size = 0 }

[[plans]]
id = "c"
model = "credits"
prices = { default = 1 }
credits = { meter = "duration_ms", max_units = 0, unit_size = -1 }

[[plans]]
id = "d"
model = "credits"
prices = { default = 1 }
credits = { meter = "request_bytes" }
"#,
    )
    .unwrap_err();
    for expected in [
        "plans.a.credits.meta_key: `meter = \"meta\"` needs the result's `_meta` key",
        "plans.d.credits.max_units: say the most units",
        "plans.b.credits.max_units: set only with a `meter` other than `calls`",
        "plans.b.credits.unit_size: set only with a `meter` other than `calls`",
        "plans.c.credits.max_units: 0 must be at least 1",
        "plans.c.credits.unit_size: -1 must be at least 1",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
}

#[test]
fn a_fall_through_plan_must_exist_and_price_calls() {
    let problems = compile(
        r#"
[[plans]]
id = "u"
model = "usage"
usage = { event_name = "calls" }

[[plans]]
id = "f"
model = "freemium"
freemium = { free_calls = 1, then_plan = "u" }

[[plans]]
id = "g"
model = "freemium"
freemium = { free_calls = 1, then_plan = "nowhere" }
"#,
    )
    .unwrap_err();
    assert_eq!(
        problems,
        vec![
            "plans.f.freemium.then_plan: `u` is a usage plan; calls beyond the free quota can \
             only fall through to a `credits` or `per_call` plan"
                .to_owned(),
            "plans.g.freemium.then_plan: there is no plan `nowhere` in [[plans]]".to_owned(),
        ]
    );
}

#[test]
fn toml_floats_are_refused_by_the_parser() {
    let parsed: Result<File, _> = toml::from_str(
        "[[plans]]\nid = \"f\"\nmodel = \"credits\"\n[plans.prices]\ndefault = 0.5\n",
    );
    assert!(parsed.is_err());
}

#[test]
fn per_call_and_subscription_plans_can_price_units_of_a_meter() {
    let catalog = compile(
        r#"
[[plans]]
id = "tokens"
model = "per_call"
currency = "usd"
[plans.per_call]
meter = "meta"
meta_key = "tokens"
unit_size = 1000
tiering = "graduated"
tiers = [ { up_to = 1000000, price = "0.002" }, { price = "0.001" } ]

[[plans]]
id = "team-bytes"
model = "subscription"
currency = "usd"
prices = { default = "0.01" }
subscription = { included_units = 5000, beyond_included = "overage", meter = "response_bytes", unit_size = 100 }
"#,
    )
    .unwrap();
    let tokens = catalog.plan("tokens").unwrap();
    let Model::PerCall {
        schedule,
        metering: Some(metering),
        ..
    } = &tokens.model
    else {
        panic!("tokens is a metered per_call plan");
    };
    assert_eq!(metering.meter, Meter::Meta("tokens".into()));
    // Tiers are configured in units and kept in blocks of 1,000 tokens.
    assert_eq!(
        schedule,
        &PriceSchedule::Graduated {
            tiers: vec![
                Tier {
                    up_to: Some(1000),
                    price: 2000
                },
                Tier {
                    up_to: None,
                    price: 1000
                }
            ]
        }
    );
    assert_eq!(metering.blocks(0), 0);
    assert_eq!(metering.blocks(1), 1);
    assert_eq!(metering.blocks(1000), 1);
    assert_eq!(metering.blocks(1001), 2);
    assert_eq!(tokens.price_per(), "1000 units");
    // A call of 2,500 tokens after 999 blocks crosses the tier: one block
    // at 0.002, two at 0.001.
    assert_eq!(
        schedule.charge_for(999, metering.blocks(2500)),
        2000 + 2 * 1000
    );

    let team = catalog.plan("team-bytes").unwrap();
    let Model::Subscription(rules) = &team.model else {
        panic!("team-bytes is a subscription");
    };
    assert_eq!(rules.included_calls, 50);
    assert_eq!(rules.included(), (5000, "units"));
    assert_eq!(team.price_per(), "100 bytes");

    let problems = compile(
        r#"
[[plans]]
id = "a"
model = "per_call"
currency = "usd"
per_call = { meter = "request_bytes", unit_size = 100, tiering = "volume", tiers = [ { up_to = 150, price = "0.01" }, { price = "0.005" } ] }

[[plans]]
id = "b"
model = "per_call"
currency = "usd"
prices = { default = "0.01" }
per_call = { unit_size = 10 }

[[plans]]
id = "c"
model = "subscription"
currency = "usd"
prices = { default = "0.01" }
subscription = { included_calls = 5, beyond_included = "overage", meter = "duration_ms" }

[[plans]]
id = "d"
model = "subscription"
currency = "usd"
subscription = { included_units = 1000, meter = "response_bytes" }

[[plans]]
id = "e"
model = "subscription"
currency = "usd"
subscription = { included_units = 10 }

[[plans]]
id = "f"
model = "subscription"
currency = "usd"
prices = { default = "0.01" }
subscription = { included_units = 1050, beyond_included = "overage", meter = "response_bytes", unit_size = 100 }
"#,
    )
    .unwrap_err();
    for expected in [
        "plans.a.per_call.tiers[0].up_to: 150 is not a whole number of blocks of 100 units",
        "plans.b.per_call.unit_size: set only with a `meter` other than `calls`",
        "plans.c.subscription.included_calls: this plan's meter counts units; use `included_units`",
        "plans.c.subscription.included_units: say how many units each period includes",
        "plans.d.subscription.beyond_included: a plan with a `meter` charges overage",
        "plans.e.subscription.included_units: this plan's meter counts calls; use `included_calls`",
        "plans.e.subscription.included_calls: say how many calls each period includes",
        "plans.f.subscription.included_units: 1050 is not a whole number of blocks of 100 units",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
}

#[test]
fn the_status_tool_name_follows_mcp_tool_name_rules() {
    let with = |name: &str| {
        compile(&format!(
            "[billing]\nstatus_tool = {name:?}\n[[plans]]\nid = \"p\"\nmodel = \"credits\"\nprices = {{ default = 1 }}\n"
        ))
    };
    let catalog = with("my-server.billing_status").unwrap();
    assert_eq!(
        catalog.status_tool.as_deref(),
        Some("my-server.billing_status")
    );
    let long = "a".repeat(MAX_TOOL_NAME_CHARS + 1);
    for bad in [
        "",
        "billing status",
        "billing/status",
        "statüs",
        long.as_str(),
    ] {
        let problems = with(bad).unwrap_err();
        assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
        assert!(
            problems[0].starts_with("billing.status_tool: "),
            "{problems:?}"
        );
    }
    assert!(with(&"a".repeat(MAX_TOOL_NAME_CHARS)).is_ok());
    assert_eq!(compile(PLANS).unwrap().status_tool, None);
}
