//! What a server-delivered store keeps in memory: per consumer group, the
//! deliveries this instance pushed and has not seen acknowledged.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::backend::{Backend, ServerSettings};
use crate::message::id::IdSource;

/// A store's shared state: its settings, its backend, and its groups.
pub(super) struct StoreState<B: Backend> {
    pub(super) settings: ServerSettings,
    pub(super) backend: B,
    pub(super) ids: IdSource,
    pub(super) next_member: AtomicU64,
    /// The groups with members or outstanding deliveries in this instance.
    /// Entries stay (they are small, and bounded by the groups in use).
    pub(super) groups: Mutex<HashMap<GroupKey, Arc<Hub<B::Handle>>>>,
}

/// A consumer group: (tenant, topic, group).
pub(super) type GroupKey = (String, String, String);

/// One consumer group's outstanding deliveries in this instance.
pub(super) struct Hub<H> {
    pub(super) outstanding: Mutex<HashMap<u64, Outstanding<H>>>,
    /// Wakes members waiting for a free slot.
    pub(super) freed: Notify,
}

/// One delivery pushed and not yet acknowledged.
pub(super) struct Outstanding<H> {
    /// Which delivery of the message it is.
    pub(super) attempt: u32,
    /// The member that holds it.
    pub(super) member: u64,
    /// When it goes back to the server if still unacknowledged.
    pub(super) deadline: Instant,
    /// What acks or nacks it on the server.
    pub(super) handle: Arc<H>,
}
