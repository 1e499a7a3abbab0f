//! Resolving Dapr `secretKeyRef` metadata: a component field whose value is
//! read from a secret store component of the same configuration when the
//! configuration is loaded (at start and at every reload), before the
//! component reaches its module.
//!
//! The daemon reads the secret with the secret-store drivers the secrets
//! module uses (the `mecha-secretstores` crate), in process, rather than asking the running secrets module: secret stores are
//! local sources (environment, files, a mounted directory), the module may not
//! be started yet, and a component must not start with a hole where its
//! password should be. A reload reads the secrets again, so a rotated secret
//! restarts the components that use it with the new value.

use std::collections::HashMap;
use std::path::Path;

use mecha_secretstores::{self as drivers, SecretStore};

use crate::config::{Config, SecretRef};

/// Fills every `secretKeyRef` field of `config`'s components. `data_dir` is
/// the secrets module's data directory, against which the stores resolve
/// relative paths, as the module does. Errors name the file, the component,
/// the field and the secret, never a value.
pub async fn resolve(config: &mut Config, data_dir: &Path) -> Result<(), String> {
    let refs = std::mem::take(&mut config.secret_refs);
    let mut stores: HashMap<String, Box<dyn SecretStore>> = HashMap::new();
    for r in &refs {
        let value = read(config, &mut stores, data_dir, r)
            .await
            .map_err(|why| describe(r, &why))?;
        let field = config
            .components
            .iter_mut()
            .find(|c| c.name == r.component)
            .and_then(|c| c.metadata.iter_mut().find(|(k, _)| *k == r.field));
        match field {
            Some((_, slot)) => *slot = value,
            None => return Err(describe(r, "the field vanished while loading (a bug)")),
        }
    }
    Ok(())
}

fn describe(r: &SecretRef, why: &str) -> String {
    let key = r
        .key
        .as_deref()
        .map(|k| format!(", key {k:?}"))
        .unwrap_or_default();
    format!(
        "{}: component {:?}, spec.metadata {:?}: secretKeyRef (secret {:?}{key}): {why}",
        r.file.display(),
        r.component,
        r.field,
        r.name
    )
}

/// Reads one reference's value, opening its store on first use.
async fn read(
    config: &Config,
    stores: &mut HashMap<String, Box<dyn SecretStore>>,
    data_dir: &Path,
    r: &SecretRef,
) -> Result<String, String> {
    let is_store = |kind: &str| kind.starts_with("secretstores.");
    if config
        .components
        .iter()
        .any(|c| c.name == r.component && is_store(&c.kind))
    {
        return Err("a secret store cannot take its own settings from a secret store".into());
    }
    let store_name = match &r.store {
        Some(name) => name.clone(),
        None => config
            .components
            .iter()
            .find(|c| is_store(&c.kind))
            .map(|c| c.name.clone())
            .ok_or("no secret store component is configured (add one, and name it in auth.secretStore)")?,
    };
    if !stores.contains_key(&store_name) {
        let spec = config
            .components
            .iter()
            .find(|c| c.name == store_name && is_store(&c.kind))
            .ok_or_else(|| {
                format!("auth.secretStore {store_name:?} is not a secret store component of this configuration")
            })?;
        let store = drivers::open(spec, data_dir)
            .map_err(|e| format!("secret store {store_name:?} cannot be opened: {e}"))?;
        stores.insert(store_name.clone(), store);
    }
    let store = stores
        .get(&store_name)
        .ok_or("the secret store was not kept (a bug)")?;
    let secret = store
        .get(&r.name)
        .await
        .map_err(|e| format!("secret store {store_name:?}: {e}"))?
        .ok_or_else(|| format!("secret store {store_name:?} has no such secret"))?;
    let pairs = secret.into_pairs();
    match &r.key {
        Some(key) => pairs
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("the secret in store {store_name:?} has no key {key:?}")),
        None => {
            let mut pairs = pairs;
            match (pairs.pop(), pairs.is_empty()) {
                (Some((_, v)), true) => Ok(v),
                (Some((k, _)), false) => {
                    let mut keys: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
                    keys.push(k);
                    Err(format!(
                        "the secret holds several keys ({}); name one with secretKeyRef.key",
                        keys.join(", ")
                    ))
                }
                (None, _) => Err("the secret is empty".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).expect("write config");
        Config::load(&path).expect("config loads")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    const FILE_STORE: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: vault\nspec:\n  type: secretstores.local.file\n  metadata:\n  - name: secretsFile\n    value: secrets.json\n  - name: multiValued\n    value: \"true\"\n---\n";

    fn uses(field_yaml: &str, auth: &str) -> String {
        format!(
            "{FILE_STORE}apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.memory\n  metadata:\n  - name: redisPassword\n{field_yaml}{auth}"
        )
    }

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("secrets.json"),
            r#"{"redis": {"password": "s3cret", "user": "app"}, "token": "t0k"}"#,
        )
        .expect("write secrets");
        dir
    }

    fn resolved(text: &str) -> Result<Config, String> {
        let dir = data_dir();
        let mut c = config(text);
        rt().block_on(resolve(&mut c, dir.path()))?;
        Ok(c)
    }

    fn field(c: &Config) -> &str {
        &c.components[1].metadata[0].1
    }

    #[test]
    fn a_key_of_a_secret_fills_the_field() {
        let c = resolved(&uses(
            "    secretKeyRef:\n      name: redis\n      key: password\n",
            "auth:\n  secretStore: vault\n",
        ))
        .expect("resolves");
        assert_eq!(field(&c), "s3cret");
        assert!(c.secret_refs.is_empty());
    }

    #[test]
    fn without_auth_the_first_secret_store_is_used_and_a_single_value_needs_no_key() {
        let c = resolved(&uses("    secretKeyRef:\n      name: token\n", "")).expect("resolves");
        assert_eq!(field(&c), "t0k");
    }

    #[test]
    fn errors_name_the_file_component_field_and_secret_but_no_value() {
        let cases = [
            (
                uses("    secretKeyRef:\n      name: nope\n", ""),
                "has no such secret",
            ),
            (
                uses("    secretKeyRef:\n      name: redis\n      key: pin\n", ""),
                "has no key \"pin\"",
            ),
            (
                uses("    secretKeyRef:\n      name: redis\n", ""),
                "several keys (password, user)",
            ),
            (
                uses(
                    "    secretKeyRef:\n      name: token\n",
                    "auth:\n  secretStore: other\n",
                ),
                "\"other\" is not a secret store",
            ),
        ];
        for (text, want) in cases {
            let e = resolved(&text).expect_err("must fail");
            assert!(e.contains(want), "{e}");
            assert!(
                e.contains("c.yaml: component \"cache\", spec.metadata \"redisPassword\""),
                "{e}"
            );
            assert!(
                !e.contains("s3cret") && !e.contains("t0k"),
                "no value leaks: {e}"
            );
        }
    }

    #[test]
    fn a_value_and_a_reference_together_are_rejected_at_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            uses("    value: x\n    secretKeyRef:\n      name: token\n", ""),
        )
        .expect("write");
        let e = Config::load(&path).expect_err("rejected").to_string();
        assert!(e.contains("either value or secretKeyRef"), "{e}");
    }
}
