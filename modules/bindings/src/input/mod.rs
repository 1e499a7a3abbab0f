//! Input bindings' delivery: every enrolled tenant receives each event of
//! the binding once, through the pubsub module's broker used as a library.
//!
//! The events of binding B for tenant T are the broker topic `B` of tenant
//! T, read by one consumer group, so the subscribers of one tenant compete
//! for its events, and a tenant that never acknowledges fills only its own
//! topic (up to `maxMessages`): further events are then dropped for it
//! alone, logged and counted, and never hold up another tenant. Each input
//! binding has its own broker file (`<binding>.events.redb`); which tenants
//! are enrolled and the fan-out in progress are in the [`ledger`].

pub mod ledger;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::{AckItem, AckReply, AckRequest, PublishRequest, SubscribeRequest};
use mecha_mod_pubsub::broker::{Broker, Settings, Subscriber};
use mecha_mod_pubsub::drivers::redb::RedbLog;
use mecha_module::metadata::Metadata;
use parking_lot::Mutex;

use crate::error::BindingError;
use ledger::{Ledger, Pending};

/// The delivery fields every input binding accepts.
pub const FIELDS: [&str; 5] = [
    "maxTenants",
    "maxMessages",
    "ackDeadlineMs",
    "maxBytesPerTenant",
    "route",
];

/// Tenants one input binding enrolls without `maxTenants`.
pub const DEFAULT_MAX_TENANTS: u64 = 1024;

/// Events one tenant's topic keeps unacknowledged without `maxMessages`.
pub const DEFAULT_MAX_MESSAGES: u64 = 10_000;

/// Bytes one tenant's events may take without `maxBytesPerTenant`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The one consumer group of every tenant's topic.
const GROUP: &str = "default";

/// One input binding's delivery: its broker, its enrolled tenants, and the
/// shared ledger.
pub struct Input {
    name: String,
    broker: Broker,
    ledger: Arc<Ledger>,
    max_tenants: u64,
    /// The enrolled tenants, once loaded from the ledger (see [`Input::ready`]).
    enrolled: Mutex<BTreeSet<String>>,
    /// Loads the ledger once and finishes a fan-out a crash interrupted.
    loaded: tokio::sync::OnceCell<()>,
    /// The cursor of the last event fanned out.
    cursor: Mutex<Option<u64>>,
    /// Serialises enrollments, so `maxTenants` holds under concurrent
    /// first subscribes.
    enrolling: tokio::sync::Mutex<()>,
    /// Events dropped for a tenant whose topic was full, or whose append
    /// failed, since the module started.
    dropped: AtomicU64,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// The delivery of input binding `metadata.component()`, with its broker
    /// file in `data_dir`.
    pub fn open(
        metadata: &Metadata<'_>,
        data_dir: &Path,
        ledger: Arc<Ledger>,
    ) -> Result<Self, BindingError> {
        let name = metadata.component().to_owned();
        let settings = Settings {
            store: name.clone(),
            // Never dead-lettered: an input event is redelivered until its
            // tenant acknowledges it, or its topic's retention drops it.
            max_deliveries: 0,
            dead_letter_topic: None,
            max_messages: metadata
                .whole("maxMessages", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_MESSAGES),
            ack_deadline: metadata
                .whole("ackDeadlineMs", 1..=u64::from(u32::MAX))?
                .map_or(Duration::from_secs(30), Duration::from_millis),
            max_topics: 1,
            max_bytes: metadata
                .whole("maxBytesPerTenant", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_BYTES),
            max_groups: 1,
        };
        let path = mecha_module::embedded::redb_file(&format!("{name}.events"), None, data_dir)
            .map_err(|reason| metadata.error(reason))?;
        Ok(Self {
            broker: Broker::new(settings, Box::new(RedbLog::open(path)?)),
            max_tenants: metadata
                .whole("maxTenants", 1..=u64::from(u32::MAX))?
                .unwrap_or(DEFAULT_MAX_TENANTS),
            name,
            ledger,
            enrolled: Mutex::new(BTreeSet::new()),
            loaded: tokio::sync::OnceCell::new(),
            cursor: Mutex::new(None),
            enrolling: tokio::sync::Mutex::new(()),
            dropped: AtomicU64::new(0),
        })
    }

    /// The binding's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events dropped for some tenant since the module started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Loads the enrolled tenants and finishes an interrupted fan-out, once;
    /// answers the cursor of the last finished event (`None` before the
    /// first). Every operation waits for it, so nothing is appended before
    /// the recovery is done.
    pub async fn ready(&self) -> Result<Option<u64>, BindingError> {
        self.loaded
            .get_or_try_init(|| async {
                let loaded = self.ledger.load(&self.name).await?;
                self.enrolled.lock().extend(loaded.tenants);
                let cursor = match loaded.pending {
                    Some(pending) => {
                        let appended = self.append(&pending, true).await;
                        tracing::info!(
                            binding = %self.name,
                            cursor = pending.cursor,
                            appended,
                            of = pending.tenants.len(),
                            "finished the fan-out of an event a restart interrupted"
                        );
                        self.ledger.finish(&self.name, pending.cursor).await?;
                        Some(pending.cursor)
                    }
                    None => loaded.cursor,
                };
                *self.cursor.lock() = cursor;
                Ok::<(), BindingError>(())
            })
            .await?;
        Ok(*self.cursor.lock())
    }

