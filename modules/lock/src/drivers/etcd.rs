//! The `lock.etcd` driver: a lease is an etcd key created only if absent
//! (a transaction on `create_revision == 0`) and attached to an etcd lease,
//! so etcd removes it when its holder stops renewing; the fencing token is
//! the key's create revision, which etcd never hands out twice.

use mecha_abi::msg::{ComponentSpec, ExtendLockReply, UnlockStatus};
use mecha_module::metadata::Metadata;
use mecha_module::remote::etcd::{base64, bytes, int, Etcd, FIELDS};
use mecha_module::DriverError;
use serde_json::{json, Value};

use super::{held_by, is_live, lease_end, not_extended, now_ms, tenant_key};
use super::{Attempt, BoxFuture, LockError, LockStore, Releases};

/// How often an operation starts over when another writer changed the key
/// between its read and its conditional write. Each retry means somebody
/// else made progress, so a few suffice.
const ATTEMPTS: usize = 8;

/// etcd's longest lease, in seconds.
const MAX_LEASE_SECS: u64 = 9_000_000_000;

/// A lock store in etcd.
#[derive(Debug)]
pub struct EtcdLocks {
    etcd: Etcd,
    /// Prepended to every key (`keyPrefixPath`, default `mecha/lock/`).
    prefix: String,
    releases: Releases,
}

/// A lock key as read from etcd.
struct Held {
    owner: String,
    expires_at_ms: u64,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

impl super::FoundLease for Held {
    fn owner(&self) -> &str {
        &self.owner
    }
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

impl EtcdLocks {
    /// Reads the component's metadata; connects on first use, so the module
    /// starts while etcd is down.
    pub fn open(spec: &ComponentSpec) -> Result<Self, LockError> {
        let metadata = Metadata::parse(spec, &FIELDS)?;
        let etcd = Etcd::from_metadata("lock.etcd", &metadata)?;
        let prefix = etcd.prefix().unwrap_or("mecha/lock/").to_owned();
        Ok(Self {
            etcd,
            prefix,
            releases: Releases::default(),
        })
    }

    fn key(&self, tenant: &str, resource: &str) -> String {
        base64(format!("{}{}", self.prefix, tenant_key(tenant, resource)).as_bytes())
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, LockError> {
        self.etcd.call(path, &body).await.map_err(LockError::from)
    }

    /// Grants an etcd lease that outlives a lock lease of `ttl_ms`: leases
    /// are whole seconds (and etcd raises short ones to its minimum), so the
    /// key may outlive the lock lease — the value's expiry decides, and an
    /// expired key is treated as free — but never the other way round.
    async fn grant(&self, ttl_ms: u64) -> Result<i64, LockError> {
        let secs = (ttl_ms.div_ceil(1000) + 1).min(MAX_LEASE_SECS);
        let answer = self
            .call("/v3/lease/grant", json!({ "TTL": secs.to_string() }))
            .await?;
        match int(&answer, "ID") {
            0 => Err(LockError::Driver(DriverError::Internal(format!(
                "lock.etcd: lease grant answered no id: {answer}"
            )))),
            id => Ok(id),
        }
    }

    /// Revokes a lease that is no longer needed. Failure is harmless (the
    /// lease expires by itself), so it is only logged.
    async fn revoke(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let body = json!({ "ID": lease.to_string() });
        if let Err(e) = self.etcd.call("/v3/lease/revoke", &body).await {
            tracing::debug!("lock.etcd: revoking lease {lease} failed (it will expire): {e}");
        }
    }

    /// The lock key's current state, if it exists.
    async fn read(&self, key: &str) -> Result<Option<Held>, LockError> {
        let answer = self.call("/v3/kv/range", json!({ "key": key })).await?;
        Ok(first_kv(&answer).map(parse))
    }

    /// Applies `ops` if the key's mod revision is still `mod_revision`.
    async fn if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        op: Value,
    ) -> Result<bool, LockError> {
        let body = json!({
            "compare": [{
                "key": key, "result": "EQUAL", "target": "MOD",
                "mod_revision": mod_revision.to_string(),
            }],
            "success": [op],
        });
        let answer = self.call("/v3/kv/txn", body).await?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    async fn try_lock_inner(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        lease: i64,
    ) -> Result<Attempt, LockError> {
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let value = base64(format!("{}:{owner}", lease_end(ttl_ms, now)).as_bytes());
            let body = json!({
                "compare": [{
                    "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0",
                }],
                "success": [{ "request_put": { "key": key, "value": value, "lease": lease.to_string() } }],
                "failure": [{ "request_range": { "key": key } }],
            });
            let answer = self.call("/v3/kv/txn", body).await?;
            if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
                // The put is the transaction's only write, so the key's
                // create revision is the revision the transaction made.
                let revision = answer.get("header").map_or(0, |h| int(h, "revision"));
                let fencing_token =
                    u64::try_from(revision)
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| {
                            LockError::Driver(DriverError::Internal(format!(
                                "lock.etcd: no revision in {answer}"
                            )))
                        })?;
                return Ok(Attempt::Acquired { fencing_token });
            }
            let current = answer
                .pointer("/responses/0/response_range")
                .and_then(first_kv)
                .map(parse);
            let Some(held) = current else {
                // Deleted between the comparison and the read: try again.
                continue;
            };
            if is_live(held.expires_at_ms, now_ms()) {
                return Ok(Attempt::Held {
                    expires_at_ms: held.expires_at_ms,
                });
            }
            // The lease has passed but etcd has not removed the key yet (its
            // lease is whole seconds). Deleting it only if unchanged keeps a
            // racing grant safe; the next round creates the key afresh, so
            // the new grant gets a new create revision, a greater token.
            let delete = json!({ "request_delete_range": { "key": key } });
            if self.if_unchanged(key, held.mod_revision, delete).await? {
                self.revoke(held.lease).await;
            }
        }
        Err(LockError::Driver(DriverError::Unavailable(format!(
            "lock.etcd: the lock key kept changing during {ATTEMPTS} attempts; try again"
        ))))
    }
}

