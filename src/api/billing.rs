//! Plans (read-only, from the configuration, with effective prices) and
//! subscriptions: `GET /plans`, `GET /plans/{id}`,
//! `GET /customers/{id}/subscription`, `PUT /customers/{id}/subscription`
//! (set by hand when no payment provider keeps it current).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use mcp_meter_billing::plan::{Meter, Model, Plan, price_table};
use mcp_meter_plugin::identity::UnixMillis;
use mcp_meter_plugin::ledger::{GrantMode, PriceSchedule};
use mcp_meter_plugin::ports::CREDENTIAL_LEASE;
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, SubscriptionStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::customers::{CustomerPath, customer_id, existing};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Page, time};

/// The routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(plans))
        .routes(routes!(plan))
        .routes(routes!(subscription, set_subscription))
}

/// A plan as the API and `mcp-meter plans show --json` describe it: its
/// model, unit, effective prices and the model's numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    /// The id customers carry.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `credits`, `calls` or the currency (ISO 4217, lower case).
    pub unit: String,
    /// Tool (or `*` pattern) → price in `unit` as a decimal string, `free`
    /// or `not included`; `(default)` is the default price.
    pub prices: BTreeMap<String, String>,
    /// What one price is for: `call`, or with a meter a block of units
    /// (`100 bytes`, `1000 units`, `ms`).
    pub price_per: String,
    /// Where to pay or upgrade.
    pub upgrade_url: Option<String>,
    /// The model and its numbers.
    #[serde(flatten)]
    pub terms: PlanTerms,
}

/// How a plan charges (`model`), with that model's numbers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum PlanTerms {
    /// Prepaid credits.
    Credits {
        /// The periodic grant, if any.
        grant: Option<GrantView>,
    },
    /// Charges accrued per successful call.
    PerCall {
        /// The billing period (`month`, `day`, `hour`).
        #[schema(value_type = String)]
        period: &'static str,
        /// How calls at the default price are priced by their number in
        /// the period (with a meter, tiers' `up_to` count units).
        schedule: PriceSchedule,
        /// The least owed for a period with calls, as a decimal string.
        minimum: Option<String>,
        /// What a call counts when the plan prices units, not calls
        /// (`request_bytes`, `response_bytes`, `duration_ms`, `meta`).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        meter: Option<&'static str>,
        /// Units per priced block, with a meter.
        #[serde(skip_serializing_if = "Option::is_none")]
        unit_size: Option<i64>,
    },
    /// A recurring fee with included calls.
    Subscription {
        /// The recurring fee, as a decimal string.
        fee: Option<String>,
        /// Calls included in each period (a plan that counts calls).
        #[serde(skip_serializing_if = "Option::is_none")]
        included_calls: Option<i64>,
        /// Units included in each period (a plan with a meter).
        #[serde(skip_serializing_if = "Option::is_none")]
        included_units: Option<i64>,
        /// What a call counts when the plan includes units, not calls.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        meter: Option<&'static str>,
        /// Units per priced block, with a meter.
        #[serde(skip_serializing_if = "Option::is_none")]
        unit_size: Option<i64>,
        /// `overage` (charged) or `refuse`.
        #[schema(value_type = String)]
        beyond_included: &'static str,
        /// The billing period (`month`, `day`, `hour`, `subscription`).
        #[schema(value_type = String)]
        period: &'static str,
        /// How long a `past_due` subscription is still served.
        grace_period_hours: i64,
    },
    /// Each call's units reported to the payment provider's meter.
    Usage {
        /// The payment provider's meter.
        event_name: String,
        /// What a call counts (`calls`, `request_bytes`, `response_bytes`,
        /// `duration_ms`, `meta`).
        #[schema(value_type = String)]
        meter: &'static str,
        /// The `_meta` key of a `meta` meter.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta_key: Option<String>,
    },
    /// A free quota per window.
    Freemium {
        /// Free calls per window.
        free_calls: i64,
        /// The window (`month`, `day`, `hour`).
        #[schema(value_type = String)]
        window: &'static str,
        /// Tool → its own quota per window.
        tool_quotas: BTreeMap<String, i64>,
        /// The plan charging calls beyond the quota (`null`: refused).
        then_plan: Option<String>,
    },
}

/// A credits plan's periodic grant.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    /// Credits per period.
    pub amount: i64,
    /// The period (`month`, `day`, `hour`).
    #[schema(value_type = String)]
    pub period: &'static str,
    /// `reset` (what is left expires) or `rollover`.
    #[schema(value_type = String)]
    pub mode: &'static str,
    /// The most credits a rollover carries (`null`: all).
    pub rollover_cap: Option<i64>,
}