    /// Fans one event out to every enrolled tenant's topic, durably (see
    /// [`ledger`]); `cursor` is recorded as the last finished event. An
    /// error means nothing was appended, so the caller may fire it again.
    pub async fn fire(
        &self,
        cursor: u64,
        data: Vec<u8>,
        metadata: Vec<(String, String)>,
    ) -> Result<(), BindingError> {
        self.ready().await?;
        let tenants: Vec<String> = self.enrolled.lock().iter().cloned().collect();
        let mut offsets = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let next = self.broker.next_offset(&tenant, &self.name).await?;
            offsets.push((tenant, next));
        }
        let pending = Pending {
            cursor,
            data,
            metadata,
            tenants: offsets,
        };
        self.ledger.begin(&self.name, &pending).await?;
        self.append(&pending, false).await;
        *self.cursor.lock() = Some(cursor);
        // From here the event is out: an error must not make the caller
        // fire it again. A `pending` left behind is harmless, since every
        // tenant's offset has moved past it; the next event's `begin`
        // replaces it and its `finish` records the cursor.
        if let Err(e) = self.ledger.finish(&self.name, cursor).await {
            tracing::warn!(binding = %self.name, cursor, "the ledger did not record a finished fan-out: {e}");
        }
        Ok(())
    }

    /// Appends `pending` to each of its tenants' topics; with `recovering`,
    /// only to those whose topic has not moved past the recorded offset.
    /// Answers how many appends were made. A tenant whose append fails (its
    /// topic is full) loses this event alone: the others still get it.
    async fn append(&self, pending: &Pending, recovering: bool) -> usize {
        let mut appended = 0;
        for (tenant, offset) in &pending.tenants {
            if recovering {
                match self.broker.next_offset(tenant, &self.name).await {
                    Ok(next) if next == *offset => {}
                    Ok(_) => continue,
                    Err(e) => {
                        self.drop_for(tenant, pending.cursor, &e.into());
                        continue;
                    }
                }
            }
            let req = PublishRequest {
                store: String::new(),
                topic: self.name.clone(),
                data: pending.data.clone(),
                content_type: String::new(),
                metadata: pending.metadata.clone(),
                raw: true,
            };
            match self.broker.publish(tenant, &req).await {
                Ok(_) => appended += 1,
                Err(e) => self.drop_for(tenant, pending.cursor, &e.into()),
            }
        }
        appended
    }

    fn drop_for(&self, tenant: &str, cursor: u64, e: &BindingError) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A tenant that never acknowledges loses every later event; logging
        // each would let it fill the node's log, so only the first few and
        // then every thousandth are.
        if dropped > 8 && !dropped.is_multiple_of(1000) {
            return;
        }
        tracing::warn!(
            binding = %self.name,
            tenant,
            cursor,
            dropped,
            "an input event was dropped for this tenant alone: {e}"
        );
    }

    /// A new subscriber of `tenant`, enrolling the tenant first if this is
    /// its first subscribe (refused once the binding has `maxTenants`).
    pub async fn subscribe(
        &self,
        tenant: &str,
        max_in_flight: u32,
        ack_deadline_ms: u32,
    ) -> Result<Subscriber, BindingError> {
        self.ready().await?;
        if !self.enrolled.lock().contains(tenant) {
            let _turn = self.enrolling.lock().await;
            let count = self.enrolled.lock().len() as u64;
            if !self.enrolled.lock().contains(tenant) {
                if count >= self.max_tenants {
                    return Err(BindingError::TooLarge(format!(
                        "input binding {:?} has {count} tenants subscribed, its limit \
                         (maxTenants); tenant {tenant:?} cannot subscribe",
                        self.name
                    )));
                }
                self.ledger.enroll(&self.name, tenant).await?;
                self.enrolled.lock().insert(tenant.to_owned());
                tracing::info!(binding = %self.name, tenant, "tenant enrolled");
            }
        }
        let req = SubscribeRequest {
            store: String::new(),
            topic: self.name.clone(),
            group: GROUP.to_owned(),
            max_in_flight,
            ack_deadline_ms,
        };
        Ok(self.broker.subscribe(tenant, &req).await?)
    }

    /// Acknowledges (or nacks) deliveries of `tenant`. A tenant that never
    /// subscribed has nothing outstanding.
    pub async fn ack(
        &self,
        tenant: &str,
        items: Vec<AckItem>,
        nack: bool,
    ) -> Result<AckReply, BindingError> {
        self.ready().await?;
        if !self.enrolled.lock().contains(tenant) {
            return Ok(AckReply { applied: 0 });
        }
        let req = AckRequest {
            store: String::new(),
            topic: self.name.clone(),
            group: GROUP.to_owned(),
            items,
            nack,
        };
        Ok(self.broker.ack(tenant, &req).await?)
    }
}
