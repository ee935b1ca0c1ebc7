//! The group commit of the hot path: one writer task per store takes every
//! ledger write a call makes — credits reservations and settlements,
//! charges, quota takes and releases, metered usage — and writes all those
//! that arrived while its previous transaction ran in one transaction of
//! their own (`ledger::apply_writes`). Under load, one commit — and, on
//! SQLite, one turn of the single writer — serves many calls instead of
//! one each; alone, a call waits for no one (there is no timer: a batch
//! starts as soon as the writer is free).
//!
//! A caller is answered only after its batch committed, so a reservation
//! or quota take is durable before its call is forwarded. When a batch
//! fails as a whole — not a lost race, which runs it again — each of its
//! writes runs alone, so that one write the database refuses fails alone.
//! A reservation or quota take whose caller went away before it was
//! answered (the client cancelled) was never used by a forwarded call:
//! the writer refunds or releases it in its next batch.
//!
//! The writer keeps one pooled connection between batches (unless the pool
//! has only one), and gives it back to the pool after a batch fails: it may
//! be the connection that broke, and the batch gets one more try on a
//! fresh one.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use mcp_meter_plugin::ledger::{QuotaOutcome, QuotaRelease, ReserveOutcome, Settlement};
use mcp_meter_plugin::ports::StoreError;
use sqlx::Pool;
use sqlx::pool::PoolConnection;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::driver::Driver;
use super::error::{Fault, is_lost_race, unavailable};
use super::ledger::{LedgerOutcome, LedgerWrite, apply_writes, max_batch, run_again};

/// How long the writer keeps an idle connection before it goes back to the
/// pool.
const KEEP_IDLE: Duration = Duration::from_secs(10);
/// What is logged when the undoing of a departed caller's write fails.
const UNDO_FAILED: &str = "could not undo the write of a caller that went away (a reservation \
     is refunded by the sweep of held reservations; a quota take stays counted in its period)";
/// How many writes may wait for the writer before callers wait to queue.
const QUEUE: usize = 4096;
/// Why a reservation whose caller went away is refunded (the billing
/// layer's name for a call that was not served).
const NOT_SERVED: &str = "not_served";

/// A write waiting for the writer, with where its outcome goes (none for
/// the writer's own refunds).
struct Job {
    write: LedgerWrite,
    reply: Option<oneshot::Sender<Result<LedgerOutcome, Fault>>>,
}

/// The handle callers write through; the writer task ends when it is
/// dropped.
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the writer over `pool`. On a one-writer database
    /// ([`Driver::ONE_WRITER`]) each batch takes this process's write turn,
    /// `turn`, like every other write of the store.
    pub(super) fn start<DB: Driver>(pool: Pool<DB>, turn: Arc<Mutex<()>>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            pool,
            turn,
            conn: None,
            used_at: Instant::now(),
            own: VecDeque::new(),
        };
        tokio::spawn(writer.run(queue));
        Self { jobs }
    }

    /// Applies `write` in the next batch and returns its outcome once that
    /// batch committed. Dropped before that (the caller went away), a
    /// reservation that was made is refunded.
    pub(super) async fn write(&self, write: LedgerWrite) -> Result<LedgerOutcome, Fault> {
        write.check()?;
        let (reply, outcome) = oneshot::channel();
        let mut waiting = Waiting {
            outcome,
            holding: write.holds().then(|| (write.clone(), self.jobs.clone())),
        };
        let job = Job {
            write,
            reply: Some(reply),
        };
        if self.jobs.send(job).await.is_err() {
            return Err(stopped());
        }
        let outcome = (&mut waiting.outcome).await;
        waiting.holding = None;
        outcome.unwrap_or_else(|_| Err(stopped()))
    }
}

