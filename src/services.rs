//! Starting and stopping what the plugins need, from the configuration: the
//! store (opened and migrated), the authenticator and its `last_used_at`
//! flusher, the billing layer and its recovery sweep (abandoned
//! reservations, lost usage records), and the usage recorder's writer task.
//!
//! Without a `[database]` nothing is started and the proxy is a passthrough.
//! With one, a database that cannot be opened stops the start with a clear
//! error (and a non-zero exit), and on shutdown every queued usage record is
//! written before the process ends.

use std::sync::Arc;
use std::time::Duration;

use mcp_meter_auth::Authenticator;
use mcp_meter_auth::jwt::JwtConfigError;
use mcp_meter_billing::{BillingLayer, Catalog, RecoverySettings, spawn_recovery};
use mcp_meter_plugin::ledger::SharedLedger;
use mcp_meter_plugin::ports::{SharedClock, SystemClock};
use mcp_meter_plugin::subscription::Subscriptions;
use mcp_meter_usage_recorder::{RecorderHandle, UsageRecorder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatabaseConfig};
use crate::engine::PluginServices;
use crate::metrics::{Metrics, ObservingSink};
use crate::store::{self, OpenError, Store, StoreOptions};
use crate::stripe::StripeRuntime;
use crate::stripe::client::ClientBuildError;

/// Why the plugin services cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The database cannot be opened or migrated.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The JWT settings cannot work.
    #[error(transparent)]
    Jwt(#[from] JwtConfigError),
    /// The plans do not compile (`mcp-meter check` lists the same).
    #[error("the plans have problems:\n  {}", .0.join("\n  "))]
    Plans(Vec<String>),
    /// The Stripe client cannot be built.
    #[error(transparent)]
    Stripe(#[from] ClientBuildError),
}

/// The running services; [`RunningServices::stop`] ends them in order.
pub struct RunningServices {
    services: PluginServices,
    recorder: Option<RecorderHandle>,
    flusher: Option<JoinHandle<()>>,
    recovery: Option<JoinHandle<()>>,
    stripe: Option<Arc<StripeRuntime>>,
}

impl std::fmt::Debug for RunningServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServices")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// The store options a `[database]` section gives.
pub fn store_options(database: &DatabaseConfig) -> StoreOptions {
    StoreOptions {
        url: database.url.clone(),
        max_connections: database.max_connections,
        acquire_timeout: Duration::from_secs(database.acquire_timeout_secs),
    }
}

/// Opens the configured database, if any, and starts what the configured
/// plugins need.
pub async fn start(config: &Config) -> Result<RunningServices, ServicesError> {
    let Some(database) = &config.database else {
        return Ok(RunningServices {
            services: PluginServices::default(),
            recorder: None,
            flusher: None,
            recovery: None,
            stripe: None,
        });
    };
    let store: Arc<dyn Store> = store::open(&store_options(database)).await?;
    tracing::info!(backend = store.backend().as_str(), "database ready");
    let clock: SharedClock = Arc::new(SystemClock);
    let order = config.plugin_order();
    let wants = |name: &str| order.iter().any(|n| n == name);
    let mut running = RunningServices {
        services: PluginServices {
            store: Some(store.clone()),
            authenticator: None,
            recorder: None,
            billing: None,
            stripe: None,
            metrics: None,
        },
        recorder: None,
        flusher: None,
        recovery: None,
        stripe: None,
    };
    let metrics = Arc::new(Metrics::new(config.metrics.clone()));
    running.services.metrics = Some(metrics.clone());
    let stripe = StripeRuntime::new(config, store.clone(), CancellationToken::new())?;
    if let Some(stripe) = &stripe {
        stripe.start();
    }
    if wants("auth") {
        let authenticator = Arc::new(Authenticator::new(
            config.auth.clone(),
            store.clone(),
            clock.clone(),
        )?);
        if let Some(jwt) = authenticator.jwt() {
            jwt.prefetch().await;
        }
        running.flusher = Some(authenticator.spawn_last_used_flusher());
        running.services.authenticator = Some(authenticator);
    }
    if wants("billing") {
        let mut catalog =
            Catalog::compile(&config.billing, &config.plans).map_err(ServicesError::Plans)?;
        if let Some(offers) = stripe.as_ref().and_then(|s| s.refusal_offers()) {
            catalog.set_checkout_offers(offers);
        }
        let ledger: SharedLedger = store.clone();
        let subscriptions: Arc<dyn Subscriptions> = store.clone();
        let settings = RecoverySettings {
            recover_usage: wants("usage_recorder"),
            ..RecoverySettings::new(Duration::from_secs(
                config.billing.abandon_reservations_after_secs(),
            ))
        };
        running.recovery = Some(spawn_recovery(ledger.clone(), clock.clone(), settings));
        running.services.billing = Some(BillingLayer::new(
            Arc::new(catalog),
            ledger,
            subscriptions,
            clock.clone(),
        ));
    }
    if wants("usage_recorder") {
        // Calls are counted for /metrics as their records are written.
        let sink = Arc::new(ObservingSink::new(store.clone(), metrics.clone()));
        let (layer, handle) = UsageRecorder::start(sink, clock, config.usage.clone());
        let read = handle.stats_reader();
        metrics.set_usage_stats(Box::new(move || {
            let stats = read();
            (stats.queued, stats.written, stats.failed_batches)
        }));
        running.services.recorder = Some(layer);
        running.recorder = Some(handle);
    }
    running.services.stripe = stripe.clone();
    running.stripe = stripe;
    Ok(running)
}

impl RunningServices {
    /// What to hand the proxy.
    pub fn services(&self) -> PluginServices {
        self.services.clone()
    }

    /// Writes what is still queued (usage records, `last_used_at`), waiting
    /// at most `grace` for the database. Call after in-flight calls ended.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(recovery) = self.recovery.take() {
            recovery.abort();
        }
        if let Some(stripe) = self.stripe.take() {
            stripe.stop(grace).await;
        }
        // The proxy and its layers are gone or idle; drop our clone so the
        // recorder's queue can close.
        self.services.recorder = None;
        if let Some(recorder) = self.recorder.take() {
            let report = recorder.shutdown(grace).await;
            if report.lost > 0 {
                tracing::error!(
                    written = report.written,
                    lost = report.lost,
                    "usage records could not be written before shutdown"
                );
            } else {
                tracing::info!(written = report.written, "usage records flushed");
            }
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        if let Some(authenticator) = &self.services.authenticator {
            authenticator.flush_last_used().await;
        }
    }
}
