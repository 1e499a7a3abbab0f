//! The delivery machinery shared by drivers whose server delivers messages
//! itself (`pubsub.redis`, `pubsub.jetstream`): the server keeps the log,
//! the consumer groups and their positions; this module keeps, per consumer
//! group, the deliveries it has pushed and not yet seen acknowledged, so
//! that a member's `max_in_flight` and `ack_deadline_ms` hold, acks from
//! any connection find their delivery, and a member that leaves gives its
//! deliveries back at once.
//!
//! Unlike the embedded broker, nothing here must survive a restart: the
//! server redelivers whatever was not acknowledged (after Redis's
//! `processingTimeout`, or JetStream's `ackWait`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::{
    AckReply, AckRequest, ComponentSpec, Delivery, PublishReply, PublishRequest, SubscribeRequest,
    PUBSUB_MAX_IN_FLIGHT,
};
use mecha_module::metadata::{Metadata, MetadataError};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{DEFAULT_GROUP, DEFAULT_MAX_IN_FLIGHT, MAX_NAME};
use crate::drivers::{BoxFuture, Message, PubsubError};
use crate::envelope::{self, IdSource};

/// A message the server handed to one member, with what acknowledges it.
pub struct Fetched<H> {
    /// The message's offset in its topic (increasing, not consecutive).
    pub offset: u64,
    /// How many times the server has delivered it to the group, this one
    /// included.
    pub attempt: u32,
    /// The stored message.
    pub message: Message,
    /// The driver's handle for acking or nacking this delivery.
    pub handle: H,
}

/// One member's reader: hands out up to `max` messages for the group, new
/// ones or ones the server makes available again. It waits a short while
/// (about a second) when there are none, then answers an empty batch, so
/// that its caller can look at deadlines and cancellation in between.
pub trait Fetcher<H>: Send {
    /// The next batch of at most `max` messages.
    fn fetch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Fetched<H>>, PubsubError>>;
}

/// A member's reader, boxed so drivers choose their own type.
pub type BoxFetcher<H> = Box<dyn Fetcher<H>>;

/// What a server-delivered driver provides.
pub trait Backend: Send + Sync + 'static {
    /// What acks or nacks one delivery.
    type Handle: Send + Sync + 'static;

    /// Stores `message` in `topic` of `tenant`; answers its offset.
    fn publish<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<u64, PubsubError>>;

    /// Makes sure `group` exists for `topic` (starting at the oldest
    /// retained message) and opens a reader for one new member of it.
    fn join<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<BoxFetcher<Self::Handle>, PubsubError>>;

    /// Acknowledges a delivery; `handle` is `None` when this module instance
    /// did not hand it out (another instance did, or this one restarted).
    /// Answers whether the ack took effect.
    fn ack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        handle: Option<&'a Self::Handle>,
    ) -> BoxFuture<'a, Result<bool, PubsubError>>;

    /// Ends a delivery as failed, so the server delivers it again promptly.
    fn nack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        handle: &'a Self::Handle,
    ) -> BoxFuture<'a, Result<(), PubsubError>>;
}

/// What a server-delivered store is configured with, beyond its backend.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    /// The component name.
    pub store: String,
    /// The component type, for error messages (`pubsub.redis`).
    pub kind: String,
    /// The ack deadline of members that name none.
    pub ack_deadline: Duration,
    /// The longest ack deadline a member may ask for: beyond it the server
    /// redelivers on its own (Redis `processingTimeout`, JetStream
    /// `ackWait`), so a longer one cannot be honoured.
    pub max_ack_deadline: Option<Duration>,
    /// The group of members that name none.
    pub default_group: String,
}

impl RemoteSettings {
    /// The settings every server-delivered store reads the same way: the
    /// component's name and type, and mecha's `ackDeadlineMs` (30 s by
    /// default), cut to `max_ack_deadline` where the server has one.
    pub fn from_metadata(
        spec: &ComponentSpec,
        md: &Metadata<'_>,
        max_ack_deadline: Option<Duration>,
        default_group: String,
    ) -> Result<Self, MetadataError> {
        let asked = Duration::from_millis(
            md.whole("ackDeadlineMs", 1..=u64::from(u32::MAX))?
                .unwrap_or(30_000),
        );
        Ok(Self {
            store: spec.name.clone(),
            kind: spec.kind.clone(),
            ack_deadline: max_ack_deadline.map_or(asked, |max| asked.min(max)),
            max_ack_deadline,
            default_group,
        })
    }
}