/// A caller waiting for its write's outcome. Dropped while it waits, it
/// closes the way back; a reservation or quota take whose outcome already
/// arrived is undone (the writer undoes one that arrives after).
struct Waiting {
    outcome: oneshot::Receiver<Result<LedgerOutcome, Fault>>,
    /// The write waited for, if it holds something for a call not yet
    /// forwarded, with the way to the writer to undo it; `None` once its
    /// outcome was taken.
    holding: Option<(LedgerWrite, mpsc::Sender<Job>)>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some((write, jobs)) = self.holding.take() else {
            return;
        };
        self.outcome.close();
        let Some(undo) = self
            .outcome
            .try_recv()
            .ok()
            .and_then(|outcome| undo_of(write, &outcome))
        else {
            return;
        };
        let Err(error) = jobs.try_send(undo) else {
            return;
        };
        let undo = match error {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        };
        // No runtime (it is gone) or no writer: a reservation is refunded
        // by the sweep of held reservations later.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                if jobs.send(undo).await.is_err() {
                    tracing::warn!("{UNDO_FAILED}");
                }
            })),
            Err(_) => tracing::warn!("{UNDO_FAILED}"),
        }
    }
}

/// The writer's own undoing of what `write` holds for a call whose caller
/// went away before it learned of it (so the call was never forwarded): a
/// reservation is refunded, a quota take released.
fn undo_of(write: LedgerWrite, outcome: &Result<LedgerOutcome, Fault>) -> Option<Job> {
    let undo = match (write, outcome) {
        (
            LedgerWrite::Reserve(reservation),
            Ok(LedgerOutcome::Reserve(ReserveOutcome::Reserved { attempt, .. })),
        ) => LedgerWrite::Settle(Settlement {
            customer_id: reservation.customer_id,
            charge_key: reservation.charge_key,
            attempt: *attempt,
            actual: 0,
            refund_reason: Some(NOT_SERVED.to_owned()),
            at: reservation.at,
        }),
        (
            LedgerWrite::TakeQuota(take),
            Ok(LedgerOutcome::TakeQuota(QuotaOutcome::Taken { .. })),
        ) => LedgerWrite::ReleaseQuota(QuotaRelease {
            customer_id: take.customer_id,
            charge_key: take.charge_key,
            reason: NOT_SERVED.to_owned(),
            at: take.at,
        }),
        _ => return None,
    };
    tracing::debug!(write = ?undo, "a caller went away before its call was forwarded; undoing what it held");
    Some(Job {
        write: undo,
        reply: None,
    })
}

/// The calls (customer, charge key) that a write of the batch found already
/// held — a repeat of a call whose reservation or take is in the batch.
fn repeats(
    writes: &[&LedgerWrite],
    outcomes: &[Result<LedgerOutcome, Fault>],
) -> HashSet<(String, String)> {
    writes
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| {
            matches!(
                outcome,
                Ok(LedgerOutcome::Reserve(ReserveOutcome::AlreadyCharged))
                    | Ok(LedgerOutcome::TakeQuota(QuotaOutcome::AlreadyTaken { .. }))
            )
        })
        .map(|(write, _)| (write.customer().to_string(), write.charge_key().to_owned()))
        .collect()
}

/// The writer is gone (the runtime is shutting down).
fn stopped() -> Fault {
    Fault::Store(StoreError::Unavailable(
        "the ledger writer has stopped".into(),
    ))
}

/// The writer task's state.
struct Writer<DB: Driver> {
    pool: Pool<DB>,
    turn: Arc<Mutex<()>>,
    /// The connection kept between batches.
    conn: Option<PoolConnection<DB>>,
    /// When the kept connection was last used.
    used_at: Instant,
    /// The writer's own writes (refunds), ahead of the queue.
    own: VecDeque<Job>,
}

