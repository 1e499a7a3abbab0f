//! The secrets module: named secrets read from the configured stores
//! (`secretstores.local.file`, `secretstores.local.env`,
//! `secretstores.local.dir`), each behind the allow lists of its component.
//!
//! Unlike state, secrets are not scoped by tenant: a store holds the
//! operator's secrets, and the tenant the daemon stamps on a request decides
//! only whether the store's allow lists ([`policy`]) let it read them.
//!
//! Secret values never reach a log or an error message: this module logs no
//! request, every error names the secret, store, file or rule involved but
//! never a value, and the types that hold values print them redacted.

pub mod drivers;
pub mod policy;

use std::path::Path;

use mecha_abi::msg::{SecretBulkGetRequest, SecretBulkReply, SecretGetRequest, SecretReply};
use mecha_module::{Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use drivers::{Metadata, SecretStore, StoreError};
use policy::{Policy, Rule};

/// The secrets module: one or more named stores, the first being the default.
pub struct SecretsModule {
    stores: Vec<Store>,
}

/// One configured secret store component.
struct Store {
    /// The component name applications pass as `store`.
    name: String,
    /// Who may read what.
    policy: Policy,
    /// Where the secrets come from.
    driver: Box<dyn SecretStore>,
}

impl Module for SecretsModule {
    const NAME: &'static str = "secrets";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        if hello.components.is_empty() {
            return Err(InitError("no secret store component configured".into()));
        }
        let data_dir = Path::new(&hello.data_dir);
        let mut stores = Vec::with_capacity(hello.components.len());
        for spec in &hello.components {
            let opened = Metadata::new(spec)
                .and_then(|metadata| Policy::from_metadata(&metadata))
                .and_then(|policy| Ok((policy, drivers::open(spec, data_dir)?)));
            let (policy, driver) = opened
                .map_err(|e| InitError(format!("cannot open secret store {:?}: {e}", spec.name)))?;
            stores.push(Store {
                name: spec.name.clone(),
                policy,
                driver,
            });
        }
        Ok(Self { stores })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::SECRET_GET => self.get(&ctx.tenant, payload).await,
            Opcode::SECRET_BULK_GET => self.bulk_get(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the secrets module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl SecretsModule {
    /// The store named `name` ("" = the first), if `tenant` may use it.
    fn store(&self, name: &str, tenant: &str) -> Result<&Store, Reply> {
        let found = if name.is_empty() {
            self.stores.first()
        } else {
            self.stores.iter().find(|s| s.name == name)
        };
        let store = found.ok_or_else(|| {
            Reply::error(
                Status::InvalidArgument,
                format!("no secret store named {name:?} is configured"),
            )
        })?;
        store.policy.check_tenant(tenant).map_err(|rule| {
            denied(format!(
                "tenant {tenant:?} may not use secret store {:?}: {rule}",
                store.name
            ))
        })?;
        Ok(store)
    }

    async fn get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: SecretGetRequest = Reply::decode(payload)?;
        if req.name.is_empty() {
            return Err(Reply::error(
                Status::InvalidArgument,
                "secret name must not be empty",
            ));
        }
        let store = self.store(&req.store, tenant)?;
        // The rules are checked before the store is asked, so a refused
        // tenant learns nothing about which secrets exist.
        store
            .policy
            .check_secret(&req.name)
            .map_err(|rule| secret_denied(store, &req.name, rule))?;
        match store.driver.get(&req.name).await.map_err(store_error)? {
            Some(secret) => fit(Reply::ok(&SecretReply {
                data: secret.into_pairs(),
            })),
            None => Err(Reply::error(
                Status::NotFound,
                format!("secret {:?} not found in store {:?}", req.name, store.name),
            )),
        }
    }

    async fn bulk_get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: SecretBulkGetRequest = Reply::decode(payload)?;
        let store = self.store(&req.store, tenant)?;
        let secrets = store
            .driver
            .bulk_get()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|(name, _)| store.policy.check_secret(name).is_ok())
            .map(|(name, secret)| (name, secret.into_pairs()))
            .collect();
        fit(Reply::ok(&SecretBulkReply { secrets }))
    }
}

/// Passes on a reply that fits in a frame, and refuses one that does not.
///
/// Sources are bounded (a secrets file to 4 MiB, a secret file to 1 MiB), but
/// flattening repeats every nested path in each name, so a pathological file
/// can make a bulk answer far larger than itself. An answer over the largest
/// frame any peer accepts would break the link instead of failing one request.
fn fit(reply: Reply) -> Handled {
    let limit = mecha_abi::MAX_FRAME_CAP as usize;
    if reply.payload.len() > limit {
        return Err(Reply::error(
            Status::ResourceExhausted,
            format!(
                "the answer would take {} bytes, more than the largest frame ({limit}); \
                 read the secrets one by one",
                reply.payload.len()
            ),
        ));
    }
    Ok(reply)
}

fn denied(message: String) -> Reply {
    Reply::error(Status::PermissionDenied, message)
}

fn secret_denied(store: &Store, name: &str, rule: Rule) -> Reply {
    denied(format!(
        "secret {name:?} of store {:?} may not be read: {rule}",
        store.name
    ))
}

fn store_error(e: StoreError) -> Reply {
    let status = match e {
        StoreError::Unavailable(_) => Status::Unavailable,
        StoreError::Config { .. } | StoreError::Internal(_) => Status::Internal,
    };
    Reply::error(status, e.to_string())
}
