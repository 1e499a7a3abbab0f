//! Who may read which secrets of a store: the allow lists every secret store
//! component accepts in its metadata, whatever its driver.
//!
//! Fields (matched ignoring case; lists are comma-separated, items trimmed):
//! - `allowedTenants`: the tenants that may use the store at all; `*` admits
//!   every tenant. Absent: no tenant — a store holds the operator's secrets,
//!   so it serves nobody until its component says whom. A tenant not listed
//!   is refused every operation on the store, so it cannot even learn which
//!   secrets exist.
//! - `defaultAccess` (`allow` or `deny`, default `allow`),
//!   `allowedSecrets`, `deniedSecrets`: which secrets the admitted tenants
//!   may read, with the names and the precedence of Dapr's secret scopes:
//!   a non-empty `allowedSecrets` admits exactly the secrets it lists;
//!   otherwise a secret in `deniedSecrets` is refused; otherwise
//!   `defaultAccess` decides.
//!
//! Names are compared exactly (case-sensitive). A list given but empty is a
//! configuration error rather than "no restriction" or "nothing", because
//! either reading could be the opposite of what was meant; a secret listed in
//! both `allowedSecrets` and `deniedSecrets` is an error for the same reason.

use std::collections::BTreeSet;
use std::fmt;

use mecha_secretstores::{Metadata, StoreError};

/// The allow-list fields, accepted by every driver.
pub use mecha_secretstores::POLICY_FIELDS as FIELDS;

/// The access rules of one store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The admitted tenants (`*` admits every tenant); `None` admits none.
    tenants: Option<BTreeSet<String>>,
    /// Whether a secret no list mentions may be read.
    default_deny: bool,
    /// When not empty, the only secrets that may be read.
    allowed: BTreeSet<String>,
    /// Secrets that may not be read (ignored when `allowed` is not empty).
    denied: BTreeSet<String>,
}

/// The rule that refused an access, named in the PERMISSION_DENIED message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The component lists no `allowedTenants`: the store serves nobody.
    NoAllowedTenants,
    /// The tenant is not in `allowedTenants`.
    AllowedTenants,
    /// `allowedSecrets` is set and does not list the secret.
    AllowedSecrets,
    /// `deniedSecrets` lists the secret.
    DeniedSecrets,
    /// No list mentions the secret and `defaultAccess` is `deny`.
    DefaultAccess,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::NoAllowedTenants => {
                "the component lists no allowedTenants, so the store serves no tenant (list them, or \"*\" for every tenant)"
            }
            Rule::AllowedTenants => "it is not listed in allowedTenants",
            Rule::AllowedSecrets => "it is not listed in allowedSecrets",
            Rule::DeniedSecrets => "it is listed in deniedSecrets",
            Rule::DefaultAccess => "no list names it and defaultAccess is deny",
        })
    }
}

impl Policy {
    /// Reads the allow-list fields of a component's metadata; other fields
    /// are the driver's to check.
    pub fn from_metadata(metadata: &Metadata<'_>) -> Result<Self, StoreError> {
        let list = |field: &str| -> Result<Option<BTreeSet<String>>, StoreError> {
            let items = metadata.list(field)?;
            Ok(items.map(|items| items.into_iter().map(str::to_owned).collect()))
        };
        let default_deny = match metadata.get("defaultAccess") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("allow") => false,
            Some(v) if v.eq_ignore_ascii_case("deny") => true,
            Some(v) => {
                return Err(metadata
                    .error(format!(
                        "metadata field \"defaultAccess\" must be allow or deny, not {v:?}"
                    ))
                    .into())
            }
        };
        let allowed = list("allowedSecrets")?.unwrap_or_default();
        let denied = list("deniedSecrets")?.unwrap_or_default();
        if let Some(both) = allowed.intersection(&denied).next() {
            return Err(metadata
                .error(format!(
                    "secret {both:?} is listed in both allowedSecrets and deniedSecrets"
                ))
                .into());
        }
        Ok(Self {
            tenants: list("allowedTenants")?,
            default_deny,
            allowed,
            denied,
        })
    }

    /// Whether `tenant` may use the store.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), Rule> {
        match &self.tenants {
            None => Err(Rule::NoAllowedTenants),
            Some(tenants) if tenants.contains(tenant) || tenants.contains("*") => Ok(()),
            Some(_) => Err(Rule::AllowedTenants),
        }
    }

    /// Whether an admitted tenant may read the secret `name`.
    pub fn check_secret(&self, name: &str) -> Result<(), Rule> {
        if !self.allowed.is_empty() {
            return if self.allowed.contains(name) {
                Ok(())
            } else {
                Err(Rule::AllowedSecrets)
            };
        }
        if self.denied.contains(name) {
            return Err(Rule::DeniedSecrets);
        }
        if self.default_deny {
            return Err(Rule::DefaultAccess);
        }
        Ok(())
    }
}
