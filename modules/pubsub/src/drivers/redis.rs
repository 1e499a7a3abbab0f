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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::is_outage;
use mecha_module::remote::Origin;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisError};
use tokio::time::Instant;

use futures_util::future::BoxFuture;

use crate::error::PubsubError;
use crate::message::Message;
use crate::request::DEFAULT_GROUP;
use crate::server_delivery::{Backend, BoxFetcher, Fetched, Fetcher, ServerSettings, ServerStore};

/// The metadata fields `pubsub.redis` understands (Dapr's names, plus
/// mecha's `ackDeadlineMs`).
pub const KNOWN_FIELDS: [&str; 12] = [
    "redisHost",
    "redisPassword",
    "redisUsername",
    "redisDB",
    "consumerID",
    "processingTimeout",
    "redeliverInterval",
    "queueDepth",
    "concurrency",
    "maxLenApprox",
    "enableTLS",
    "ackDeadlineMs",
];

/// The stream field that holds the encoded message.
const FIELD: &str = "m";

/// Bits of an offset that hold the sequence part of a Redis entry id.
const SEQ_BITS: u32 = 20;

/// How long one XREADGROUP waits for new messages; a member looks at its
/// deadlines, nacks and cancellation between two reads.
const BLOCK: Duration = Duration::from_millis(500);

/// The idle time a nacked entry is given: longer than any ack deadline
/// (at most u32::MAX ms) or `processingTimeout`, so the next XAUTOCLAIM of
/// any member takes it.
const NACK_IDLE_MS: u64 = 1 << 32;

/// Opens a `pubsub.redis` store; it connects lazily, so the module starts
/// while Redis is down.
pub fn open(spec: &ComponentSpec) -> Result<ServerStore<RedisBackend>, PubsubError> {
    let md = Metadata::parse(spec, &KNOWN_FIELDS)?;
    let host = md.required("redisHost")?;
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => {
            let port = port.parse::<u16>().map_err(|_| {
                md.error(format!(
                    "metadata field \"redisHost\" must be host:port, not {host:?}"
                ))
            })?;
            (name.to_owned(), port)
        }
        None => (host.to_owned(), 6379),
    };
    if md.bool("enableTLS")? == Some(true) {
        return Err(md
            .error("metadata field \"enableTLS\": TLS to Redis is not built into this module")
            .into());
    }
    let mut redis = redis::RedisConnectionInfo::default()
        .set_db(md.whole("redisDB", 0..=i64::MAX as u64)?.unwrap_or(0) as i64);
    if let Some(user) = md.str("redisUsername")? {
        redis = redis.set_username(user);
    }
    if let Some(password) = md.get("redisPassword").filter(|p| !p.is_empty()) {
        redis = redis.set_password(password);
    }
    let info = ConnectionAddr::Tcp(name, port)
        .into_connection_info()
        .map_err(|e| md.error(format!("metadata field \"redisHost\": {e}")))?
        .set_redis_settings(redis);
    let client =
        Client::open(info).map_err(|e| md.error(format!("metadata field \"redisHost\": {e}")))?;
    let processing = md
        .duration("processingTimeout", Duration::from_millis(1))?
        .unwrap_or(Duration::from_secs(60));
    let redeliver = md
        .duration("redeliverInterval", Duration::from_millis(1))?
        .unwrap_or(Duration::from_secs(15));
    let queue_depth = md.whole("queueDepth", 1..=100_000)?.unwrap_or(100) as usize;
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
        None => format!("mecha-{}", crate::message::id::IdSource::new().next_id()),
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| md.error(format!("setting up the Redis connection failed: {e}")))?;
    let settings = ServerSettings::from_metadata(
        spec,
        &md,
        reclaim.map(|(processing, _)| processing),
        DEFAULT_GROUP.to_owned(),
    )?;
    let backend = RedisBackend {
        shared: Arc::new(Shared {
            origin: Origin {
                component: spec.name.clone(),
                kind: spec.kind.clone(),
                server: host.to_owned(),
            },
            client,
            manager,
            consumer,
            reclaim,
            queue_depth,
            max_len,
            nacks: AtomicU64::new(0),
        }),
    };
    Ok(ServerStore::new(settings, backend))
}

/// The Redis side of a `pubsub.redis` store.
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    origin: Origin,
    client: Client,
    /// The shared, reconnecting connection for everything but blocking reads.
    manager: ConnectionManager,
    /// This instance's consumer name in every group.
    consumer: String,
    /// (processingTimeout, redeliverInterval), or `None` when off.
    reclaim: Option<(Duration, Duration)>,
    queue_depth: usize,
    max_len: Option<u64>,
    /// Counts nacks, so members know to claim nacked entries now.
    nacks: AtomicU64,
}

