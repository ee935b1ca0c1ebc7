//! Stripe: the webhook endpoint and what its events do.
//!
//! * [`config`]: the `[stripe]` section.
//! * [`signature`]: `Stripe-Signature` verification on the raw body.
//! * [`webhook`]: `POST /webhooks/stripe`, which verifies, stores each
//!   event once by its id and answers at once.
//! * [`events`] and [`worker`]: a background task applies the stored events
//!   (credit packs, subscriptions, invoices), retrying failures with
//!   backoff.
//!
//! [`StripeRuntime`] ties them together for the HTTP router.

pub mod config;
pub mod events;
pub mod signature;
pub mod webhook;
pub mod worker;

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{CreditPack, StripeConfig};

use crate::config::Config;
use crate::store::Store;
use events::Processor;

/// What the webhook endpoint and its worker share: the store, how events
/// are applied, and the signal that wakes the worker.
pub struct StripeRuntime {
    store: Arc<dyn Store>,
    processor: Arc<Processor>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl StripeRuntime {
    /// The runtime for `config`'s `[stripe]` section over `store`; `None`
    /// without a `[stripe]` section. The worker stops when `shutdown` is
    /// cancelled.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Option<Arc<Self>> {
        let stripe = config.stripe.clone()?;
        let subscription_plans = config
            .plans
            .iter()
            .filter(|plan| plan.model == "subscription")
            .map(|plan| plan.id.clone())
            .collect();
        let processor = Processor::new(
            stripe,
            subscription_plans,
            config.billing.default_plan.as_deref(),
        );
        Some(Arc::new(Self {
            store,
            processor: Arc::new(processor),
            wake: Arc::new(Notify::new()),
            shutdown,
            worker: Mutex::new(None),
        }))
    }

    /// Starts the worker unless it runs (or ran and stopped at shutdown).
    /// Needs a Tokio runtime; without one (a router built outside any
    /// runtime) it is started by the first delivery instead.
    pub fn ensure_worker(&self) {
        let Ok(mut worker) = self.worker.lock() else {
            // A panic while holding the lock: a worker was being started.
            return;
        };
        if worker.as_ref().is_some_and(|w| !w.is_finished()) || self.shutdown.is_cancelled() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if worker.is_some() {
            tracing::warn!("the Stripe webhook worker had stopped; starting it again");
        }
        *worker = Some(worker::spawn_worker(
            self.store.clone(),
            self.processor.clone(),
            self.wake.clone(),
            self.shutdown.clone(),
        ));
    }
}
