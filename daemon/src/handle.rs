//! A connection as the layers below the session see it: where its answers
//! and pushes go, its push budget, and the requests the daemon delivers to it.
//! Module links keep an `Arc` of it for every request in flight and every
//! stream open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::answer::{ConnTx, PUSH_BUDGET};
use crate::budget::OutputBudget;
use crate::calls::Calls;

/// Source of connection ids, used to find a connection's streams.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One application connection's queues, shared with the module links.
pub struct ConnHandle {
    /// The connection's write queue.
    pub tx: ConnTx,
    /// Its budget for queued pushes and delivered calls (`PUSH_BUDGET`).
    pub pushes: Arc<Semaphore>,
    /// Its id, unique within the daemon.
    pub id: u64,
    /// Requests the daemon delivers to it (LINK_DELIVER) awaiting answers.
    pub calls: Calls,
    /// Bytes it may have queued unread, within its tenant's.
    pub budget: OutputBudget,
}

impl ConnHandle {
    /// A handle for a new connection writing to `tx`.
    pub fn new(tx: ConnTx, budget: OutputBudget) -> Arc<Self> {
        Arc::new(Self {
            tx,
            budget,
            pushes: Arc::new(Semaphore::new(PUSH_BUDGET)),
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            calls: Calls::default(),
        })
    }
}
