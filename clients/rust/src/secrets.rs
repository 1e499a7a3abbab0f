//! Secrets calls of the Rust client (async and blocking).
//!
//! A secret is a list of (key, value) pairs sorted by key; a single-value
//! secret is one pair whose key is the secret's name. Both calls are reads,
//! so the typed retry loop retries them when the module is restarting.

use mecha_abi::msg::{SecretBulkGetRequest, SecretBulkReply, SecretGetRequest, SecretReply};
use mecha_abi::Opcode;

use crate::request::Request;
use crate::Error;

impl Request for SecretGetRequest {
    const OPCODE: Opcode = Opcode::SECRET_GET;
    type Reply = SecretReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl Request for SecretBulkGetRequest {
    const OPCODE: Opcode = Opcode::SECRET_BULK_GET;
    type Reply = SecretBulkReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

impl crate::Client {
    /// Reads secret `name` from `store` ("" = the first secret store): its
    /// (key, value) pairs, sorted by key. A missing secret is an error whose
    /// [`Error::is_not_found`] is true; a store whose allow lists refuse the
    /// caller answers PERMISSION_DENIED.
    pub async fn get_secret(
        &self,
        store: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let req = SecretGetRequest {
            store: store.into(),
            name: name.into(),
        };
        Ok(self.call(&req).await?.data)
    }

    /// Reads every secret of `store` ("" = the first secret store) that the
    /// caller may see: (name, pairs), sorted by name.
    pub async fn bulk_get_secrets(
        &self,
        store: &str,
    ) -> Result<Vec<(String, Vec<(String, String)>)>, Error> {
        let req = SecretBulkGetRequest {
            store: store.into(),
        };
        Ok(self.call(&req).await?.secrets)
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Reads secret `name` from `store` ("" = the first secret store):
        /// its (key, value) pairs, sorted by key; NOT_FOUND when missing.
        fn get_secret(store: &str, name: &str) -> Vec<(String, String)>;
        /// Reads every secret of `store` the caller may see: (name, pairs),
        /// sorted by name.
        fn bulk_get_secrets(store: &str) -> Vec<(String, Vec<(String, String)>)>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_reads_are_idempotent_and_use_the_secrets_opcodes() {
        let get = SecretGetRequest {
            store: String::new(),
            name: "db".into(),
        };
        assert!(get.is_idempotent());
        assert!(SecretBulkGetRequest {
            store: String::new()
        }
        .is_idempotent());
        assert_eq!(SecretGetRequest::OPCODE, Opcode::SECRET_GET);
        assert_eq!(SecretBulkGetRequest::OPCODE, Opcode::SECRET_BULK_GET);
    }
}
