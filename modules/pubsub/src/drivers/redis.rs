//! `pubsub.redis`: topics as Redis Streams, consumer groups as Redis consumer
//! groups, in the manner of Dapr's Redis Streams component. Publishing is
//! XADD (trimmed with `MAXLEN ~ maxLenApprox`), a group is created with
//! XGROUP CREATE … 0 MKSTREAM (so it starts at the oldest retained message),
//! members read with XREADGROUP BLOCK on a connection of their own, acks are
//! XACK, and messages left pending longer than `processingTimeout` (a member
//! or a whole node died) are taken over with XAUTOCLAIM, checked every
//! `redeliverInterval`.
//!
//! A nack, or a delivery passing its member's ack deadline, re-stamps the
//! pending entry as idle for longer than any timeout (XCLAIM … IDLE JUSTID,
//! which does not count a delivery) and asks this instance's members to
//! claim it at once, so it is delivered again promptly.
//!
//! Offsets are Redis entry ids `ms-seq` packed as `ms << 20 | seq`: they
//! increase in publish order but are not consecutive.
//!
//! Connections come from the SDK's shared Redis layer
//! (`mecha_module::remote::redis`), so the connection fields (`redisHost`,
//! `redisType`, `dialTimeout`, `readTimeout`, retries, …) mean what they mean
//! for every other Redis driver, and failures are classified the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::{Metadata, MetadataError};
use mecha_module::remote::redis::client::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply,
};
use mecha_module::remote::redis::client::{self as redis, RedisError};
use mecha_module::remote::redis::{Redis, FIELDS};
use mecha_module::remote::{duration, RemoteError};
use mecha_module::DriverError;
use tokio::time::Instant;

use crate::error::PubsubError;
use crate::message::id::IdSource;
use crate::message::Message;
use crate::request::DEFAULT_GROUP;
use crate::server_delivery::{Backend, BoxFetcher, Fetched, Fetcher, ServerSettings, ServerStore};

/// The metadata fields `pubsub.redis` understands beyond the Redis fields
/// every Redis driver shares ([`FIELDS`]): Dapr's Redis Streams fields, plus
/// mecha's `ackDeadlineMs`.
pub const OWN_FIELDS: [&str; 7] = [
    "consumerID",
    "processingTimeout",
    "redeliverInterval",
    "queueDepth",
    "concurrency",
    "maxLenApprox",
    "ackDeadlineMs",
];

/// The stream field that holds the encoded message.
const FIELD: &str = "m";

/// Bits of an offset that hold the sequence part of a Redis entry id.
const SEQ_BITS: u32 = 20;

/// How long one XREADGROUP waits for new messages; a member looks at its
/// deadlines, nacks and cancellation between two reads. Shortened to half
/// the component's `readTimeout`/`writeTimeout` when those are shorter, so
/// a blocked read is answered before the connection gives up on it.
const BLOCK: Duration = Duration::from_millis(500);

/// The idle time a nacked entry is given: longer than any ack deadline
/// (at most u32::MAX ms) or `processingTimeout`, so the next XAUTOCLAIM of
/// any member takes it.
const NACK_IDLE_MS: u64 = 1 << 32;

/// The metadata fields of a `pubsub.redis` component.
fn known_fields() -> Vec<&'static str> {
    [&FIELDS[..], &OWN_FIELDS].concat()
}

