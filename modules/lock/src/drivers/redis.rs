//! The `lock.redis` driver: a lease is a Redis key set with `SET NX PX`, and
//! the owner check of unlock and extend runs in Lua so it is atomic; fencing
//! tokens come from `INCR` on a per-lock counter key.

use std::sync::LazyLock;

use mecha_abi::msg::{ComponentSpec, ExtendLockReply, UnlockStatus};
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::client::Script;
use mecha_module::remote::redis::{Redis, FIELDS};
use mecha_module::DriverError;

use super::{not_extended, now_ms, tenant_key};
use super::{Attempt, BoxFuture, LockError, LockStore, Releases};

/// The longest lease Redis is asked for: about 100 years. Redis refuses an
/// expiry whose end does not fit its clock, and a caller asking for more
/// means "practically never" anyway.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Takes the lock if nobody holds it. KEYS: lock, counter. ARGV: owner,
/// ttl_ms, the wall clock in microseconds. Answers `{1, token}` when granted,
/// `{0, pttl}` when held (`pttl` -1: held without expiry).
///
/// Numbers are formatted with `%d`: Lua 5.1 turns numbers into text with
/// `%.14g`, which would write a 16-digit token in exponent notation.
///
/// The token is the counter's `INCR`, raised to the clock when the clock is
/// ahead: so tokens keep increasing even if Redis lost the counter (a
/// restart without persistence), as long as the clock does not step back.
const ACQUIRE: &str = r"
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  return {0, string.format('%d', pttl)}
end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token < floor then
  redis.call('SET', KEYS[2], ARGV[3])
  token = floor
end
token = string.format('%d', token)
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, token}
";

/// Releases the lock if ARGV[1] owns it: 0 success, 1 no lock, 2 another's.
const UNLOCK: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
local sep = string.find(v, ':', 1, true)
if string.sub(v, sep + 1) ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 0
";

/// Renews the lease if ARGV[1] owns the lock, to ARGV[2] ms from now:
/// `{0, token}`, or `{1, ''}` (no lock) / `{2, ''}` (another's).
const EXTEND: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {1, ''} end
local sep = string.find(v, ':', 1, true)
if string.sub(v, sep + 1) ~= ARGV[1] then return {2, ''} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0, string.sub(v, 1, sep - 1)}
";

static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static UNLOCK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK));
static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND));

/// A lock store in Redis.
#[derive(Debug)]
pub struct RedisLocks {
    redis: Redis,
    /// Prepended to every key (`keyPrefix`, default `mecha-lock:`).
    prefix: String,
    releases: Releases,
}

impl RedisLocks {
    /// Reads the component's metadata and prepares the connection; connects
    /// on first use, so the module starts while Redis is down.
    pub fn open(spec: &ComponentSpec) -> Result<Self, LockError> {
        let mut known = FIELDS.to_vec();
        known.push("keyPrefix");
        let metadata = Metadata::parse(spec, &known)?;
        let prefix = metadata
            .str("keyPrefix")?
            .unwrap_or("mecha-lock:")
            .to_owned();
        Ok(Self {
            redis: Redis::from_metadata("lock.redis", &metadata)?,
            prefix,
            releases: Releases::default(),
        })
    }

    /// The lease key of `resource`, and its fencing counter's key. Lease keys
    /// continue the prefix with a digit (the tenant's length), counters with
    /// `fence:`, so the two never collide.
    fn keys(&self, tenant: &str, resource: &str) -> (String, String) {
        let scoped = tenant_key(tenant, resource);
        (
            format!("{}{scoped}", self.prefix),
            format!("{}fence:{scoped}", self.prefix),
        )
    }
}

impl LockStore for RedisLocks {
    fn try_lock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Attempt, LockError>> {
        Box::pin(async move {
            let (lock, fence) = self.keys(tenant, resource);
            let floor = now_ms().saturating_mul(1000);
            let (granted, n): (i64, String) = self
                .redis
                .run(|mut conn| async move {
                    ACQUIRE_SCRIPT
                        .key(&lock)
                        .key(&fence)
                        .arg(owner)
                        .arg(ttl_ms.min(MAX_TTL_MS))
                        .arg(floor)
                        .invoke_async(&mut conn)
                        .await
                })
                .await
                .map_err(LockError::from)?;
            let n: i64 = n.parse().map_err(|_| {
                LockError::Driver(DriverError::Internal(format!(
                    "lock.redis: bad script answer {n:?}"
                )))
            })?;
            if granted == 1 {
                let fencing_token = u64::try_from(n).map_err(|_| {
                    LockError::Driver(DriverError::Internal(format!(
                        "lock.redis: negative fencing token {n}"
                    )))
                })?;
                return Ok(Attempt::Acquired { fencing_token });
            }
            let expires_at_ms = match u64::try_from(n) {
                Ok(left) => now_ms().saturating_add(left),
                // A key without expiry (set by something else) stays held.
                Err(_) => u64::MAX,
            };
            Ok(Attempt::Held { expires_at_ms })
        })
    }

    fn unlock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<UnlockStatus, LockError>> {
        Box::pin(async move {
            let (lock, _) = self.keys(tenant, resource);
            let code: i64 = self
                .redis
                .run(|mut conn| async move {
                    UNLOCK_SCRIPT
                        .key(&lock)
                        .arg(owner)
                        .invoke_async(&mut conn)
                        .await
                })
                .await
                .map_err(LockError::from)?;
            let status = status_of(code)?;
            if status == UnlockStatus::Success {
                self.releases.released(tenant, resource);
            }
            Ok(status)
        })
    }

    fn extend<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<ExtendLockReply, LockError>> {
        Box::pin(async move {
            let (lock, _) = self.keys(tenant, resource);
            let (code, token): (i64, String) = self
                .redis
                .run(|mut conn| async move {
                    EXTEND_SCRIPT
                        .key(&lock)
                        .arg(owner)
                        .arg(ttl_ms.min(MAX_TTL_MS))
                        .invoke_async(&mut conn)
                        .await
                })
                .await
                .map_err(LockError::from)?;
            let status = status_of(code)?;
            if status != UnlockStatus::Success {
                return Ok(not_extended(status));
            }
            let fencing_token = token.parse().map_err(|_| {
                LockError::Driver(DriverError::Internal(format!(
                    "lock.redis: bad fencing token {token:?}"
                )))
            })?;
            Ok(ExtendLockReply {
                status,
                fencing_token,
            })
        })
    }

    /// Redis expires leases itself.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, LockError>> {
        Box::pin(async { Ok(0) })
    }

    fn releases(&self) -> &Releases {
        &self.releases
    }
}

fn status_of(code: i64) -> Result<UnlockStatus, LockError> {
    match code {
        0 => Ok(UnlockStatus::Success),
        1 => Ok(UnlockStatus::LockDoesNotExist),
        2 => Ok(UnlockStatus::LockBelongsToOthers),
        other => Err(LockError::Driver(DriverError::Internal(format!(
            "lock.redis: unexpected script answer {other}"
        )))),
    }
}
