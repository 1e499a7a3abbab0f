//! `bindings.redis` as an input binding (a mecha extension: Dapr has no
//! Redis Streams input binding): with metadata `stream`, each entry added to
//! that Redis stream is an event, read through the consumer group
//! `consumerGroup` (default `mecha-<node name>`, so that every node's
//! tenants receive every entry) with `XREADGROUP`. The event's body is the
//! entry's fields as a JSON object of strings; its metadata holds the
//! entry's `id` and the `stream`.
//!
//! An entry is acknowledged (`XACK`) only once its fan-out is durable, so
//! an entry read before a crash is read again from the group's pending list
//! after the restart. The ledger's cursor is the last entry fanned out (its
//! id packed into 64 bits), so an entry fanned out but not yet acknowledged
//! is acknowledged without being fanned out twice.

use std::sync::Arc;
use std::time::Duration;

use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::{client as redis, Redis};
use mecha_module::remote::RemoteError;
use redis::streams::{StreamId, StreamReadReply};

use crate::error::BindingError;
use crate::input::Input;

/// The input fields of `bindings.redis`.
pub const FIELDS: [&str; 2] = ["stream", "consumerGroup"];

/// The consumer name within the group: one module instance per node reads.
const CONSUMER: &str = "bindings";

/// Entries read per `XREADGROUP`.
const BATCH: usize = 64;

/// How long one `XREADGROUP` waits for new entries; below the connection's
/// command timeout. The connection serves this binding alone.
const BLOCK_MS: u64 = 1000;

/// The pause after a failure (the server away, the ledger not writable).
const RETRY: Duration = Duration::from_secs(1);

/// A Redis stream to read.
#[derive(Clone)]
pub struct StreamSource {
    redis: Redis,
    stream: String,
    group: String,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl StreamSource {
    /// Reads the stream fields; connects to nothing yet.
    pub fn open(kind: &str, metadata: &Metadata<'_>) -> Result<Self, BindingError> {
        let node = std::env::var("MECHA_NODE_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "node".to_owned());
        Ok(Self {
            redis: Redis::from_metadata(kind, metadata)?,
            stream: metadata.required("stream")?.to_owned(),
            group: metadata
                .str("consumerGroup")?
                .map_or_else(|| format!("mecha-{node}"), str::to_owned),
        })
    }
}

/// An entry id `ms-seq` packed into the ledger's 64-bit cursor: the
/// milliseconds in the high 44 bits, the sequence in the low 20. Stream ids
/// grow, so packed ids do too while a millisecond holds fewer than a million
/// entries; `None` for an id that does not fit.
pub fn pack(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (ms < 1 << 44 && seq < 1 << 20).then_some(ms << 20 | seq)
}

/// Reads the stream for as long as the module runs.
pub async fn run(input: Arc<Input>, source: StreamSource) {
    let mut last = loop {
        match input.ready().await {
            Ok(last) => break last,
            Err(e) => {
                tracing::warn!(
                    binding = input.name(),
                    "stream binding cannot start yet: {e}"
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    // First the entries this consumer read before a restart and never
    // acknowledged, then new ones.
    let mut pending = true;
    loop {
        let entries = match read(&source, pending).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(binding = input.name(), "reading the stream failed: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if pending && entries.is_empty() {
            pending = false;
            continue;
        }
        for entry in entries {
            handle(&input, &source, &mut last, entry).await;
        }
    }
}

/// Fans `entry` out (unless the ledger shows it was) and acknowledges it,
/// retrying until both are done: an entry is never skipped.
async fn handle(input: &Input, source: &StreamSource, last: &mut Option<u64>, entry: StreamId) {
    let Some(cursor) = pack(&entry.id) else {
        tracing::error!(binding = input.name(), id = %entry.id, "skipping a stream entry whose id cannot be recorded");
        let _ = ack(source, &entry.id).await;
        return;
    };
    if last.is_none_or(|l| cursor > l) {
        let fields: serde_json::Map<String, serde_json::Value> = entry
            .map
            .iter()
            .map(|(k, v)| {
                let text = redis::from_redis_value::<Vec<u8>>(v.clone())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                (k.clone(), serde_json::Value::String(text))
            })
            .collect();
        let data = serde_json::to_vec(&fields).unwrap_or_default();
        let metadata = vec![
            ("id".to_owned(), entry.id.clone()),
            ("stream".to_owned(), source.stream.clone()),
        ];
        while let Err(e) = input.fire(cursor, data.clone(), metadata.clone()).await {
            tracing::warn!(binding = input.name(), id = %entry.id, "stream entry not fanned out yet: {e}");
            tokio::time::sleep(RETRY).await;
        }
        *last = Some(cursor);
    }
    while let Err(e) = ack(source, &entry.id).await {
        tracing::warn!(binding = input.name(), id = %entry.id, "XACK failed: {e}");
        tokio::time::sleep(RETRY).await;
    }
}

/// One `XREADGROUP`: this consumer's pending entries, or new ones (creating
/// the group, at the stream's end, when it does not exist).
async fn read(source: &StreamSource, pending: bool) -> Result<Vec<StreamId>, RemoteError> {
    let attempt = |create: bool| {
        let (stream, group) = (source.stream.clone(), source.group.clone());
        source.redis.run(move |mut c| async move {
            if create {
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(&group)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await;
                if let Err(e) = created {
                    if e.code() != Some("BUSYGROUP") {
                        return Err(e);
                    }
                }
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&group)
                .arg(CONSUMER)
                .arg("COUNT")
                .arg(BATCH);
            if !pending {
                cmd.arg("BLOCK").arg(BLOCK_MS);
            }
            cmd.arg("STREAMS")
                .arg(&stream)
                .arg(if pending { "0" } else { ">" });
            let reply: Option<StreamReadReply> = cmd.query_async(&mut c).await?;
            Ok(reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect::<Vec<StreamId>>())
        })
    };
    match attempt(false).await {
        Err(RemoteError::Failed(message)) if message.contains("NOGROUP") => attempt(true).await,
        other => other,
    }
}

async fn ack(source: &StreamSource, id: &str) -> Result<(), RemoteError> {
    let (stream, group, id) = (source.stream.clone(), source.group.clone(), id.to_owned());
    source
        .redis
        .run(move |mut c| async move {
            redis::cmd("XACK")
                .arg(&stream)
                .arg(&group)
                .arg(&id)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pack_in_order() {
        assert_eq!(pack("0-1"), Some(1));
        assert!(pack("1700000000000-0") < pack("1700000000000-1"));
        assert!(pack("1700000000000-999") < pack("1700000000001-0"));
        assert_eq!(pack("1-2000000"), None);
        assert_eq!(pack("x-1"), None);
    }
}