/// Opens a `pubsub.redis` store through the SDK's shared Redis layer, which
/// reads the connection fields (`redisHost`, `redisType`, `dialTimeout`, …)
/// exactly as every other Redis driver does; it connects lazily, so the
/// module starts while Redis is down.
pub fn open(spec: &ComponentSpec) -> Result<ServerStore<RedisBackend>, PubsubError> {
    let md = Metadata::parse(spec, &known_fields())?;
    let redis = Redis::from_metadata(&spec.kind, &md)?;
    let processing = md
        .duration("processingTimeout", Duration::from_millis(1))?
        .unwrap_or(Duration::from_secs(60));
    let redeliver = md
        .duration("redeliverInterval", Duration::from_millis(1))?
        .unwrap_or(Duration::from_secs(15));
    let queue_depth = md.whole("queueDepth", 1..=100_000)?.unwrap_or(100);
    let queue_depth = usize::try_from(queue_depth).unwrap_or(100);
    // Dapr's `concurrency` bounds its own handler pool; here each
    // subscriber's `max_in_flight` does that, so the value is checked only.
    md.whole("concurrency", 1..=u64::MAX)?;
    let max_len = md.whole("maxLenApprox", 1..=u64::MAX)?;
    // Redelivery of what a dead member left pending is off when either
    // timeout is 0, as in Dapr.
    let reclaim =
        (!processing.is_zero() && !redeliver.is_zero()).then_some((processing, redeliver));
    let consumer = match md.str("consumerID")? {
        Some(id) => id.to_owned(),
        None => format!("mecha-{}", IdSource::new().next_id()),
    };
    let block = block_time(&md)?;
    let settings = ServerSettings::from_metadata(
        spec,
        &md,
        reclaim.map(|(processing, _)| processing),
        DEFAULT_GROUP.to_owned(),
    )?;
    let backend = RedisBackend {
        shared: Arc::new(Shared {
            spec: spec.clone(),
            redis,
            consumer,
            reclaim,
            queue_depth,
            max_len,
            block,
            nacks: AtomicU64::new(0),
        }),
    };
    Ok(ServerStore::new(settings, backend))
}

/// How long one XREADGROUP blocks: [`BLOCK`], or half the component's I/O
/// timeout when that is shorter (at least a millisecond, as 0 would mean
/// "forever" to Redis).
fn block_time(md: &Metadata<'_>) -> Result<Duration, MetadataError> {
    let io = duration(md, "readTimeout")?.max(duration(md, "writeTimeout")?);
    Ok(match io {
        Some(io) if !io.is_zero() => BLOCK.min(io / 2).max(Duration::from_millis(1)),
        _ => BLOCK,
    })
}

/// The Redis side of a `pubsub.redis` store.
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// The component, kept to open each member's own connection through
    /// the shared Redis layer with the same settings.
    spec: ComponentSpec,
    /// The shared, reconnecting connection for everything but blocking reads.
    redis: Redis,
    /// This instance's consumer name in every group.
    consumer: String,
    /// (processingTimeout, redeliverInterval), or `None` when off.
    reclaim: Option<(Duration, Duration)>,
    queue_depth: usize,
    max_len: Option<u64>,
    /// How long one XREADGROUP blocks.
    block: Duration,
    /// Counts nacks, so members know to claim nacked entries now.
    nacks: AtomicU64,
}