impl<DB: Driver> Writer<DB> {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let most = max_batch::<DB>();
        loop {
            let mut jobs: Vec<Job> = self.own.drain(..).collect();
            if jobs.is_empty() {
                match queue.recv().await {
                    Some(job) => jobs.push(job),
                    None => return,
                }
            }
            while jobs.len() < most {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // A reservation or quota take whose caller already went away is
            // not written at all.
            jobs.retain(|job| {
                !(job.write.holds() && job.reply.as_ref().is_some_and(|r| r.is_closed()))
            });
            if jobs.is_empty() {
                continue;
            }
            let writes: Vec<&LedgerWrite> = jobs.iter().map(|job| &job.write).collect();
            let outcomes = self.batch(&writes).await;
            let repeats = repeats(&writes, &outcomes);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                self.answer(job, outcome, &repeats);
            }
        }
    }

    /// Sends a job its outcome; what a caller that went away held is
    /// undone — unless a repeat of its call in the same batch was told it
    /// is already held, and so goes on without a hold of its own.
    fn answer(
        &mut self,
        job: Job,
        outcome: Result<LedgerOutcome, Fault>,
        repeats: &HashSet<(String, String)>,
    ) {
        let Some(reply) = job.reply else {
            if let Err(fault) = outcome {
                tracing::warn!(error = ?fault, write = ?job.write, "{UNDO_FAILED}");
            }
            return;
        };
        let Err(outcome) = reply.send(outcome) else {
            return;
        };
        let call = (
            job.write.customer().to_string(),
            job.write.charge_key().to_owned(),
        );
        if repeats.contains(&call) {
            return;
        }
        if let Some(undo) = undo_of(job.write, &outcome) {
            self.own.push_back(undo);
        }
    }

    /// The outcome of every write: one transaction for all of them, or,
    /// when that fails, one for each.
    async fn batch(&mut self, writes: &[&LedgerWrite]) -> Vec<Result<LedgerOutcome, Fault>> {
        match self.transaction(writes).await {
            Ok(outcomes) => outcomes,
            Err(fault) if writes.len() == 1 => vec![Err(fault)],
            // The database cannot serve: every write gets that answer now
            // rather than one timeout after another.
            Err(Fault::Sql(error)) if let Some(message) = unavailable::<DB>(&error) => {
                tracing::warn!(%error, writes = writes.len(), "a batch of ledger writes failed: the database is unavailable");
                writes
                    .iter()
                    .map(|_| Err(Fault::Store(StoreError::Unavailable(message.clone()))))
                    .collect()
            }
            Err(fault) => {
                tracing::warn!(error = ?fault, writes = writes.len(), "a batch of ledger writes failed; writing them one by one");
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in writes {
                    let one = self.transaction(std::slice::from_ref(write)).await;
                    outcomes.push(
                        one.and_then(|mut outcome| outcome.pop().unwrap_or_else(|| Err(stopped()))),
                    );
                }
                outcomes
            }
        }
    }

    /// Runs `writes` in one transaction, again while it loses races.
    async fn transaction(
        &mut self,
        writes: &[&LedgerWrite],
    ) -> Result<Vec<Result<LedgerOutcome, Fault>>, Fault> {
        let mut attempt = 1;
        loop {
            let kept = self.conn.is_some();
            let outcome = self.once(writes).await;
            // The kept connection may have died while idle (the database
            // restarted): the writes get one more try on a fresh one.
            if kept && outcome.is_err() && self.conn.is_none() {
                tracing::debug!("the ledger writer's connection failed; trying a fresh one");
                continue;
            }
            if !run_again::<DB, _>("a batch of ledger writes", &outcome, &mut attempt).await {
                return outcome;
            }
        }
    }

    async fn once(
        &mut self,
        writes: &[&LedgerWrite],
    ) -> Result<Vec<Result<LedgerOutcome, Fault>>, Fault> {
        let _turn = if DB::ONE_WRITER {
            Some(self.turn.lock().await)
        } else {
            None
        };
        // A connection kept idle for long goes back to the pool, which
        // checks it (and its age) before handing one out again.
        let fresh = self.used_at.elapsed() < KEEP_IDLE;
        let mut conn = match self.conn.take().filter(|_| fresh) {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        let outcome = apply_writes::<DB>(&mut conn, writes).await;
        self.used_at = Instant::now();
        match &outcome {
            Err(Fault::Sql(error)) if !is_lost_race::<DB>(error) => conn.close_on_drop(),
            // A pool of one connection is not kept from its other users.
            _ if self.pool.options().get_max_connections() > 1 => self.conn = Some(conn),
            _ => {}
        }
        outcome
    }
}
