//! The `secretstores.local.env` driver: secrets from the module process's
//! environment variables, Dapr's local environment secret store.
//!
//! Metadata (Dapr's name, matched ignoring case):
//! - `prefix` (**required** here, optional in Dapr): only variables whose
//!   names start with it are secrets, and it is stripped from their names:
//!   with `prefix: APP_`, the variable `APP_DB_PASSWORD` is the secret
//!   `DB_PASSWORD`. Matching is case-sensitive, as variable names are on
//!   Linux.
//!
//! Why the prefix is required: the variables come from the environment of
//! `mechad`, a daemon shared by every application on the node, which holds
//! the operator's own settings and credentials. mechad hands the secrets
//! module only the variables under its env stores' prefixes; without a
//! prefix there would be no line between what is meant to be served and the
//! rest, so mecha makes the operator draw it.
//!
//! Each secret is a single pair keyed by its name (without the prefix).
//! Variables are read at every request; a variable whose name or value is not
//! UTF-8 cannot be carried by the ABI, so `get` reports it as an internal
//! error and `bulk_get` leaves it out.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::{check_fields, BoxFuture, DriverError, Metadata, Secret, SecretStore, StoreError};

/// The metadata fields this driver reads.
pub const FIELDS: [&str; 1] = ["prefix"];

/// A secret store over the process environment.
#[derive(Debug)]
pub struct EnvStore {
    /// Names of served variables start with this; it is not part of the
    /// secret's name.
    prefix: String,
}

impl EnvStore {
    /// Reads the metadata.
    pub fn open(metadata: &Metadata<'_>) -> Result<Self, StoreError> {
        check_fields(metadata, &FIELDS)?;
        let prefix = metadata.get("prefix").unwrap_or_default();
        if prefix.is_empty() {
            return Err(metadata.error(
                "metadata field \"prefix\" is required and must not be empty: without it every \
                 variable of the daemon's environment would be a secret"
            )
            .into());
        }
        if prefix.contains(['=', '\0']) {
            return Err(metadata.error(
                "metadata field \"prefix\" must not contain '=' or NUL, which no variable name holds"
            )
            .into());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }
}

impl SecretStore for EnvStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, StoreError>> {
        Box::pin(async move {
            // A name holding '=' or NUL cannot be part of a variable name;
            // asking the environment for one is refused, so answer here.
            if name.contains(['=', '\0']) {
                return Ok(None);
            }
            let variable = format!("{}{name}", self.prefix);
            match std::env::var_os(&variable) {
                None => Ok(None),
                Some(value) => match value.into_string() {
                    Ok(value) => Ok(Some(Secret::single(name, value))),
                    Err(_) => Err(StoreError::Driver(DriverError::Internal(format!(
                        "environment variable {variable:?} is not valid UTF-8"
                    )))),
                },
            }
        })
    }

    fn bulk_get(&self) -> BoxFuture<'_, Result<Vec<(String, Secret)>, StoreError>> {
        Box::pin(async move {
            let prefix = self.prefix.as_bytes();
            let mut secrets: Vec<(String, Secret)> = std::env::vars_os()
                .filter(|(variable, _)| variable.as_bytes().starts_with(prefix))
                .filter_map(|(variable, value)| self.secret(variable, value))
                .collect();
            secrets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(secrets)
        })
    }
}

impl EnvStore {
    /// The secret a prefixed variable holds, if it can be served.
    fn secret(&self, variable: OsString, value: OsString) -> Option<(String, Secret)> {
        let Ok(variable) = variable.into_string() else {
            tracing::warn!(
                prefix = %self.prefix,
                "skipping an environment variable whose name is not UTF-8"
            );
            return None;
        };
        let name = variable.strip_prefix(&self.prefix)?;
        // The variable named exactly like the prefix would be the secret "",
        // which no request can name.
        if name.is_empty() {
            return None;
        }
        let Ok(value) = value.into_string() else {
            tracing::warn!(%variable, "skipping an environment variable whose value is not UTF-8");
            return None;
        };
        Some((name.to_owned(), Secret::single(name, value)))
    }
}