/// Whether Redis answered that the stream or the group does not exist.
fn no_group(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Shared {
    async fn create_group(&self, key: &str, group: &str) -> Result<(), PubsubError> {
        self.redis
            .run(|mut conn| async move {
                let created: Result<(), RedisError> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    // The group exists already: nothing to do.
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            })
            .await?;
        Ok(())
    }

    /// A connection of its own for one member's blocking reads, prepared
    /// (not connected) by the shared Redis layer from the component's
    /// metadata, so it has the component's timeouts and retries.
    fn reader(&self) -> Result<Redis, PubsubError> {
        let md = Metadata::parse(&self.spec, &known_fields())?;
        Ok(Redis::from_metadata(&self.spec.kind, &md)?)
    }
}

/// The stream key of `topic` of `tenant`; the tenant's length makes the key
/// unambiguous whatever either name contains.
fn key(tenant: &str, topic: &str) -> String {
    format!("mecha:pubsub:{}:{tenant}:{topic}", tenant.len())
}

/// The offset of entry id `ms-seq`.
fn offset_of(id: &str) -> Result<u64, PubsubError> {
    let bad = || {
        PubsubError::Driver(DriverError::Internal(format!(
            "Redis answered an unexpected entry id {id:?}"
        )))
    };
    let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
    let (ms, seq): (u64, u64) = (
        ms.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    );
    if seq >= 1 << SEQ_BITS || ms >= 1 << (64 - SEQ_BITS) {
        return Err(bad());
    }
    Ok(ms << SEQ_BITS | seq)
}

/// The entry id of `offset`.
fn id_of(offset: u64) -> String {
    format!("{}-{}", offset >> SEQ_BITS, offset & ((1 << SEQ_BITS) - 1))
}

impl Backend for RedisBackend {
    type Handle = ();

    fn publish<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<u64, PubsubError>> {
        Box::pin(async move {
            let body = message.encode()?;
            let mut cmd = redis::cmd("XADD");
            cmd.arg(key(tenant, topic));
            if let Some(n) = self.shared.max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*").arg(FIELD).arg(body);
            let id: String = self
                .shared
                .redis
                .run(|mut conn| async move { cmd.query_async(&mut conn).await })
                .await?;
            offset_of(&id)
        })
    }

    fn join<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<BoxFetcher<()>, PubsubError>> {
        Box::pin(async move {
            let key = key(tenant, topic);
            self.shared.create_group(&key, group).await?;
            let fetcher: Box<dyn Fetcher<()>> = Box::new(RedisFetcher {
                shared: Arc::clone(&self.shared),
                key,
                group: group.to_owned(),
                conn: None,
                last_reclaim: Instant::now(),
                nacks_seen: self.shared.nacks.load(Ordering::Relaxed),
            });
            Ok(fetcher)
        })
    }

    fn ack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        _handle: Option<&'a ()>,
    ) -> BoxFuture<'a, Result<bool, PubsubError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(key(tenant, topic)).arg(group).arg(id_of(offset));
            let n: i64 = self
                .shared
                .redis
                .run(|mut conn| async move { cmd.query_async(&mut conn).await })
                .await?;
            Ok(n > 0)
        })
    }

    fn nack<'a>(
        &'a self,
        tenant: &'a str,
        topic: &'a str,
        group: &'a str,
        offset: u64,
        _handle: &'a (),
    ) -> BoxFuture<'a, Result<(), PubsubError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(key(tenant, topic))
                .arg(group)
                .arg(&self.shared.consumer)
                .arg(0)
                .arg(id_of(offset))
                .arg("IDLE")
                .arg(NACK_IDLE_MS)
                .arg("JUSTID");
            let _: redis::Value = self
                .shared
                .redis
                .run(|mut conn| async move { cmd.query_async(&mut conn).await })
                .await?;
            self.shared.nacks.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// What a read of a group found: entries with their delivery counts, or
/// that the stream or group is gone.
enum Read {
    Entries(Vec<(StreamId, usize)>),
    NoGroup,
}

/// One member's reader, on a connection of its own because XREADGROUP BLOCK
/// holds its connection while it waits.
struct RedisFetcher {
    shared: Arc<Shared>,
    key: String,
    group: String,
    /// The member's own connection, prepared on its first read.
    conn: Option<Redis>,
    last_reclaim: Instant,
    nacks_seen: u64,
}

impl RedisFetcher {
    fn connection(&mut self) -> Result<Redis, PubsubError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let conn = self.shared.reader()?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Whether to claim entries left pending now: a nack happened, or the
    /// redeliver interval passed.
    fn reclaim_due(&mut self) -> Option<Duration> {
        let nacks = self.shared.nacks.load(Ordering::Relaxed);
        let interval_passed = self
            .shared
            .reclaim
            .is_some_and(|(_, every)| self.last_reclaim.elapsed() >= every);
        if nacks == self.nacks_seen && !interval_passed {
            return None;
        }
        self.nacks_seen = nacks;
        self.last_reclaim = Instant::now();
        Some(match self.shared.reclaim {
            Some((processing, _)) => processing,
            // Only nacked entries, which are stamped idle this long.
            None => Duration::from_millis(NACK_IDLE_MS),
        })
    }

    /// Takes over up to `max` entries pending longer than `min_idle`.
    async fn reclaim(
        &self,
        conn: &Redis,
        min_idle: Duration,
        max: usize,
    ) -> Result<Read, RemoteError> {
        let (key, group, consumer) = (&self.key, &self.group, &self.shared.consumer);
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        conn.run(|mut conn| async move {
            let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(group)
                .arg(consumer)
                .arg(min_idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut conn)
                .await
            {
                Err(e) if no_group(&e) => return Ok(Read::NoGroup),
                other => other?,
            };
            let mut out = Vec::with_capacity(reply.claimed.len());
            for entry in reply.claimed {
                // XAUTOCLAIM counted the delivery; XPENDING says how many
                // there have been, which is the attempt number.
                let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                    .arg(key)
                    .arg(group)
                    .arg(&entry.id)
                    .arg(&entry.id)
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                let attempt = pending.ids.first().map_or(2, |p| p.times_delivered);
                out.push((entry, attempt));
            }
            Ok(Read::Entries(out))
        })
        .await
    }

