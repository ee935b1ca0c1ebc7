//! The billing layer and its service: finds the caller's plan, refuses what
//! the plan does not allow, and hands metered calls to the plan's model
//! ([`crate::credits`], [`crate::per_call`]); annotates `tools/list` with
//! prices.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcp_meter_plugin::identity::{CallId, Caller};
use mcp_meter_plugin::ledger::SharedLedger;
use mcp_meter_plugin::ports::SharedClock;
use mcp_meter_plugin::subscription::Subscriptions;
use mcp_meter_plugin::{McpRequest, McpResponse, ProxyError};
use tower::{Layer, Service, ServiceExt};

use crate::grants::GrantedPeriods;
use crate::lanes::Lanes;
use crate::plan::{Catalog, Model, Plan, ToolPrice};
use crate::refusal::{Denial, refuse};
use crate::status_tool::StatusTool;
use crate::{credits, freemium, per_call, subscription, tools_list, usage};

/// What every call needs: the plans, the ledger, the subscriptions and the
/// time.
pub(crate) struct Billing {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) ledger: SharedLedger,
    pub(crate) subscriptions: Arc<dyn Subscriptions>,
    pub(crate) clock: SharedClock,
    /// Periods whose credit grant this process has seen applied.
    pub(crate) granted: GrantedPeriods,
    /// Serializes each customer's ledger writes within this process.
    pub(crate) lanes: Lanes,
    /// `[billing] status_tool`, when configured.
    pub(crate) status_tool: Option<StatusTool>,
}

/// One metered call on its way through a model.
pub(crate) struct MeteredCall {
    pub(crate) request: McpRequest,
    pub(crate) caller: Arc<Caller>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) price: ToolPrice,
    pub(crate) call_id: CallId,
}

/// The layer: charges calls by the caller's plan. Cheap to clone.
#[derive(Clone)]
pub struct BillingLayer {
    billing: Arc<Billing>,
}

impl BillingLayer {
    /// A layer over the compiled plans, the ledger, the subscriptions and
    /// the clock.
    pub fn new(
        catalog: Arc<Catalog>,
        ledger: SharedLedger,
        subscriptions: Arc<dyn Subscriptions>,
        clock: SharedClock,
    ) -> Self {
        Self {
            billing: Arc::new(Billing {
                status_tool: catalog.status_tool.clone().map(StatusTool::new),
                catalog,
                ledger,
                subscriptions,
                clock,
                granted: GrantedPeriods::default(),
                lanes: Lanes::new(),
            }),
        }
    }
}

impl fmt::Debug for BillingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BillingLayer {
    type Service = BillingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BillingService {
            inner,
            billing: self.billing.clone(),
        }
    }
}

/// The service that charges each metered call of its inner service.
#[derive(Clone)]
pub struct BillingService<S> {
    inner: S,
    billing: Arc<Billing>,
}

impl<S: fmt::Debug> fmt::Debug for BillingService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<McpRequest> for BillingService<S>
where
    S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = McpResponse;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: McpRequest) -> Self::Future {
        // The clone that was made ready goes with the request.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let billing = self.billing.clone();
        Box::pin(async move { billing.handle(request, inner).await })
    }
}

impl Billing {
    async fn handle<S>(&self, request: McpRequest, inner: S) -> Result<McpResponse, ProxyError>
    where
        S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Clone + Send,
        S::Future: Send,
    {
        if request.method() == "tools/list" {
            // Prices are shown for the caller's plan, if it is configured.
            let caller = request.extensions.get::<Arc<Caller>>().cloned();
            let plan = caller.as_ref().and_then(|c| {
                self.catalog
                    .plan_for(c.customer.plan_id.as_deref())
                    .ok()
                    .flatten()
                    .cloned()
            });
            let status_tool = self.status_tool.as_ref().filter(|_| caller.is_some());
            let first_page = StatusTool::asks_first_page(&request);
            let response = inner.oneshot(request).await?;
            // Looked at before the plan hides any of the upstream's tools.
            let add_status_tool = status_tool.is_some_and(|t| t.may_add_to(first_page, &response));
            let response = match &plan {
                Some(plan) => tools_list::annotate(response, plan, &self.catalog),
                None => response,
            };
            return Ok(match status_tool {
                Some(tool) if add_status_tool => {
                    tool.add_to(response, tools_list::free_of_charge(plan.as_deref()))
                }
                _ => response,
            });
        }
        if let Some(tool) = &self.status_tool
            && request.message.is_request()
            && tool.is_called_by(&request)
            && let Some(caller) = request.extensions.get::<Arc<Caller>>().cloned()
            && !tool.upstream_has_it(&request, inner.clone()).await
        {
            return Ok(tool.answer(self, &request, &caller).await);
        }
        if !request.message.is_request() || !self.catalog.is_metered(request.method()) {
            return inner.oneshot(request).await;
        }
        let call = match self.admit(request) {
            Ok(call) => call,
            Err(refusal) => return Ok(*refusal),
        };
        let plan = call.plan.clone();
        match &plan.model {
            Model::Credits { .. } | Model::PerCall { .. } => {
                self.charge_on_paid_plan(call, inner).await
            }
            Model::Subscription(rules) => subscription::run(self, call, rules, inner).await,
            Model::Usage(rules) => usage::run(self, call, rules, inner).await,
            Model::Freemium(rules) => freemium::run(self, call, rules.clone(), inner).await,
        }
    }

