//! The `state.redis` driver: state in a Redis server, one hash `{data,
//! version}` per key (the layout Dapr's Redis store uses), with ETags from a
//! per-tenant revision counter, native expiry, and every write applied by
//! one Lua script so that checks and writes are atomic.
//!
//! # Keys
//!
//! A key is stored as `<prefix><tenant>||<key>`. The tenant is always part of
//! it (with `|` and `%` percent-encoded, so a tenant can never end early and
//! reach into another tenant's keys). `<prefix>` follows Dapr's `keyPrefix`:
//! `appid` (the default: in mecha the tenant plays the app id's part) and
//! `none` add nothing, `name` adds `<component name>||`, any other value adds
//! `<value>||`, so several stores can share one Redis database.
//!
//! # ETags
//!
//! The key `<prefix><tenant>|mecha-revision` counts every set of one tenant
//! (it cannot be any tenant's state key: those have `||` right after the
//! encoded tenant). A set takes the next value as the key's `version`, its
//! ETag. Since the counter only grows, an ETag is never handed out twice —
//! not even after the key was deleted and written again, where Dapr's
//! per-key versions would start over. A counter per tenant keeps an ETag
//! from telling one tenant how many writes the others make (issue #16).
//! Stores written before per-tenant counters kept one counter,
//! `<prefix>|mecha-revision`; it is no longer advanced, and every tenant's
//! counter starts above it, so no ETag of those days is handed out again.

use mecha_abi::msg::{ComponentSpec, SetItem, StateEntry, TxOp};
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::{Redis, FIELDS};
use mecha_module::DriverError;

use super::{BoxFuture, OpOutcome, StateStore, StoreError};

/// The fields this driver understands besides the connection's.
const OWN_FIELDS: [&str; 2] = ["keyPrefix", "ttlInSeconds"];

/// The longest TTL passed to Redis, about 100 years. Redis refuses an expiry
/// that overflows its clock arithmetic, and a caller asking for more means
/// "practically never" anyway.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Applies a transaction: `KEYS[1]` is the tenant's revision counter,
/// `KEYS[2]` the old store-wide one (a floor), `KEYS[i + 2]` the key of op
/// `i`; op `i`'s arguments are `ARGV[4i-3 .. 4i]`: kind (`s`et
/// or `d`elete), ETag (`n` for none, else `e` followed by the ETag), value,
/// TTL in ms (empty for none). Every check runs before the first write, and
/// the checks read every key with HGET, which fails on a key of another type
/// before anything is written: the script is all or nothing. Revisions are
/// formatted with `%d` because Lua's `tostring` switches to exponent notation
/// for large numbers.
const TRANSACT: &str = r"
local n = #KEYS - 2
local base = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'),
  tonumber(redis.call('GET', KEYS[2]) or '0'))
local rev = base
local staged = {}
local out = {}
for i = 1, n do
  local key = KEYS[i + 2]
  local etag = ARGV[4 * i - 2]
  local current = staged[key]
  if current == nil then
    current = redis.call('HGET', key, 'version')
  end
  if string.sub(etag, 1, 1) == 'e' and current ~= string.sub(etag, 2) then
    return {'mismatch', tostring(i)}
  end
  if ARGV[4 * i - 3] == 's' then
    rev = rev + 1
    out[i] = string.format('%d', rev)
    staged[key] = out[i]
  else
    if current then out[i] = '1' else out[i] = '0' end
    staged[key] = false
  end
end
for i = 1, n do
  local key = KEYS[i + 2]
  if ARGV[4 * i - 3] == 's' then
    redis.call('DEL', key)
    redis.call('HSET', key, 'data', ARGV[4 * i - 1], 'version', out[i])
    local ttl = ARGV[4 * i]
    if ttl ~= '' then redis.call('PEXPIRE', key, ttl) end
  else
    redis.call('DEL', key)
  end
end
if rev > base then redis.call('SET', KEYS[1], string.format('%d', rev)) end
local reply = {'ok'}
for i = 1, n do reply[i + 1] = out[i] end
return reply
";