impl Shared {
    /// The error for a failed Redis command: UNAVAILABLE when Redis cannot be
    /// reached, else INTERNAL.
    fn error(&self, what: &str, e: &RedisError) -> PubsubError {
        let message = format_args!("{what}: {e}");
        if is_outage(e) {
            self.origin.unavailable(message).into()
        } else {
            self.origin.failed(message).into()
        }
    }

    async fn create_group(&self, key: &str, group: &str) -> Result<(), PubsubError> {
        let mut conn = self.manager.clone();
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(self.error("creating a group", &e)),
            _ => Ok(()),
        }
    }
}

/// The stream key of `topic` of `tenant`; the tenant's length makes the key
/// unambiguous whatever either name contains.
fn key(tenant: &str, topic: &str) -> String {
    format!("mecha:pubsub:{}:{tenant}:{topic}", tenant.len())
}

/// The offset of entry id `ms-seq`.
fn offset_of(id: &str) -> Result<u64, PubsubError> {
    let bad = || PubsubError::Internal(format!("Redis answered an unexpected entry id {id:?}"));
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
            let mut conn = self.shared.manager.clone();
            let id: String = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| self.shared.error("publishing", &e))?;
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
            let mut conn = self.shared.manager.clone();
            let n: i64 = redis::cmd("XACK")
                .arg(key(tenant, topic))
                .arg(group)
                .arg(id_of(offset))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.shared.error("acknowledging", &e))?;
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
            let mut conn = self.shared.manager.clone();
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(key(tenant, topic))
                .arg(group)
                .arg(&self.shared.consumer)
                .arg(0)
                .arg(id_of(offset))
                .arg("IDLE")
                .arg(NACK_IDLE_MS)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.shared.error("giving back a delivery", &e))?;
            self.shared.nacks.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// One member's reader, on a connection of its own because XREADGROUP BLOCK
/// holds its connection while it waits.
struct RedisFetcher {
    shared: Arc<Shared>,
    key: String,
    group: String,
    conn: Option<MultiplexedConnection>,
    last_reclaim: Instant,
    nacks_seen: u64,
}

impl RedisFetcher {
    async fn connection(&mut self) -> Result<MultiplexedConnection, PubsubError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        let conn = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.shared.error("connecting", &e))?;
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

    async fn reclaim(
        &mut self,
        conn: &mut MultiplexedConnection,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Fetched<()>>, RedisError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.shared.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(conn)
            .await?;
        let mut out = Vec::with_capacity(reply.claimed.len());
        for entry in reply.claimed {
            // XAUTOCLAIM counted the delivery; XPENDING says how many there
            // have been, which is the attempt number.
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1)
                .query_async(conn)
                .await?;
            let attempt = pending.ids.first().map_or(2, |p| p.times_delivered);
            if let Some(f) = self.fetched(entry, attempt) {
                out.push(f);
            }
        }
        Ok(out)
    }

    async fn read(
        &mut self,
        conn: &mut MultiplexedConnection,
        max: usize,
    ) -> Result<Vec<Fetched<()>>, RedisError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(conn)
            .await?;
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect::<Vec<_>>();
        Ok(entries
            .into_iter()
            .filter_map(|entry| self.fetched(entry, 1))
            .collect())
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
                    PubsubError::Internal(format!("entry {} has no message", entry.id))
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
                tracing::error!(store = %self.shared.origin.component, stream = %self.key, error = %e,
                    "skipping an unreadable stream entry");
                let (shared, key, group, id) = (
                    Arc::clone(&self.shared),
                    self.key.clone(),
                    self.group.clone(),
                    entry.id,
                );
                tokio::spawn(async move {
                    let mut conn = shared.manager.clone();
                    let _: Result<i64, _> = redis::cmd("XACK")
                        .arg(key)
                        .arg(group)
                        .arg(id)
                        .query_async(&mut conn)
                        .await;
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
            let mut conn = self.connection().await?;
            let result = match self.reclaim_due() {
                Some(min_idle) => match self.reclaim(&mut conn, min_idle, max).await {
                    Ok(claimed) if !claimed.is_empty() => Ok(claimed),
                    Ok(_) => self.read(&mut conn, max).await,
                    Err(e) => Err(e),
                },
                None => self.read(&mut conn, max).await,
            };
            match result {
                Ok(batch) => Ok(batch),
                // The stream or group is gone (Redis restarted without
                // persistence, or someone deleted the key): create it again.
                Err(e) if e.code() == Some("NOGROUP") => {
                    self.shared.create_group(&self.key, &self.group).await?;
                    Ok(Vec::new())
                }
                Err(e) => {
                    self.conn = None;
                    Err(self.shared.error("reading", &e))
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
