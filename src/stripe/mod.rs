//! Stripe: the webhook endpoint and what its events do, and the outbound
//! calls (customers, Checkout, meter events).
//!
//! * [`config`]: the `[stripe]` section.
//! * [`signature`]: `Stripe-Signature` verification on the raw body.
//! * [`webhook`]: `POST /webhooks/stripe`, which verifies, stores each
//!   event once by its id and answers at once.
//! * [`events`] and [`worker`]: a background task applies the stored events
//!   (credit packs, subscriptions, invoices), retrying failures with
//!   backoff.
//! * [`client`]: the typed Stripe client; [`customers`]: Stripe customers
//!   created on demand; [`checkout`]: Checkout Sessions; [`pay_link`]: the
//!   signed `/pay/<token>` links refusals carry; [`pay`]: the routes that
//!   open them (`GET /pay/<token>`, `POST /api/v1/me/checkout`).
//! * [`meter_sender`]: drains the meter outbox into Stripe Meters;
//!   [`invoicer`]: per-call plans' closed periods as invoice items.
//! * [`reconcile`]: compares local state with Stripe (`mcp-meter stripe
//!   reconcile`) and repairs what it can.
//!
//! [`StripeRuntime`] ties them together.

pub mod checkout;
pub mod client;
pub mod config;
pub mod customers;
pub mod events;
pub mod invoicer;
pub mod meter_sender;
pub mod pay;
pub mod pay_link;
pub mod reconcile;
pub mod signature;
pub mod webhook;
pub mod worker;

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{CheckoutItem, CreditPack, StripeConfig};

use crate::config::Config;
use crate::store::Store;
use checkout::Checkout;
use client::{ClientBuildError, StripeApi};
use events::Processor;
use invoicer::{InvoicedPlan, Invoicer};
use meter_sender::MeterSender;
use pay_link::PayLinks;

/// What the Stripe routes and workers share: the store, how events are
/// applied, the signal that wakes the webhook worker, and the outbound
/// client with what uses it.
pub struct StripeRuntime {
    store: Arc<dyn Store>,
    processor: Arc<Processor>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
    api: Option<StripeApi>,
    checkout: Option<Checkout>,
    pay_links: Option<PayLinks>,
    sender: Mutex<Option<JoinHandle<()>>>,
    invoicer: Mutex<Option<Invoicer>>,
    invoicer_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for StripeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeRuntime")
            .field("outbound", &self.api.is_some())
            .field("checkout", &self.checkout.is_some())
            .field("pay_links", &self.pay_links.is_some())
            .finish_non_exhaustive()
    }
}

/// Makes the checkout links refusals carry: `[stripe] checkout_on_refusal`
/// names what each plan's refused customers are offered.
struct RefusalOffers {
    links: PayLinks,
    config: StripeConfig,
}

impl mcp_meter_billing::CheckoutOffers for RefusalOffers {
    fn checkout_url(
        &self,
        customer: &mcp_meter_plugin::identity::CustomerId,
        plan: &str,
    ) -> Option<String> {
        let item = self.config.refusal_offer(plan)?;
        self.links.link(
            customer.as_str(),
            &item,
            mcp_meter_plugin::identity::UnixMillis::now().0 / 1000,
        )
    }
}

impl StripeRuntime {
    /// The runtime for `config`'s `[stripe]` section over `store`; `None`
    /// without a `[stripe]` section. Its workers stop when `shutdown` is
    /// cancelled. An outbound client that cannot be built is an error.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Option<Arc<Self>>, ClientBuildError> {
        let Some(stripe) = config.stripe.clone() else {
            return Ok(None);
        };
        let api = match StripeApi::new(&stripe) {
            Ok(api) => Some(api),
            Err(ClientBuildError::NoSecretKey) => None,
            Err(error) => return Err(error),
        };
        let checkout = api
            .clone()
            .and_then(|api| Checkout::new(api, store.clone(), stripe.clone()).ok());
        let invoicer = api.clone().and_then(|api| {
            let plans = mcp_meter_billing::Catalog::compile(&config.billing, &config.plans)
                .map(|catalog| InvoicedPlan::all(&catalog))
                .unwrap_or_default();
            Invoicer::new(
                store.clone(),
                api,
                plans,
                std::time::Duration::from_secs(stripe.invoice_delay_secs),
                stripe.meter_max_attempts,
            )
        });
        let pay_links = if checkout.is_some() {
            PayLinks::new(&stripe)
        } else {
            None
        };
        let processor = Processor::for_config(stripe, config);
        Ok(Some(Arc::new(Self {
            store,
            processor: Arc::new(processor),
            wake: Arc::new(Notify::new()),
            shutdown,
            worker: Mutex::new(None),
            api,
            checkout,
            pay_links,
            sender: Mutex::new(None),
            invoicer: Mutex::new(invoicer),
            invoicer_task: Mutex::new(None),
        })))
    }

    /// The checkout-link maker for refusals, when `[stripe]` offers
    /// something on refusal and payment links can be made.
    pub fn refusal_offers(&self) -> Option<Arc<dyn mcp_meter_billing::CheckoutOffers>> {
        let config = self.processor.config();
        if config.checkout_on_refusal.is_empty() {
            return None;
        }
        Some(Arc::new(RefusalOffers {
            links: self.pay_links.clone()?,
            config: config.clone(),
        }))
    }

    /// Checkout, when configured.
    pub fn checkout(&self) -> Option<&Checkout> {
        self.checkout.as_ref()
    }

    /// The payment links, when configured.
    pub fn pay_links(&self) -> Option<&PayLinks> {
        self.pay_links.as_ref()
    }

    /// Starts the meter outbox's sender unless it runs; without a secret
    /// key there is none (events wait in the outbox).
    pub fn ensure_meter_sender(&self) {
        let Some(api) = &self.api else {
            return;
        };
        let Ok(mut sender) = self.sender.lock() else {
            return;
        };
        if sender.as_ref().is_some_and(|s| !s.is_finished()) || self.shutdown.is_cancelled() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let max_attempts = self.processor.config().meter_max_attempts;
        *sender = Some(
            MeterSender::new(self.store.clone(), api.clone(), max_attempts)
                .spawn(self.shutdown.clone()),
        );
    }

    /// Starts the background tasks: the webhook worker, the meter sender
    /// and the invoicer (once; it needs a Tokio runtime).
    pub fn start(&self) {
        self.ensure_worker();
        self.ensure_meter_sender();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let invoicer = self.invoicer.lock().ok().and_then(|mut i| i.take());
        if let (Some(invoicer), Ok(mut task)) = (invoicer, self.invoicer_task.lock()) {
            *task = Some(invoicer.spawn(self.shutdown.clone()));
        }
    }

    /// Stops the background tasks and waits (at most `grace`) for them to
    /// finish what they are doing.
    pub async fn stop(&self, grace: std::time::Duration) {
        self.shutdown.cancel();
        let handles: Vec<JoinHandle<()>> = [&self.worker, &self.sender, &self.invoicer_task]
            .into_iter()
            .filter_map(|slot| slot.lock().ok().and_then(|mut h| h.take()))
            .collect();
        for handle in handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout(grace, handle).await.is_err() {
                abort.abort();
            }
        }
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
