//! One lane per customer for ledger writes inside this process.
//!
//! A customer's balance (or period counter) is one database row, and every
//! write to it takes that row's lock. Hundreds of concurrent calls of one
//! customer would otherwise each hold a pooled connection while they queue
//! on the lock, starving the pool until calls fail with "database
//! unavailable". Here they queue in memory instead: at most one ledger write
//! per customer per process is in the database at a time (other customers
//! are not held up, apart from the rare ones sharing a lane), and several
//! mcp-meter instances still stay exact because the database decides.
//! The hot path's writes (reservations, settlements, charges, quota takes
//! and releases, metered usage) do not take a lane: the store's ledger
//! writer already sends them to the database one batch at a time. What
//! still does is the periodic credit grant.

use std::hash::{BuildHasher, RandomState};

use mcp_meter_plugin::identity::CustomerId;
use tokio::sync::{Mutex, MutexGuard};

/// How many lanes customers are spread over.
const LANES: usize = 256;

/// The lanes.
pub(crate) struct Lanes {
    lanes: Box<[Mutex<()>]>,
    hasher: RandomState,
}

impl Lanes {
    pub(crate) fn new() -> Self {
        Self {
            lanes: (0..LANES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for `customer`'s lane; the write happens while the guard lives.
    pub(crate) async fn enter(&self, customer: &CustomerId) -> MutexGuard<'_, ()> {
        let index = (self.hasher.hash_one(customer.as_str()) as usize) % self.lanes.len();
        self.lanes[index].lock().await
    }
}