    /// Reads up to `max` new entries, blocking a short while for them.
    async fn read(&self, conn: &Redis, max: usize) -> Result<Read, RemoteError> {
        let (key, group, consumer) = (&self.key, &self.group, &self.shared.consumer);
        let block_ms = u64::try_from(self.shared.block.as_millis()).unwrap_or(u64::MAX);
        conn.run(|mut conn| async move {
            let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .query_async(&mut conn)
                .await
            {
                Err(e) if no_group(&e) => return Ok(Read::NoGroup),
                other => other?,
            };
            Ok(Read::Entries(
                reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(|entry| (entry, 1))
                    .collect(),
            ))
        })
        .await
    }

    /// A delivery of `entry`; an entry this module cannot read is logged and
    /// acknowledged away rather than redelivered forever.
    fn fetched(&self, mut entry: StreamId, attempt: usize) -> Option<Fetched<()>> {
        let decoded = offset_of(&entry.id).and_then(|offset| {
            let bytes: Vec<u8> = entry
                .map
                .remove(FIELD)
                .and_then(|v| redis::from_redis_value(v).ok())
                .ok_or_else(|| {
                    PubsubError::Driver(DriverError::Internal(format!(
                        "entry {} has no message",
                        entry.id
                    )))
                })?;
            Ok((offset, Message::decode(&bytes)?))
        });
        match decoded {
            Ok((offset, message)) => Some(Fetched {
                offset,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                message,
                handle: (),
            }),
            Err(e) => {
                tracing::error!(store = %self.shared.redis.origin().component, stream = %self.key, error = %e,
                    "skipping an unreadable stream entry");
                let (shared, key, group, id) = (
                    Arc::clone(&self.shared),
                    self.key.clone(),
                    self.group.clone(),
                    entry.id,
                );
                tokio::spawn(async move {
                    let mut cmd = redis::cmd("XACK");
                    cmd.arg(key).arg(group).arg(id);
                    let acked: Result<i64, _> = shared
                        .redis
                        .run(|mut conn| async move { cmd.query_async(&mut conn).await })
                        .await;
                    if let Err(e) = acked {
                        // It stays pending and is skipped again when next
                        // claimed.
                        tracing::warn!(error = %e, "acknowledging an unreadable entry failed");
                    }
                });
                None
            }
        }
    }
}

impl Fetcher<()> for RedisFetcher {
    fn fetch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Fetched<()>>, PubsubError>> {
        Box::pin(async move {
            let max = max.min(self.shared.queue_depth).max(1);
            let conn = self.connection()?;
            let read = match self.reclaim_due() {
                Some(min_idle) => match self.reclaim(&conn, min_idle, max).await? {
                    Read::Entries(claimed) if claimed.is_empty() => self.read(&conn, max).await?,
                    claimed => claimed,
                },
                None => self.read(&conn, max).await?,
            };
            match read {
                Read::Entries(entries) => Ok(entries
                    .into_iter()
                    .filter_map(|(entry, attempt)| self.fetched(entry, attempt))
                    .collect()),
                // The stream or group is gone (Redis restarted without
                // persistence, or someone deleted the key): create it again.
                Read::NoGroup => {
                    self.shared.create_group(&self.key, &self.group).await?;
                    Ok(Vec::new())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_and_offsets_round_trip_in_order() {
        let a = offset_of("1764243939123-0").expect("an id");
        let b = offset_of("1764243939123-7").expect("an id");
        let c = offset_of("1764243939124-0").expect("an id");
        assert!(a < b && b < c);
        assert_eq!(id_of(b), "1764243939123-7");
        assert!(offset_of("nonsense").is_err());
        assert!(offset_of("1-1048576").is_err());
    }
}