/// The first key of a range answer.
fn first_kv(range: &Value) -> Option<&Value> {
    range
        .get("kvs")
        .and_then(Value::as_array)
        .and_then(|kvs| kvs.first())
}

/// Reads a lock key: its value is `<expires_at_ms>:<owner>`. A value in
/// another form (written by something else) reads as held forever by nobody
/// in particular, so it is never taken over by mistake.
fn parse(kv: &Value) -> Held {
    let value = bytes(kv, "value");
    let text = String::from_utf8_lossy(&value);
    let (expires_at_ms, owner) = text
        .split_once(':')
        .and_then(|(at, owner)| Some((at.parse().ok()?, owner.to_owned())))
        .unwrap_or((u64::MAX, String::new()));
    Held {
        owner,
        expires_at_ms,
        create_revision: int(kv, "create_revision"),
        mod_revision: int(kv, "mod_revision"),
        lease: int(kv, "lease"),
    }
}

impl LockStore for EtcdLocks {
    fn try_lock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Attempt, LockError>> {
        Box::pin(async move {
            let key = self.key(tenant, resource);
            let lease = self.grant(ttl_ms).await?;
            let attempt = self.try_lock_inner(&key, owner, ttl_ms, lease).await;
            if !matches!(attempt, Ok(Attempt::Acquired { .. })) {
                self.revoke(lease).await;
            }
            attempt
        })
    }

    fn unlock<'a>(
        &'a self,
        tenant: &'a str,
        resource: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<UnlockStatus, LockError>> {
        Box::pin(async move {
            let key = self.key(tenant, resource);
            for _ in 0..ATTEMPTS {
                let held = match held_by(self.read(&key).await?, owner, now_ms()) {
                    Ok(held) => held,
                    Err(status) => return Ok(status),
                };
                let delete = json!({ "request_delete_range": { "key": key } });
                if self.if_unchanged(&key, held.mod_revision, delete).await? {
                    self.revoke(held.lease).await;
                    self.releases.released(tenant, resource);
                    return Ok(UnlockStatus::Success);
                }
            }
            Err(LockError::Driver(DriverError::Unavailable(format!(
                "lock.etcd: the lock key kept changing during {ATTEMPTS} attempts; try again"
            ))))
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
            let key = self.key(tenant, resource);
            for _ in 0..ATTEMPTS {
                let held = match held_by(self.read(&key).await?, owner, now_ms()) {
                    Ok(held) => held,
                    Err(status) => return Ok(not_extended(status)),
                };
                // A new etcd lease of the new length replaces the old one:
                // keep-alive would only renew the old lease to its original
                // length, and an extend may also shorten the lease. A put on
                // an existing key keeps its create revision, the token.
                let lease = self.grant(ttl_ms).await?;
                let value = base64(format!("{}:{owner}", lease_end(ttl_ms, now_ms())).as_bytes());
                let put = json!({
                    "request_put": { "key": key, "value": value, "lease": lease.to_string() }
                });
                if self.if_unchanged(&key, held.mod_revision, put).await? {
                    self.revoke(held.lease).await;
                    let fencing_token = u64::try_from(held.create_revision).unwrap_or(0);
                    return Ok(ExtendLockReply {
                        status: UnlockStatus::Success,
                        fencing_token,
                    });
                }
                self.revoke(lease).await;
            }
            Err(LockError::Driver(DriverError::Unavailable(format!(
                "lock.etcd: the lock key kept changing during {ATTEMPTS} attempts; try again"
            ))))
        })
    }

    /// etcd removes keys whose lease ends.
    fn sweep(&self) -> BoxFuture<'_, Result<usize, LockError>> {
        Box::pin(async { Ok(0) })
    }

    fn releases(&self) -> &Releases {
        &self.releases
    }
}