/// Applies one set, the common write, with as few commands as it needs:
/// Redis charges each command a script makes, and the general script above
/// makes six for one set. `KEYS` as for [`TRANSACT`] with one key; `ARGV`:
/// ETag (`n` or `e` and the ETag), value, TTL in ms (empty for none).
/// Answers the new revision, or `false` on an ETag mismatch.
///
/// The tenant's counter is advanced with INCR. Only a counter INCR has just
/// created (its first value is 1) is lifted above the old store-wide counter:
/// every counter is created above that one, which no longer moves, so an
/// existing counter is above it already. HSET keeps the hash (a set no longer
/// deletes it first), so an earlier TTL is cleared with PERSIST. A key that
/// holds another type fails at HSET, after INCR, and so skips a revision;
/// with an ETag it fails at HGET first, before anything is written.
const SET_ONE: &str = r"
if ARGV[1] ~= 'n' and redis.call('HGET', KEYS[3], 'version') ~= string.sub(ARGV[1], 2) then
  return false
end
local rev = redis.call('INCR', KEYS[1])
if rev == 1 then
  local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
  if floor >= rev then
    rev = floor + 1
    redis.call('SET', KEYS[1], string.format('%d', rev))
  end
end
rev = string.format('%d', rev)
redis.call('HSET', KEYS[3], 'data', ARGV[2], 'version', rev)
if ARGV[3] == '' then
  redis.call('PERSIST', KEYS[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return rev
";

/// A state store in Redis.
#[derive(Debug)]
pub struct RedisStore {
    redis: Redis,
    /// Prepended to every key; see the module documentation.
    prefix: String,
    /// The TTL of sets that give none (`ttlInSeconds`), in milliseconds.
    default_ttl_ms: Option<u64>,
    script: redis::Script,
    set_one: redis::Script,
}

impl RedisStore {
    /// Validates `spec` and prepares the connection; nothing is sent to Redis
    /// until the first request, so the module starts while Redis is down.
    pub fn open(spec: &ComponentSpec) -> Result<Self, StoreError> {
        let metadata = Metadata::parse(spec, &[&FIELDS[..], &OWN_FIELDS].concat())?;
        let prefix = match metadata.str("keyPrefix")? {
            None => String::new(),
            Some(p) if p.eq_ignore_ascii_case("appid") || p.eq_ignore_ascii_case("none") => {
                String::new()
            }
            Some(p) if p.eq_ignore_ascii_case("name") => format!("{}||", spec.name),
            Some(p) => format!("{p}||"),
        };
        let default_ttl_ms = metadata
            .whole("ttlInSeconds", 1..=MAX_TTL_MS / 1000)?
            .map(|s| s * 1000);
        Ok(Self {
            redis: Redis::from_metadata(&spec.kind, &metadata)?,
            prefix,
            default_ttl_ms,
            script: redis::Script::new(TRANSACT),
            set_one: redis::Script::new(SET_ONE),
        })
    }

    /// The Redis key of `key` under `tenant`.
    fn key(&self, tenant: &str, key: &str) -> String {
        format!("{}{}||{key}", self.prefix, encode_tenant(tenant))
    }

    /// The Redis key of `tenant`'s revision counter; see the module
    /// documentation.
    fn revision_key(&self, tenant: &str) -> String {
        format!("{}{}|mecha-revision", self.prefix, encode_tenant(tenant))
    }

    async fn get_keys(
        &self,
        tenant: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<StateEntry>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let [key] = keys.as_slice() {
            // One key is one command, without a pipeline around it.
            let (value, etag): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
                .arg(self.key(tenant, key))
                .arg("data")
                .arg("version")
                .query_async(&mut self.redis.connection())
                .await
                .map_err(|e| StoreError::from(self.redis.error(&e)))?;
            return Ok(vec![match (value, etag) {
                (Some(value), Some(etag)) => Some(StateEntry { value, etag }),
                _ => None,
            }]);
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET")
                .arg(self.key(tenant, key))
                .arg("data")
                .arg("version");
        }
        let rows: Vec<(Option<Vec<u8>>, Option<String>)> = pipe
            .query_async(&mut self.redis.connection())
            .await
            .map_err(|e| StoreError::from(self.redis.error(&e)))?;
        Ok(rows
            .into_iter()
            .map(|row| match row {
                (Some(value), Some(etag)) => Some(StateEntry { value, etag }),
                _ => None,
            })
            .collect())
    }

    async fn apply(&self, tenant: &str, mut ops: Vec<TxOp>) -> Result<Vec<OpOutcome>, StoreError> {
        if let [TxOp::Set(_)] = ops.as_slice() {
            if let Some(TxOp::Set(item)) = ops.pop() {
                return Ok(vec![self.set_one(tenant, item).await?]);
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.key(self.revision_key(tenant));
        invocation.key(format!("{}|mecha-revision", self.prefix));
        let mut kinds = Vec::with_capacity(ops.len());
        for op in ops {
            let (kind, key, etag, value, ttl) = match op {
                TxOp::Set(item) => {
                    let ttl = item
                        .ttl_ms
                        .or(self.default_ttl_ms)
                        .map(|t| t.min(MAX_TTL_MS));
                    ("s", item.key, item.etag, item.value, ttl)
                }
                TxOp::Delete(item) => ("d", item.key, item.etag, Vec::new(), None),
            };
            invocation.key(self.key(tenant, &key));
            invocation
                .arg(kind)
                .arg(etag.map_or_else(|| "n".to_owned(), |e| format!("e{e}")))
                .arg(value)
                .arg(ttl.map_or_else(String::new, |t| t.to_string()));
            kinds.push((key, kind == "s"));
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(|e| StoreError::from(self.redis.error(&e)))?;
        outcomes(kinds, reply)
    }
}

impl RedisStore {
    /// One set through [`SET_ONE`].
    async fn set_one(&self, tenant: &str, item: SetItem) -> Result<OpOutcome, StoreError> {
        let ttl = item
            .ttl_ms
            .or(self.default_ttl_ms)
            .map(|t| t.min(MAX_TTL_MS));
        let reply: Option<String> = self
            .set_one
            .key(self.revision_key(tenant))
            .key(format!("{}|mecha-revision", self.prefix))
            .key(self.key(tenant, &item.key))
            .arg(
                item.etag
                    .map_or_else(|| "n".to_owned(), |e| format!("e{e}")),
            )
            .arg(item.value)
            .arg(ttl.map_or_else(String::new, |t| t.to_string()))
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(|e| StoreError::from(self.redis.error(&e)))?;
        match reply {
            Some(etag) => Ok(OpOutcome::Set { etag }),
            None => Err(StoreError::EtagMismatch { key: item.key }),
        }
    }
}

/// A tenant as it appears in Redis keys: `%` and `|` percent-encoded, so it
/// holds no `|` and cannot end early.
fn encode_tenant(tenant: &str) -> String {
    tenant.replace('%', "%25").replace('|', "%7C")
}

/// Turns the script's reply into outcomes, or the ETag mismatch it reports.
/// `ops` holds each op's key and whether it is a set, in op order: the reply
/// marks deletes with `1`/`0`, which are also valid revisions of sets.
fn outcomes(ops: Vec<(String, bool)>, reply: Vec<String>) -> Result<Vec<OpOutcome>, StoreError> {
    let malformed = || {
        StoreError::Driver(DriverError::Internal(format!(
            "redis: unexpected script reply {reply:?}"
        )))
    };
    match reply.first().map(String::as_str) {
        Some("mismatch") => {
            let index: usize = reply
                .get(1)
                .and_then(|i| i.parse().ok())
                .ok_or_else(malformed)?;
            let (key, _) = ops.get(index.wrapping_sub(1)).ok_or_else(malformed)?;
            Err(StoreError::EtagMismatch { key: key.clone() })
        }
        Some("ok") if reply.len() == ops.len() + 1 => Ok(ops
            .iter()
            .zip(&reply[1..])
            .map(|((_, is_set), out)| {
                if *is_set {
                    OpOutcome::Set { etag: out.clone() }
                } else {
                    OpOutcome::Deleted {
                        existed: out == "1",
                    }
                }
            })
            .collect()),
        _ => Err(malformed()),
    }
}

impl StateStore for RedisStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<StateEntry>>, StoreError>> {
        Box::pin(self.get_keys(tenant, keys))
    }

    fn transact<'a>(
        &'a self,
        tenant: &'a str,
        ops: Vec<TxOp>,
    ) -> BoxFuture<'a, Result<Vec<OpOutcome>, StoreError>> {
        Box::pin(self.apply(tenant, ops))
    }

    /// Redis expires keys itself, so there is nothing to sweep.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}