impl PlanView {
    /// The description of `plan`.
    pub fn of(plan: &Plan) -> PlanView {
        let terms = match &plan.model {
            Model::PerCall {
                schedule,
                period,
                minimum,
                metering,
            } => PlanTerms::PerCall {
                period: period.name(),
                schedule: metering
                    .as_ref()
                    .map_or_else(|| schedule.clone(), |m| m.in_units(schedule)),
                minimum: minimum.map(|m| plan.unit.format(m)),
                meter: metering.as_ref().map(|m| m.meter.name()),
                unit_size: metering.as_ref().map(|m| m.unit_size),
            },
            Model::Credits { grant, .. } => PlanTerms::Credits {
                grant: grant.map(|g| GrantView {
                    amount: g.amount,
                    period: g.period.name(),
                    mode: match g.mode {
                        GrantMode::Reset => "reset",
                        GrantMode::Rollover { .. } => "rollover",
                    },
                    rollover_cap: match g.mode {
                        GrantMode::Rollover { cap } => cap,
                        GrantMode::Reset => None,
                    },
                }),
            },
            Model::Subscription(rules) => PlanTerms::Subscription {
                fee: rules.fee.map(|f| plan.unit.format(f)),
                included_calls: rules.metering.is_none().then_some(rules.included_calls),
                included_units: rules.metering.as_ref().map(|_| rules.included().0),
                meter: rules.metering.as_ref().map(|m| m.meter.name()),
                unit_size: rules.metering.as_ref().map(|m| m.unit_size),
                beyond_included: if rules.overage { "overage" } else { "refuse" },
                period: rules.period.name(),
                grace_period_hours: rules.grace_ms / 3_600_000,
            },
            Model::Usage(rules) => PlanTerms::Usage {
                event_name: rules.event_name.clone(),
                meter: rules.meter.name(),
                meta_key: match &rules.meter {
                    Meter::Meta(key) => Some(key.clone()),
                    _ => None,
                },
            },
            Model::Freemium(rules) => PlanTerms::Freemium {
                free_calls: rules.free_calls,
                window: rules.window.name(),
                tool_quotas: rules.tool_quotas.iter().cloned().collect(),
                then_plan: rules.then_plan.clone(),
            },
        };
        PlanView {
            id: plan.id.clone(),
            name: plan.name.clone(),
            unit: plan.unit.as_str().to_owned(),
            prices: price_table(plan),
            price_per: plan.price_per(),
            upgrade_url: plan.upgrade_url.clone(),
            terms,
        }
    }
}

#[utoipa::path(get, path = "/plans", tag = "billing",
    summary = "The configured plans",
    responses(
        (status = 200, description = "Every plan; `next_cursor` is always null", body = Page<PlanView>),
    ))]
async fn plans(State(state): State<ApiState>) -> Json<Page<PlanView>> {
    Json(Page {
        data: state.catalog.plans().map(|p| PlanView::of(p)).collect(),
        next_cursor: None,
    })
}

#[utoipa::path(get, path = "/plans/{id}", tag = "billing",
    summary = "One configured plan",
    params(("id" = String, Path, description = "The plan's id.")),
    responses(
        (status = 200, description = "The plan", body = PlanView),
        (status = 404, description = "No such plan", body = ErrorBody),
    ))]
async fn plan(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    state
        .catalog
        .plan(&id)
        .map(|p| Json(PlanView::of(p)))
        .ok_or_else(|| ApiError::not_found(format!("there is no plan {id:?} in the configuration")))
}

#[utoipa::path(get, path = "/customers/{id}/subscription", tag = "billing",
    summary = "A customer's subscription",
    params(CustomerPath),
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = 400, description = "Not a customer id", body = ErrorBody),
        (status = 404, description = "No such customer, or it has no subscription", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]

async fn subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Subscription>, ApiError> {
    let id = customer_id(&id)?;
    existing(&state, &id).await?;
    state
        .store
        .subscription(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("customer {id} has no subscription")))
}

/// A subscription set by hand.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    /// A configured subscription plan's id.
    plan: String,
    /// Where it stands.
    #[schema(value_type = SubscriptionStatus)]
    status: String,
    /// When it started (RFC 3339; default: now, or as it was).
    #[schema(format = DateTime)]
    started_at: Option<String>,
    /// The current period's start (RFC 3339; with `period_end`).
    #[schema(format = DateTime)]
    period_start: Option<String>,
    /// The current period's end (RFC 3339; after `period_start`).
    #[schema(format = DateTime)]
    period_end: Option<String>,
    /// The payment provider's subscription id.
    external_id: Option<String>,
}

#[utoipa::path(put, path = "/customers/{id}/subscription", tag = "billing",
    summary = "Set a customer's subscription by hand",
    params(CustomerPath),
    request_body = SubscriptionBody,
    responses(
        (status = 200, description = "The subscription as set", body = Subscription),
        (status = 400, description = "A bad id or body, or not a subscription plan", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
        (status = 409, description = "A conflicting change", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "The database refused a value", body = ErrorBody),
        (status = 503, description = "The database is not answering", body = ErrorBody),
    ))]

async fn set_subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubscriptionBody>,
) -> Result<Json<Subscription>, ApiError> {
    let id = customer_id(&id)?;
    match state.catalog.plan(&body.plan).map(|p| &p.model) {
        Some(Model::Subscription(_)) => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "plan {:?} is a {} plan, not a subscription plan",
                body.plan,
                other.name()
            )));
        }
        None => {
            return Err(ApiError::invalid(format!(
                "there is no plan {:?} in the configuration",
                body.plan
            )));
        }
    }
    let status = SubscriptionStatus::parse(&body.status).ok_or_else(|| {
        ApiError::invalid(format!(
            "`status` {:?} must be active, trialing, past_due, unpaid, canceled, incomplete or paused",
            body.status
        ))
    })?;
    let current_period = match (&body.period_start, &body.period_end) {
        (Some(start), Some(end)) => {
            let (start, end) = (time("period_start", start)?, time("period_end", end)?);
            if end.0 <= start.0 {
                return Err(ApiError::invalid(
                    "`period_end` must be after `period_start`",
                ));
            }
            Some((start, end))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "give both `period_start` and `period_end`, or neither",
            ));
        }
    };
    existing(&state, &id).await?;
    let change = SubscriptionChange {
        customer_id: id,
        plan_id: body.plan,
        status,
        started_at: body
            .started_at
            .as_deref()
            .map(|t| time("started_at", t))
            .transpose()?,
        current_period,
        external_id: body.external_id,
        at: UnixMillis::now(),
        provider_event_at: None,
    };
    let subscription = state.store.set_subscription(&change).await?;
    // The customer's plan moved: instances may act on the plan they read up
    // to a lease ago.
    tokio::time::sleep(CREDENTIAL_LEASE).await;
    Ok(Json(subscription))
}