    /// Charges a call on a plan that prices each call (`credits` or
    /// `per_call`): the caller's own, or a freemium plan's `then_plan`.
    pub(crate) async fn charge_on_paid_plan<S>(
        &self,
        call: MeteredCall,
        inner: S,
    ) -> Result<McpResponse, ProxyError>
    where
        S: Service<McpRequest, Response = McpResponse, Error = ProxyError> + Send,
        S::Future: Send,
    {
        if call.price == ToolPrice::NotIncluded {
            let denial = not_in_plan(call.request.tool_name(), &call.plan);
            return Ok(refuse(&call.request, Some(&call.plan), denial));
        }
        match &call.plan.model {
            Model::Credits { .. } => credits::run(self, call, inner).await,
            Model::PerCall { .. } => per_call::run(self, call, inner).await,
            // A freemium plan's `then_plan` is checked to be one of the two.
            _ => {
                tracing::error!(plan = %call.plan.id, "a call fell through to a plan that does not price calls; refusing it");
                let denial = Denial::new(
                    "plan_unavailable",
                    "Your plan cannot charge this call; contact the operator.",
                );
                Ok(refuse(&call.request, Some(&call.plan), denial))
            }
        }
    }

    /// Finds the caller's plan and the tool's price, or the refusal.
    fn admit(&self, request: McpRequest) -> Result<MeteredCall, Box<McpResponse>> {
        let Some(caller) = request.extensions.get::<Arc<Caller>>().cloned() else {
            let denial = Denial::new(
                "payment_required",
                "This call is billed: send it with your API key or token.",
            );
            return Err(Box::new(refuse(&request, None, denial)));
        };
        let plan = match self.catalog.plan_for(caller.customer.plan_id.as_deref()) {
            Ok(Some(plan)) => plan.clone(),
            Ok(None) => {
                let denial = Denial::new(
                    "payment_required",
                    "Your account has no plan yet, so billed calls are refused.",
                );
                return Err(Box::new(refuse(&request, None, denial)));
            }
            Err(unknown) => {
                tracing::error!(
                    customer = %caller.customer.id,
                    plan = %unknown,
                    "a customer is on a plan that is not configured; their billed calls are refused"
                );
                let denial = Denial::new(
                    "plan_unavailable",
                    format!(
                        "Your plan `{unknown}` is not offered by this server; contact the operator."
                    ),
                )
                .fact("plan", unknown.as_str());
                return Err(Box::new(refuse(&request, None, denial)));
            }
        };
        let price = plan.price_of(request.tool_name());
        if price == ToolPrice::NotIncluded {
            let denial = not_in_plan(request.tool_name(), &plan);
            return Err(Box::new(refuse(&request, Some(&plan), denial)));
        }
        let call_id = request
            .extensions
            .get::<CallId>()
            .cloned()
            .unwrap_or_else(CallId::generate);
        Ok(MeteredCall {
            request,
            caller,
            plan,
            price,
            call_id,
        })
    }
}

/// The refusal of a tool the plan does not include.
fn not_in_plan(tool: Option<&str>, plan: &Plan) -> Denial {
    let tool = tool.unwrap_or_default();
    Denial::new(
        "tool_not_in_plan",
        format!(
            "The tool `{tool}` is not included in your plan `{}`.",
            plan.id
        ),
    )
    .fact("tool", tool)
}
