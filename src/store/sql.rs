//! [`SqlStore`]: the ports and the admin methods over one backend's pool.
//! Each method is one call into `customers`, `keys`, `usage`, `ledger`,
//! `subscriptions` or `outbox`, with the fault mapped to the contract's
//! [`StoreError`].

use async_trait::async_trait;
use mcp_meter_plugin::identity::{
    ApiKeyRecord, Customer, CustomerId, CustomerStatus, KeyId, UnixMillis,
};
use mcp_meter_plugin::ledger::{
    Accrual, AccrueOutcome, BalanceChange, ChangeOutcome, CounterOutcome, CounterStep,
    GrantOutcome, HeldReservation, Ledger, LedgerEntry, LedgerFilter, MeterOutcome, MeteredUsage,
    PeriodicGrant, QuotaOutcome, QuotaRelease, QuotaTake, ReleaseOutcome, Reservation,
    ReserveOutcome, SettleOutcome, Settlement, UnrecordedCharge,
};
use mcp_meter_plugin::outbox::{MeterEvent, MeterOutbox, OutboxFilter};
use mcp_meter_plugin::ports::{
    CustomerDirectory, KeyGrant, NewCustomer, StoreError, UsageRecord, UsageSink,
};
use mcp_meter_plugin::subscription::{Subscription, SubscriptionChange, Subscriptions};
use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::{Mutex, MutexGuard};

use super::driver::Driver;
use super::error::Fault;
use super::group_commit::GroupCommit;
use super::ledger::{LedgerOutcome, LedgerWrite};
use super::statement::Statement;
use super::{
    Analytics, CustomerSpend, GroupAmount, LedgerGroup, OutcomeCount, Span, UsageTotals, analytics,
};
use super::{
    Backend, CustomerUpdate, DailyUsage, NewApiKey, Store, UsageFilter, customers, keys, ledger,
    outbox, subscriptions, usage,
};
use super::{
    InvoiceItemRow, InvoiceOutbox, NewInvoiceItem, NewWebhookEvent, PeriodCharges, WebhookEvent,
    WebhookFilter, WebhookStore, invoices, webhooks,
};

/// The store over a pool of one backend.
pub(super) struct SqlStore<DB: Driver> {
    pool: Pool<DB>,
    /// On a one-writer database, this process's writers take turns here.
    writers: Arc<Mutex<()>>,
    /// The hot path's ledger writes, written in batches.
    calls: GroupCommit,
}

impl<DB: Driver> SqlStore<DB> {
    /// A store over `pool` (already migrated), with its ledger writer
    /// started on the current runtime.
    pub(super) fn new(pool: Pool<DB>) -> Self {
        let writers = Arc::new(Mutex::new(()));
        Self {
            calls: GroupCommit::start(pool.clone(), writers.clone()),
            pool,
            writers,
        }
    }

    /// Applies a hot-path ledger write through the ledger writer (group
    /// commit) and picks its outcome.
    async fn batched<T>(
        &self,
        write: LedgerWrite,
        pick: impl FnOnce(LedgerOutcome) -> Option<T>,
    ) -> Result<T, StoreError> {
        match self.calls.write(write).await {
            Ok(outcome) => pick(outcome).ok_or_else(|| {
                StoreError::Other("the ledger writer answered with another kind of outcome".into())
            }),
            Err(fault) => Err(fault.into_store::<DB>()),
        }
    }

    /// Waits for this process's turn to write, on a one-writer database
    /// ([`Driver::ONE_WRITER`]); elsewhere writers go straight to the
    /// database, which orders them itself.
    async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        if DB::ONE_WRITER {
            Some(self.writers.lock().await)
        } else {
            None
        }
    }
}

/// A result with its fault in the contract's terms.
fn done<DB: Driver, T>(result: Result<T, Fault>) -> Result<T, StoreError> {
    result.map_err(Fault::into_store::<DB>)
}

#[async_trait]
impl<DB: Driver> CustomerDirectory for SqlStore<DB> {
    async fn find_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyGrant>, StoreError> {
        done::<DB, _>(keys::find_by_hash(&self.pool, hash).await)
    }

    async fn find_customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError> {
        done::<DB, _>(customers::find(&self.pool, id).await)
    }

