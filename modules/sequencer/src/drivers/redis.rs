//! The `sequencer.redis` driver: each sequence is a Redis counter, the
//! highest id ever reserved, advanced with INCRBY one segment at a time.
//!
//! A key is stored as `<prefix><tenant>||<key>`, with `|` and `%` of the
//! tenant percent-encoded so tenants cannot reach into each other's keys.
//! `<prefix>` follows Dapr's `keyPrefix` convention: the default `seq` and
//! any other value `v` give `v||`, `name` gives `<component name>||`, `none`
//! gives nothing. The default keeps sequences apart from `state.redis` keys
//! in a shared database.
//!
//! Ids survive a module restart because the counter lives in Redis: the new
//! process reserves above it. They survive a Redis restart only as far as
//! Redis persists its data (AOF with `appendfsync always` for no loss).

use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::{Redis, FIELDS};
use mecha_module::DriverError;

use super::{BoxFuture, SeqError, Sequencer};
use crate::segments::Segments;

/// The fields this driver understands besides the connection's.
const OWN_FIELDS: [&str; 2] = ["keyPrefix", "segmentSize"];

/// A sequencer in Redis.
#[derive(Debug)]
pub struct RedisSequencer {
    redis: Redis,
    prefix: String,
    segments: Segments,
}

impl RedisSequencer {
    /// Validates `spec` and prepares the connection; nothing is sent to Redis
    /// until the first request, so the module starts while Redis is down.
    /// `segmentSize`: see [`Segments::from_metadata`].
    pub fn open(spec: &ComponentSpec) -> Result<Self, SeqError> {
        let metadata = Metadata::parse(spec, &[&FIELDS[..], &OWN_FIELDS].concat())?;
        let prefix = match metadata.str("keyPrefix")? {
            None => "seq||".to_owned(),
            Some(p) if p.eq_ignore_ascii_case("none") => String::new(),
            Some(p) if p.eq_ignore_ascii_case("name") => format!("{}||", spec.name),
            Some(p) => format!("{p}||"),
        };
        Ok(Self {
            redis: Redis::from_metadata(&spec.kind, &metadata)?,
            prefix,
            segments: Segments::from_metadata(&metadata)?,
        })
    }

    /// Reserves `n` ids of the Redis counter `name` and returns the new value.
    async fn reserve(&self, name: String, key: &str, n: u64) -> Result<u64, SeqError> {
        let result: Result<i64, _> = redis::cmd("INCRBY")
            .arg(&name)
            .arg(n)
            .query_async(&mut self.redis.connection())
            .await;
        match result {
            Ok(bound) => u64::try_from(bound).map_err(|_| {
                SeqError::Driver(DriverError::Internal(format!(
                    "redis counter {name:?} is negative"
                )))
            }),
            // Redis refuses to pass i64::MAX; the sequence is used up.
            Err(e) if e.to_string().contains("overflow") => Err(SeqError::Exhausted {
                key: key.to_owned(),
                count: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            Err(e) => Err(self.redis.error(&e).into()),
        }
    }
}

impl Sequencer for RedisSequencer {
    fn next_ids<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<u64, SeqError>> {
        Box::pin(async move {
            let encoded = tenant.replace('%', "%25").replace('|', "%7C");
            let name = format!("{}{encoded}||{key}", self.prefix);
            self.segments
                .allocate(tenant, key, count, |n| self.reserve(name, key, n))
                .await
        })
    }
}
