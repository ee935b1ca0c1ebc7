//! What the built-in plugins share across sessions: the authenticator, the
//! usage recorder's layer and the store behind them. Built once at start
//! (see `run.rs`), handed to [`super::Proxy`].

use std::sync::Arc;

use mcp_meter_auth::Authenticator;
use mcp_meter_billing::BillingLayer;
use mcp_meter_usage_recorder::UsageRecorderLayer;

use crate::store::Store;
use crate::stripe::StripeRuntime;

/// Shared services for the plugin stack; all absent for a passthrough proxy
/// (no `[database]`).
#[derive(Clone, Default)]
pub struct PluginServices {
    /// The store, for readiness checks.
    pub store: Option<Arc<dyn Store>>,
    /// Checks credentials (the `auth` plugin and the HTTP transport).
    pub authenticator: Option<Arc<Authenticator>>,
    /// The usage recorder's layer (its writer task runs elsewhere).
    pub recorder: Option<UsageRecorderLayer>,
    /// The billing layer (plans and the ledger).
    pub billing: Option<BillingLayer>,
    /// Stripe (`[stripe]`): webhooks, checkout, meter events.
    pub stripe: Option<Arc<StripeRuntime>>,
    /// What `/metrics` counts (with a `[database]`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for PluginServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginServices")
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("authenticator", &self.authenticator.is_some())
            .field("recorder", &self.recorder.is_some())
            .field("billing", &self.billing.is_some())
            .field("stripe", &self.stripe.is_some())
            .finish()
    }
}