/// A pubsub store served by a server that delivers messages itself.
pub struct RemoteStore<B: Backend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: Backend> {
    settings: RemoteSettings,
    backend: B,
    ids: IdSource,
    next_member: AtomicU64,
    /// The groups with members or outstanding deliveries in this instance.
    /// Entries stay (they are small, and bounded by the groups in use).
    groups: Mutex<HashMap<GroupKey, Arc<Hub<B::Handle>>>>,
}

type GroupKey = (String, String, String);

/// One consumer group's outstanding deliveries in this instance.
struct Hub<H> {
    outstanding: Mutex<HashMap<u64, Outstanding<H>>>,
    /// Wakes members waiting for a free slot.
    freed: Notify,
}

struct Outstanding<H> {
    attempt: u32,
    member: u64,
    deadline: Instant,
    handle: Arc<H>,
}

impl<B: Backend> RemoteStore<B> {
    /// A store over `backend`.
    pub fn new(settings: RemoteSettings, backend: B) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                backend,
                ids: IdSource::new(),
                next_member: AtomicU64::new(1),
                groups: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The store's settings.
    pub fn settings(&self) -> &RemoteSettings {
        &self.inner.settings
    }

    /// PUBSUB_PUBLISH: wraps the data (unless raw) and stores it.
    pub async fn publish(
        &self,
        tenant: &str,
        req: &PublishRequest,
    ) -> Result<PublishReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let message = envelope::build(
            tenant,
            req,
            self.inner.ids.next_id(),
            std::time::SystemTime::now(),
        );
        if message.partition_key().is_some() {
            // Delivering one message of a key at a time needs the broker's
            // per-key bookkeeping, which these servers do not offer; a
            // silently weaker ordering would be worse than a clear refusal.
            return Err(self.unsupported("per-key ordering (the partitionKey metadata entry)"));
        }
        let offset = self
            .inner
            .backend
            .publish(tenant, &req.topic, &message)
            .await?;
        Ok(PublishReply {
            id: message.id,
            offset,
        })
    }

    /// PUBSUB_SUBSCRIBE: joins the group and answers the new member.
    pub async fn subscribe(
        &self,
        tenant: &str,
        req: &SubscribeRequest,
    ) -> Result<Member<B>, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = if req.group.is_empty() {
            self.inner.settings.default_group.clone()
        } else {
            check_name("group", &req.group)?;
            req.group.clone()
        };
        if req.max_in_flight > PUBSUB_MAX_IN_FLIGHT {
            return Err(PubsubError::Invalid(format!(
                "max_in_flight {} is above the limit of {PUBSUB_MAX_IN_FLIGHT}",
                req.max_in_flight
            )));
        }
        let ack_deadline = match req.ack_deadline_ms {
            0 => self.inner.settings.ack_deadline,
            ms => Duration::from_millis(u64::from(ms)),
        };
        if let Some(max) = self.inner.settings.max_ack_deadline {
            if ack_deadline > max {
                return Err(self.unsupported(&format!(
                    "an ack deadline of {ack_deadline:?}, longer than the server's own \
                     redelivery timeout of {max:?}"
                )));
            }
        }
        let fetcher = self.inner.backend.join(tenant, &req.topic, &group).await?;
        let key = (tenant.to_owned(), req.topic.clone(), group.clone());
        let hub = Arc::clone(
            self.inner
                .groups
                .lock()
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Hub {
                        outstanding: Mutex::new(HashMap::new()),
                        freed: Notify::new(),
                    })
                }),
        );
        let max_in_flight = match req.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n => n,
        } as usize;
        Ok(Member {
            id: self.inner.next_member.fetch_add(1, Ordering::Relaxed),
            key,
            store: Arc::clone(&self.inner),
            hub,
            fetcher: tokio::sync::Mutex::new(fetcher),
            ready: Mutex::new(Vec::new()),
            max_in_flight,
            ack_deadline,
        })
    }

    /// PUBSUB_ACK: acks or nacks deliveries of one group.
    pub async fn ack(&self, tenant: &str, req: &AckRequest) -> Result<AckReply, PubsubError> {
        check_name("topic", &req.topic)?;
        let group = if req.group.is_empty() {
            self.inner.settings.default_group.clone()
        } else {
            check_name("group", &req.group)?;
            req.group.clone()
        };
        let key = (tenant.to_owned(), req.topic.clone(), group.clone());
        let hub = self.inner.groups.lock().get(&key).cloned();
        let mut applied = 0u32;
        for item in &req.items {
            let taken = hub.as_ref().and_then(|hub| {
                let mut outstanding = hub.outstanding.lock();
                match outstanding.get(&item.offset) {
                    // A nack names one delivery; a stale one does nothing.
                    Some(o) if req.nack && o.attempt != item.attempt => None,
                    Some(_) => outstanding.remove(&item.offset).map(|o| o.handle),
                    None => None,
                }
            });
            let done = match (req.nack, taken) {
                (false, handle) => {
                    self.inner
                        .backend
                        .ack(tenant, &req.topic, &group, item.offset, handle.as_deref())
                        .await?
                }
                (true, Some(handle)) => {
                    self.inner
                        .backend
                        .nack(tenant, &req.topic, &group, item.offset, &handle)
                        .await?;
                    true
                }
                (true, None) => false,
            };
            applied += u32::from(done);
        }
        if let Some(hub) = hub {
            hub.freed.notify_waiters();
        }
        Ok(AckReply { applied })
    }

    fn unsupported(&self, feature: &str) -> PubsubError {
        let s = &self.inner.settings;
        PubsubError::Unsupported(format!(
            "component {:?} of type {} does not support {feature}",
            s.store, s.kind
        ))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), PubsubError> {
    if name.is_empty() {
        return Err(PubsubError::Invalid(format!(
            "the {what} must not be empty"
        )));
    }
    if name.len() > MAX_NAME {
        return Err(PubsubError::Invalid(format!(
            "the {what} is {} bytes long; the limit is {MAX_NAME}",
            name.len()
        )));
    }
    Ok(())
}

