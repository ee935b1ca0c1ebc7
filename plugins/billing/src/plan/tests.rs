use super::*;

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

#[test]
fn models_not_in_this_version_are_refused_clearly() {
    let problems = compile("[[plans]]\nid = \"s\"\nmodel = \"subscription\"\ncurrency = \"usd\"\n")
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("plans.s.model: the `subscription` model is not available"));
}

#[test]
fn toml_floats_are_refused_by_the_parser() {
    let parsed: Result<File, _> = toml::from_str(
        "[[plans]]\nid = \"f\"\nmodel = \"credits\"\n[plans.prices]\ndefault = 0.5\n",
    );
    assert!(parsed.is_err());
}