    async fn find_customer_by_subject(
        &self,
        subject: &str,
    ) -> Result<Option<Customer>, StoreError> {
        done::<DB, _>(customers::find_by_subject(&self.pool, subject).await)
    }

    async fn provision_customer(&self, new: NewCustomer) -> Result<Customer, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(customers::provision(&self.pool, new).await)
    }

    async fn touch_keys(&self, used: &[(KeyId, UnixMillis)]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(keys::touch(&self.pool, used).await)
    }
}

#[async_trait]
impl<DB: Driver> UsageSink for SqlStore<DB> {
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(usage::record(&self.pool, batch).await.map(drop))
    }
}

#[async_trait]
impl<DB: Driver> Ledger for SqlStore<DB> {
    async fn reserve(&self, reservation: &Reservation) -> Result<ReserveOutcome, StoreError> {
        let write = LedgerWrite::Reserve(reservation.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::Reserve(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn settle(&self, settlement: &Settlement) -> Result<SettleOutcome, StoreError> {
        let write = LedgerWrite::Settle(settlement.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::Settle(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn change_balance(&self, change: &BalanceChange) -> Result<ChangeOutcome, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(ledger::change_balance(&self.pool, change).await)
    }

    async fn balance(&self, customer: &CustomerId) -> Result<i64, StoreError> {
        done::<DB, _>(ledger::balance(&self.pool, customer).await)
    }

    async fn accrue(&self, accrual: &Accrual) -> Result<AccrueOutcome, StoreError> {
        let write = LedgerWrite::Accrue(accrual.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::Accrue(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn step_counter(&self, step: &CounterStep) -> Result<CounterOutcome, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(ledger::step_counter(&self.pool, step).await)
    }

    async fn counter(
        &self,
        customer: &CustomerId,
        counter: &str,
        period_start: UnixMillis,
    ) -> Result<i64, StoreError> {
        done::<DB, _>(ledger::counter(&self.pool, customer, counter, period_start).await)
    }

    async fn entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, StoreError> {
        done::<DB, _>(ledger::entries(&self.pool, filter).await)
    }

    async fn take_quota(&self, take: &QuotaTake) -> Result<QuotaOutcome, StoreError> {
        let write = LedgerWrite::TakeQuota(take.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::TakeQuota(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn release_quota(&self, release: &QuotaRelease) -> Result<ReleaseOutcome, StoreError> {
        let write = LedgerWrite::ReleaseQuota(release.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::ReleaseQuota(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn meter_usage(&self, usage: &MeteredUsage) -> Result<MeterOutcome, StoreError> {
        let write = LedgerWrite::MeterUsage(usage.clone());
        self.batched(write, |outcome| match outcome {
            LedgerOutcome::MeterUsage(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn periodic_grant(&self, grant: &PeriodicGrant) -> Result<GrantOutcome, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(ledger::periodic_grant(&self.pool, grant).await)
    }

    async fn held_reservations(
        &self,
        before: UnixMillis,
        limit: u32,
    ) -> Result<Vec<HeldReservation>, StoreError> {
        done::<DB, _>(ledger::held_reservations(&self.pool, before, limit).await)
    }

    async fn unrecorded_charges(
        &self,
        since: UnixMillis,
        before: UnixMillis,
        limit: u32,
    ) -> Result<Vec<UnrecordedCharge>, StoreError> {
        done::<DB, _>(ledger::unrecorded_charges(&self.pool, since, before, limit).await)
    }

    async fn record_recovered_call(&self, charge: &UnrecordedCharge) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(ledger::record_recovered_call(&self.pool, charge).await)
    }
}

#[async_trait]
impl<DB: Driver> Subscriptions for SqlStore<DB> {
    async fn subscription(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<Subscription>, StoreError> {
        done::<DB, _>(subscriptions::find(&self.pool, customer).await)
    }

    async fn set_subscription(
        &self,
        change: &SubscriptionChange,
    ) -> Result<Subscription, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(subscriptions::set(&self.pool, change).await)
    }
}

#[async_trait]
impl<DB: Driver> MeterOutbox for SqlStore<DB> {
    async fn due_meter_events(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<MeterEvent>, StoreError> {
        done::<DB, _>(outbox::due(&self.pool, now, limit).await)
    }

    async fn mark_meter_events_sent(&self, ids: &[i64], at: UnixMillis) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(outbox::mark_sent(&self.pool, ids, at).await)
    }

    async fn mark_meter_event_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(outbox::mark_failed(&self.pool, id, error, retry_at).await)
    }

    async fn retry_meter_event(&self, id: i64, now: UnixMillis) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(outbox::retry(&self.pool, id, now).await)
    }

    async fn meter_events(&self, filter: &OutboxFilter) -> Result<Vec<MeterEvent>, StoreError> {
        done::<DB, _>(outbox::list(&self.pool, filter).await)
    }

    async fn claim_meter_batch(&self, ids: &[i64], batch: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(outbox::claim_batch(&self.pool, ids, batch).await)
    }

    async fn meter_batch(&self, batch: &str) -> Result<Vec<MeterEvent>, StoreError> {
        done::<DB, _>(outbox::batch(&self.pool, batch).await)
    }

    async fn mark_meter_batch_failed(
        &self,
        batch: &str,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(outbox::mark_batch_failed(&self.pool, batch, error, retry_at).await)
    }
}

#[async_trait]
impl<DB: Driver> Store for SqlStore<DB> {
    fn backend(&self) -> Backend {
        DB::BACKEND
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = async {
            let mut conn = self.pool.acquire().await?;
            Statement::<DB>::new("SELECT 1")
                .fetch_all(&mut conn)
                .await?;
            Ok(())
        };
        done::<DB, _>(ping.await)
    }

    async fn queue_counts(&self) -> Result<Vec<(&'static str, &'static str, i64)>, StoreError> {
        done::<DB, _>(super::queue::counts(&self.pool).await)
    }

    async fn create_customer(&self, new: NewCustomer) -> Result<Customer, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(customers::create(&self.pool, new).await)
    }

    async fn list_customers(
        &self,
        after: Option<&CustomerId>,
        limit: u32,
    ) -> Result<Vec<Customer>, StoreError> {
        done::<DB, _>(customers::list(&self.pool, after, limit).await)
    }

    async fn update_customer(
        &self,
        id: &CustomerId,
        update: &CustomerUpdate,
    ) -> Result<Customer, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(customers::update(&self.pool, id, update).await)
    }

    async fn set_customer_status(
        &self,
        id: &CustomerId,
        status: CustomerStatus,
    ) -> Result<Customer, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(customers::set_status(&self.pool, id, status).await)
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(keys::create(&self.pool, new).await)
    }

    async fn list_api_keys(
        &self,
        customer: Option<&CustomerId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        done::<DB, _>(keys::list(&self.pool, customer).await)
    }

    async fn revoke_api_key(&self, id: &KeyId, at: UnixMillis) -> Result<ApiKeyRecord, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(keys::revoke(&self.pool, id, at).await)
    }

    async fn usage_records(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        done::<DB, _>(usage::records(&self.pool, filter).await)
    }

    async fn usage_daily(&self, filter: &UsageFilter) -> Result<Vec<DailyUsage>, StoreError> {
        done::<DB, _>(usage::daily(&self.pool, filter).await)
    }

    async fn ledger_entries_between(
        &self,
        filter: &LedgerFilter,
        since: Option<UnixMillis>,
        until: Option<UnixMillis>,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        done::<DB, _>(ledger::entries_between(&self.pool, filter, since, until).await)
    }
}

#[async_trait]
impl<DB: Driver> InvoiceOutbox for SqlStore<DB> {
    async fn period_charges(
        &self,
        plan_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> Result<Vec<PeriodCharges>, StoreError> {
        done::<DB, _>(invoices::period_charges(&self.pool, plan_id, start, end).await)
    }

    async fn queue_invoice_item(&self, new: &NewInvoiceItem) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(invoices::queue(&self.pool, new).await)
    }

    async fn due_invoice_items(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<InvoiceItemRow>, StoreError> {
        done::<DB, _>(invoices::due(&self.pool, now, limit).await)
    }

    async fn mark_invoice_item_sent(
        &self,
        id: i64,
        external_id: Option<&str>,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(invoices::mark_sent(&self.pool, id, external_id, at).await)
    }

    async fn mark_invoice_item_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(invoices::mark_failed(&self.pool, id, error, retry_at).await)
    }

    async fn retry_invoice_item(&self, id: i64, now: UnixMillis) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(invoices::retry(&self.pool, id, now).await)
    }

    async fn invoice_items(
        &self,
        filter: &OutboxFilter,
    ) -> Result<Vec<InvoiceItemRow>, StoreError> {
        done::<DB, _>(invoices::list(&self.pool, filter).await)
    }
}

#[async_trait]
impl<DB: Driver> WebhookStore for SqlStore<DB> {
    async fn insert_webhook_event(&self, new: &NewWebhookEvent) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(webhooks::insert(&self.pool, new).await)
    }

    async fn retry_webhook_event(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(webhooks::retry(&self.pool, id, now).await)
    }

    async fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>, StoreError> {
        done::<DB, _>(webhooks::find(&self.pool, id).await)
    }

    async fn due_webhook_events(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError> {
        done::<DB, _>(webhooks::due(&self.pool, now, limit).await)
    }

    async fn mark_webhook_event_processed(
        &self,
        id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(webhooks::mark_processed(&self.pool, id, at).await)
    }

    async fn mark_webhook_event_failed(
        &self,
        id: &str,
        error: &str,
        retry_at: Option<UnixMillis>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(webhooks::mark_failed(&self.pool, id, error, retry_at).await)
    }

    async fn webhook_events(
        &self,
        filter: &WebhookFilter,
    ) -> Result<Vec<WebhookEvent>, StoreError> {
        done::<DB, _>(webhooks::list(&self.pool, filter).await)
    }

    async fn find_customer_by_stripe_id(
        &self,
        stripe_id: &str,
    ) -> Result<Option<Customer>, StoreError> {
        done::<DB, _>(webhooks::find_customer_by_stripe_id(&self.pool, stripe_id).await)
    }

    async fn attach_stripe_customer(
        &self,
        id: &CustomerId,
        stripe_id: &str,
        at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(webhooks::attach_stripe_customer(&self.pool, id, stripe_id, at).await)
    }

    async fn end_subscription(
        &self,
        change: &SubscriptionChange,
        plan_after: &str,
    ) -> Result<Subscription, StoreError> {
        let _turn = self.write_turn().await;
        done::<DB, _>(subscriptions::end(&self.pool, change, plan_after).await)
    }
}

#[async_trait]
impl<DB: Driver> Analytics for SqlStore<DB> {
    async fn charges(
        &self,
        span: Span,
        group: LedgerGroup,
    ) -> Result<Vec<GroupAmount>, StoreError> {
        done::<DB, _>(analytics::charges(&self.pool, span, group).await)
    }

    async fn credits_consumed(
        &self,
        span: Span,
        group: LedgerGroup,
    ) -> Result<Vec<GroupAmount>, StoreError> {
        done::<DB, _>(analytics::credits_consumed(&self.pool, span, group).await)
    }

    async fn usage_totals(
        &self,
        first: &str,
        last: &str,
        by_day: bool,
        by_tool: bool,
    ) -> Result<Vec<UsageTotals>, StoreError> {
        done::<DB, _>(analytics::usage_totals(&self.pool, first, last, by_day, by_tool).await)
    }

    async fn top_callers(
        &self,
        first: &str,
        last: &str,
        limit: u32,
    ) -> Result<Vec<UsageTotals>, StoreError> {
        done::<DB, _>(analytics::top_callers(&self.pool, first, last, limit).await)
    }

    async fn top_spenders(&self, span: Span, limit: u32) -> Result<Vec<CustomerSpend>, StoreError> {
        done::<DB, _>(analytics::top_spenders(&self.pool, span, limit).await)
    }

    async fn active_customers(
        &self,
        first: &str,
        last: &str,
    ) -> Result<(i64, Vec<(String, i64)>), StoreError> {
        done::<DB, _>(analytics::active_customers(&self.pool, first, last).await)
    }

    async fn outcomes(&self, span: Span) -> Result<Vec<OutcomeCount>, StoreError> {
        done::<DB, _>(analytics::outcomes(&self.pool, span).await)
    }
}