/// How long a member waits before reading again after its server failed;
/// doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One member of a consumer group: hands out deliveries within its
/// `max_in_flight` window, and gives back those that pass its ack deadline.
///
/// A member survives its server going away: reads fail, the member waits
/// (with backoff) and reads again once the server is back, so the stream
/// stays open and the client need not resubscribe.
pub struct Member<B: Backend> {
    id: u64,
    key: GroupKey,
    store: Arc<Inner<B>>,
    hub: Arc<Hub<B::Handle>>,
    fetcher: tokio::sync::Mutex<BoxFetcher<B::Handle>>,
    /// Fetched deliveries not pushed yet, oldest last (they are already
    /// outstanding, so they count against the window).
    ready: Mutex<Vec<Delivery>>,
    max_in_flight: usize,
    ack_deadline: Duration,
}

impl<B: Backend> Member<B> {
    /// The member's id, unique within this module instance.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The group it belongs to.
    pub fn group(&self) -> &str {
        &self.key.2
    }

    /// The next delivery for this member, waiting for one.
    pub async fn next(&self) -> Result<Delivery, PubsubError> {
        let mut backoff = MIN_BACKOFF;
        loop {
            if let Some(delivery) = self.ready.lock().pop() {
                return Ok(delivery);
            }
            let (held, earliest) = self.expire().await;
            let room = self.max_in_flight.saturating_sub(held);
            if room == 0 {
                // The window is full: wait for an ack or nack, or for the
                // earliest deadline.
                let until = earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                tokio::select! {
                    () = self.hub.freed.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            let fetched = self.fetcher.lock().await.fetch(room).await;
            match fetched {
                Ok(batch) => {
                    backoff = MIN_BACKOFF;
                    self.take(batch);
                }
                Err(e) => {
                    tracing::warn!(store = %self.store.settings.store, error = %e,
                        "reading a subscription failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Records a fetched batch as outstanding and queues it for pushing.
    fn take(&self, batch: Vec<Fetched<B::Handle>>) {
        let deadline = Instant::now() + self.ack_deadline;
        let mut outstanding = self.hub.outstanding.lock();
        let mut ready = self.ready.lock();
        for f in batch.into_iter().rev() {
            ready.push(delivery(
                &self.store.settings.store,
                &self.key,
                f.offset,
                f.attempt,
                f.message,
            ));
            outstanding.insert(
                f.offset,
                Outstanding {
                    attempt: f.attempt,
                    member: self.id,
                    deadline,
                    handle: Arc::new(f.handle),
                },
            );
        }
    }

    /// Nacks this member's deliveries whose deadline passed; answers how
    /// many it still holds and the earliest deadline among them.
    async fn expire(&self) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let (expired, held, earliest) = {
            let mut outstanding = self.hub.outstanding.lock();
            let mut expired = Vec::new();
            outstanding.retain(|offset, o| {
                if o.member == self.id && o.deadline <= now {
                    expired.push((*offset, Arc::clone(&o.handle)));
                    false
                } else {
                    true
                }
            });
            let mine = outstanding.values().filter(|o| o.member == self.id);
            let held = mine.clone().count();
            (expired, held, mine.map(|o| o.deadline).min())
        };
        for (offset, handle) in expired {
            let (tenant, topic, group) = &self.key;
            if let Err(e) = self
                .store
                .backend
                .nack(tenant, topic, group, offset, &handle)
                .await
            {
                // The server redelivers it after its own timeout anyway.
                tracing::warn!(store = %self.store.settings.store, error = %e,
                    "giving back a delivery past its deadline failed");
            }
        }
        (held, earliest)
    }

    /// Leaves the group because this module instance is retiring. The
    /// server cannot tell this from a failure, so it is the same as a drop.
    pub fn retire(self) {}
}

impl<B: Backend> Drop for Member<B> {
    fn drop(&mut self) {
        // The member's outstanding deliveries go back to the group at once,
        // so the other members need not wait for the server's timeout.
        let mine: Vec<(u64, Arc<B::Handle>)> = {
            let mut outstanding = self.hub.outstanding.lock();
            let mut mine = Vec::new();
            outstanding.retain(|offset, o| {
                if o.member == self.id {
                    mine.push((*offset, Arc::clone(&o.handle)));
                    false
                } else {
                    true
                }
            });
            mine
        };
        self.hub.freed.notify_waiters();
        if mine.is_empty() {
            return;
        }
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let (tenant, topic, group) = &key;
                for (offset, handle) in mine {
                    let _ = store
                        .backend
                        .nack(tenant, topic, group, offset, &handle)
                        .await;
                }
            });
        }
    }
}

fn delivery(store: &str, key: &GroupKey, offset: u64, attempt: u32, m: Message) -> Delivery {
    Delivery {
        store: store.to_owned(),
        topic: key.1.clone(),
        group: key.2.clone(),
        offset,
        attempt,
        id: m.id,
        source: m.source,
        event_type: m.event_type,
        spec_version: m.spec_version,
        data_content_type: m.data_content_type,
        time: m.time,
        trace_parent: m.trace_parent,
        data: m.data,
        metadata: m.metadata,
        raw: m.raw,
    }
}

/// The storage format of a message on a server; a different first byte is
/// refused rather than misread.
const FORMAT: u8 = 1;

/// A message as stored on a server: [`FORMAT`], then the ABI's pinned
/// encoding of it.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, PubsubError> {
    let body = mecha_abi::encode(message)
        .map_err(|e| PubsubError::Internal(format!("encoding a message failed: {e}")))?;
    let mut stored = Vec::with_capacity(body.len() + 1);
    stored.push(FORMAT);
    stored.extend_from_slice(&body);
    Ok(stored)
}

/// The message stored as `bytes` by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, PubsubError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => mecha_abi::decode(body)
            .map_err(|e| PubsubError::Internal(format!("a stored message is unreadable: {e}"))),
        Some((other, _)) => Err(PubsubError::Internal(format!(
            "a stored message has format {other}, this module reads format {FORMAT}"
        ))),
        None => Err(PubsubError::Internal("a stored message is empty".into())),
    }
}

/// `DEFAULT_GROUP`, re-exported for drivers' settings.
pub const DEFAULT_GROUP_NAME: &str = DEFAULT_GROUP;
