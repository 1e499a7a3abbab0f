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

pub mod policy;

use std::path::Path;

use mecha_abi::msg::{SecretBulkGetRequest, SecretBulkReply, SecretGetRequest, SecretReply};
use mecha_module::{Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use drivers::{Metadata, SecretStore, StoreError};
/// The secret store drivers, re-exported from their own crate so mechad can
/// use them without linking this module.
pub use mecha_secretstores as drivers;
use policy::{Policy, Rule};

/// The secrets module: one or more named stores, the first being the default.
pub struct SecretsModule {
    stores: Components<Store>,
}

/// One configured secret store component.
struct Store {
    /// Who may read what.
    policy: Policy,
    /// Where the secrets come from.
    driver: Box<dyn SecretStore>,
}

impl Module for SecretsModule {
    const NAME: &'static str = "secrets";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let stores = Components::open(&hello.components, "secret store", |spec| {
            Ok::<_, StoreError>(Store {
                policy: Policy::from_metadata(&Metadata::lenient(spec)?)?,
                driver: drivers::open(spec, data_dir)?,
            })
        })?;
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
    /// The store named `name` ("" = the first) with its name, if `tenant`
    /// may use it.
    fn store(&self, name: &str, tenant: &str) -> Result<(&str, &Store), Reply> {
        let (name, store) = self.stores.entry(name, tenant)?;
        store.policy.check_tenant(tenant).map_err(|rule| {
            denied(format!(
                "tenant {tenant:?} may not use secret store {name:?}: {rule}"
            ))
        })?;
        Ok((name, store))
    }

    async fn get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: SecretGetRequest = Reply::decode(payload)?;
        Reply::valid_name("secret name", &req.name)?;
        let (store_name, store) = self.store(&req.store, tenant)?;
        // The rules are checked before the store is asked, so a refused
        // tenant learns nothing about which secrets exist.
        store
            .policy
            .check_secret(&req.name)
            .map_err(|rule| secret_denied(store_name, &req.name, rule))?;
        match store.driver.get(&req.name).await.map_err(store_error)? {
            Some(secret) => fit(Reply::ok(&SecretReply {
                data: secret.into_pairs(),
            })),
            None => Err(Reply::error(
                Status::NotFound,
                format!("secret {:?} not found in store {store_name:?}", req.name),
            )),
        }
    }

    async fn bulk_get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: SecretBulkGetRequest = Reply::decode(payload)?;
        let (_, store) = self.store(&req.store, tenant)?;
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

fn secret_denied(store: &str, name: &str, rule: Rule) -> Reply {
    denied(format!(
        "secret {name:?} of store {store:?} may not be read: {rule}"
    ))
}

/// The answer for a failed store: the shared failures as the SDK maps them,
/// in the secret stores' words.
fn store_error(e: StoreError) -> Reply {
    let StoreError::Driver(driver) = &e;
    Reply::error(driver.status(), e.to_string())
}
