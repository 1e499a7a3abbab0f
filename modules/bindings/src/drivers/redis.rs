//! `bindings.redis` (output): Redis strings through the SDK's shared Redis
//! connection (Dapr's `redisHost`, `redisPassword`, … fields). Operations
//! `create` (set request metadata `key` to the data, with `ttlInSeconds`
//! when given), `get` (the value; empty when the key does not exist, as in
//! Dapr) and `delete`.
//!
//! `get` reads at most `maxResponseBytes` + 1 bytes of the value
//! (`GETRANGE`), so a huge value is refused without being transferred.

use mecha_abi::msg::InvokeBindingReply;
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::{client as redis, Redis};
use mecha_module::BoxFuture;

use super::{Call, Output};
use crate::error::BindingError;

/// The fields of `bindings.redis`: the SDK's Redis fields.
pub const FIELDS: [&str; 14] = mecha_module::remote::redis::FIELDS;

const OPERATIONS: [&str; 3] = ["create", "get", "delete"];

/// A Redis binding.
pub struct RedisBinding {
    redis: Redis,
}

impl RedisBinding {
    /// Prepares the connection without connecting.
    pub fn open(kind: &str, metadata: &Metadata<'_>) -> Result<Self, BindingError> {
        Ok(Self {
            redis: Redis::from_metadata(kind, metadata)?,
        })
    }
}

impl Output for RedisBinding {
    fn invoke<'a>(
        &'a self,
        call: Call<'a>,
    ) -> BoxFuture<'a, Result<InvokeBindingReply, BindingError>> {
        Box::pin(async move {
            let empty = || InvokeBindingReply {
                data: Vec::new(),
                metadata: Vec::new(),
            };
            match call.operation {
                "create" => {
                    let key = call.required("key")?.to_owned();
                    let ttl = match call.get("ttlInSeconds").filter(|t| !t.is_empty()) {
                        Some(text) => {
                            Some(text.parse::<u64>().ok().filter(|t| *t > 0).ok_or_else(|| {
                                BindingError::Invalid(format!(
                                    "ttlInSeconds must be a whole number of seconds above 0, \
                                     not {text:?}"
                                ))
                            })?)
                        }
                        None => None,
                    };
                    let data = call.data.to_vec();
                    self.redis
                        .run(|mut c| async move {
                            let mut cmd = redis::cmd("SET");
                            cmd.arg(&key).arg(data);
                            if let Some(ttl) = ttl {
                                cmd.arg("EX").arg(ttl);
                            }
                            cmd.query_async::<()>(&mut c).await
                        })
                        .await?;
                    Ok(empty())
                }
                "get" => {
                    let key = call.required("key")?.to_owned();
                    let end = call.limit;
                    let data: Vec<u8> = self
                        .redis
                        .run(|mut c| async move {
                            redis::cmd("GETRANGE")
                                .arg(&key)
                                .arg(0)
                                .arg(end)
                                .query_async(&mut c)
                                .await
                        })
                        .await?;
                    if data.len() > call.limit {
                        return Err(call.too_large("a Redis value"));
                    }
                    Ok(InvokeBindingReply {
                        data,
                        metadata: Vec::new(),
                    })
                }
                "delete" => {
                    let key = call.required("key")?.to_owned();
                    self.redis
                        .run(|mut c| async move {
                            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
                        })
                        .await?;
                    Ok(empty())
                }
                _ => Err(call.unknown("bindings.redis", &OPERATIONS)),
            }
        })
    }
}
