//! Conformance tests: one set of behaviour tests, run through the module's
//! request handler against every secret store driver, in the manner of
//! Dapr's components-contrib conformance suite; then each driver's own rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mecha_abi::msg::{
    ComponentSpec, ErrorBody, SecretBulkGetRequest, SecretBulkReply, SecretGetRequest, SecretReply,
};
use mecha_mod_secrets::drivers::{self, DriverError, Secret, StoreError};
use mecha_mod_secrets::SecretsModule;
use mecha_module::testing::{self, temp_dir, Served};
use mecha_module::{Opcode, Status};
use tempfile::TempDir;

/// The tenant most tests read as.
const TENANT: &str = "uid:1000";

/// The secrets every driver is filled with for the shared tests. The values
/// are distinctive so that a test can search any text for them.
const FIXTURE: &[(&str, &str)] = &[
    ("api-key", "val-api-7f3a9c"),
    ("db-password", "val-hunter2-51e0"),
    ("empty", ""),
    ("token", "val-token-e4d2b8"),
];

/// A driver under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `secretstores.local.file` with a JSON file.
    Json,
    /// `secretstores.local.file` with a YAML file.
    Yaml,
    /// `secretstores.local.env`.
    Env,
    /// `secretstores.local.dir`.
    Dir,
}

impl Kind {
    fn driver_type(self) -> &'static str {
        match self {
            Kind::Json | Kind::Yaml => "secretstores.local.file",
            Kind::Env => "secretstores.local.env",
            Kind::Dir => "secretstores.local.dir",
        }
    }
}

/// Makes environment variable prefixes unique among the tests of this
/// process, which share one environment.
static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

/// Where one store's secrets live, so a test can change them.
struct Source {
    kind: Kind,
    /// The file (Json, Yaml), the directory (Dir), or unused (Env).
    path: PathBuf,
    /// The variable prefix (Env).
    prefix: String,
    /// The secrets as last written (Json, Yaml).
    secrets: BTreeMap<String, String>,
}

impl Source {
    /// Creates the source of a store named `name` under `dir`, holding
    /// `secrets`, and returns it with the driver metadata that points at it.
    fn create(
        kind: Kind,
        dir: &Path,
        name: &str,
        secrets: &[(&str, &str)],
    ) -> (Self, Vec<(String, String)>) {
        let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
        let (path, field) = match kind {
            Kind::Json => (dir.join(format!("{name}.json")), "secretsFile"),
            Kind::Yaml => (dir.join(format!("{name}.yaml")), "secretsFile"),
            Kind::Dir => (dir.join(format!("{name}.d")), "secretsDir"),
            Kind::Env => (PathBuf::new(), "prefix"),
        };
        let mut source = Self {
            kind,
            path,
            prefix: format!("MECHA_SECRETS_TEST_{n}_"),
            secrets: BTreeMap::new(),
        };
        if kind == Kind::Dir {
            std::fs::create_dir(&source.path).expect("create the secret directory");
        }
        for (name, value) in secrets {
            source
                .secrets
                .insert((*name).to_owned(), (*value).to_owned());
        }
        for (name, value) in secrets {
            source.put(name, value);
        }
        let value = match kind {
            Kind::Env => source.prefix.clone(),
            _ => source
                .path
                .to_str()
                .expect("temporary paths are UTF-8")
                .to_owned(),
        };
        (source, vec![(field.to_owned(), value)])
    }

    /// Adds or changes one secret.
    fn put(&mut self, name: &str, value: &str) {
        self.secrets.insert(name.to_owned(), value.to_owned());
        match self.kind {
            Kind::Json | Kind::Yaml => self.rewrite(),
            Kind::Env => std::env::set_var(format!("{}{name}", self.prefix), value),
            Kind::Dir => std::fs::write(self.path.join(name), value).expect("write a secret file"),
        }
    }

    /// Removes one secret.
    fn remove(&mut self, name: &str) {
        self.secrets.remove(name);
        match self.kind {
            Kind::Json | Kind::Yaml => self.rewrite(),
            Kind::Env => std::env::remove_var(format!("{}{name}", self.prefix)),
            Kind::Dir => std::fs::remove_file(self.path.join(name)).expect("remove a secret file"),
        }
    }

    /// Rewrites the secrets file in place (same inode), the hardest kind of
    /// change for a cache to notice.
    fn rewrite(&self) {
        let text = match self.kind {
            Kind::Json => serde_json::to_string(&self.secrets).expect("encode JSON"),
            _ => serde_norway::to_string(&self.secrets).expect("encode YAML"),
        };
        std::fs::write(&self.path, text).expect("write the secrets file");
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.kind == Kind::Env {
            for name in self.secrets.keys() {
                std::env::remove_var(format!("{}{name}", self.prefix));
            }
        }
    }
}

/// One store of a harness: its name, secrets and extra (allow-list) metadata.
struct StoreDef<'a> {
    name: &'a str,
    secrets: &'a [(&'a str, &'a str)],
    metadata: &'a [(&'a str, &'a str)],
}

/// The module under test, opened from a handshake like the daemon's, with the
/// sources of its stores.
struct Harness {
    served: Served<SecretsModule>,
    sources: Vec<Source>,
    _dir: TempDir,
}

/// An error answer: its status and message.
type Failure = (Status, String);

/// A secret as the wire carries it: (key, value) pairs.
type Pairs = Vec<(String, String)>;

/// A bulk answer: (name, pairs) per secret.
type Bulk = Vec<(String, Pairs)>;

impl Harness {
    /// Opens the module with `stores`, each filled by `kind`'s driver.
    fn try_new(kind: Kind, stores: &[StoreDef<'_>]) -> Result<Self, String> {
        let dir = temp_dir();
        let mut sources = Vec::new();
        let mut components = Vec::new();
        for store in stores {
            let (source, mut metadata) =
                Source::create(kind, dir.path(), store.name, store.secrets);
            metadata.extend(
                store
                    .metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            admit_everyone_unless_listed(&mut metadata);
            sources.push(source);
            components.push(ComponentSpec {
                name: store.name.to_owned(),
                kind: kind.driver_type().to_owned(),
                metadata,
            });
        }
        let served = Served::start(dir.path(), components).map_err(|e| e.0)?;
        Ok(Self {
            served,
            sources,
            _dir: dir,
        })
    }

    fn new(kind: Kind, stores: &[StoreDef<'_>]) -> Self {
        Self::try_new(kind, stores).unwrap_or_else(|e| panic!("the module starts: {e}"))
    }

    /// One store named `vault` holding [`FIXTURE`], with `metadata` added.
    fn vault(kind: Kind, metadata: &[(&str, &str)]) -> Self {
        Self::new(
            kind,
            &[StoreDef {
                name: "vault",
                secrets: FIXTURE,
                metadata,
            }],
        )
    }

    /// Sends one request as `tenant`; the raw answer.
    fn call(&self, tenant: &str, opcode: Opcode, payload: &[u8]) -> (Status, Vec<u8>) {
        let reply = self.served.handle(tenant, opcode, payload);
        (reply.status, reply.payload)
    }

    fn get_as(&self, tenant: &str, store: &str, name: &str) -> Result<Pairs, Failure> {
        let request = SecretGetRequest {
            store: store.to_owned(),
            name: name.to_owned(),
        };
        let payload = mecha_abi::encode(&request).expect("encode the request");
        let (status, body) = self.call(tenant, Opcode::SECRET_GET, &payload);
        answer(status, &body, mecha_abi::decode::<SecretReply>).map(|reply| reply.data)
    }

    fn get(&self, name: &str) -> Result<Pairs, Failure> {
        self.get_as(TENANT, "vault", name)
    }

    fn bulk_as(&self, tenant: &str, store: &str) -> Result<Bulk, Failure> {
        let request = SecretBulkGetRequest {
            store: store.to_owned(),
        };
        let payload = mecha_abi::encode(&request).expect("encode the request");
        let (status, body) = self.call(tenant, Opcode::SECRET_BULK_GET, &payload);
        answer(status, &body, mecha_abi::decode::<SecretBulkReply>).map(|reply| reply.secrets)
    }

    fn bulk(&self) -> Result<Bulk, Failure> {
        self.bulk_as(TENANT, "vault")
    }

    /// The names a bulk read as `tenant` returns.
    fn bulk_names_as(&self, tenant: &str) -> Vec<String> {
        self.bulk_as(tenant, "vault")
            .expect("bulk get succeeds")
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    fn source(&mut self) -> &mut Source {
        &mut self.sources[0]
    }
}

/// Decodes an answer into the reply (with `decode`) or the failure.
fn answer<T, E: std::fmt::Debug>(
    status: Status,
    body: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, Failure> {
    if status == Status::Ok {
        return Ok(decode(body).expect("an OK answer decodes"));
    }
    let message = mecha_abi::decode::<ErrorBody>(body)
        .expect("an error answer carries an ErrorBody")
        .message;
    Err((status, message))
}

/// A single-value secret as the wire carries it.
fn single(name: &str, value: &str) -> Pairs {
    vec![(name.to_owned(), value.to_owned())]
}

fn pairs(items: &[(&str, &str)]) -> Pairs {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts that `text` contains none of the fixture's values.
fn assert_no_value(text: &str) {
    for (name, value) in FIXTURE {
        assert!(
            value.is_empty() || !text.contains(value),
            "the value of {name:?} appears in {text:?}"
        );
    }
}

/// Asserts a failure's status and that its message mentions `needle`.
fn assert_failure(result: Result<impl std::fmt::Debug, Failure>, status: Status, needle: &str) {
    match result {
        Err((got, message)) => {
            assert_eq!(got, status, "{message}");
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
            assert_no_value(&message);
        }
        Ok(reply) => panic!("expected {status:?}, got {reply:?}"),
    }
}

// ---- The behaviours every driver must show. ----

fn get_returns_one_pair_keyed_by_the_name(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    for (name, value) in FIXTURE {
        assert_eq!(h.get(name), Ok(single(name, value)), "secret {name:?}");
    }
}

fn missing_secret_is_not_found_naming_it(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    assert_failure(h.get("no-such-secret"), Status::NotFound, "no-such-secret");
    // Names that cannot exist in some stores are simply missing, never an
    // error and never an escape from the store.
    for name in ["../vault.json", "a/b", "..data", ".hidden", "x=y"] {
        assert_failure(h.get(name), Status::NotFound, name);
    }
}

fn empty_name_is_invalid_argument(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    assert_failure(h.get(""), Status::InvalidArgument, "empty");
}

fn empty_store_is_the_first_and_unknown_store_is_invalid(kind: Kind) {
    let h = Harness::new(
        kind,
        &[
            StoreDef {
                name: "first",
                secrets: &[("k", "from-first")],
                metadata: &[],
            },
            StoreDef {
                name: "second",
                secrets: &[("k", "from-second")],
                metadata: &[],
            },
        ],
    );
    assert_eq!(h.get_as(TENANT, "", "k"), Ok(single("k", "from-first")));
    assert_eq!(
        h.get_as(TENANT, "first", "k"),
        Ok(single("k", "from-first"))
    );
    assert_eq!(
        h.get_as(TENANT, "second", "k"),
        Ok(single("k", "from-second"))
    );
    assert_failure(
        h.get_as(TENANT, "nope", "k"),
        Status::InvalidArgument,
        "nope",
    );
    assert_failure(h.bulk_as(TENANT, "nope"), Status::InvalidArgument, "nope");
    assert_eq!(
        h.bulk_as(TENANT, ""),
        Ok(vec![("k".to_owned(), single("k", "from-first"))])
    );
}

fn bulk_returns_every_secret_sorted(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    let expected: Bulk = FIXTURE
        .iter()
        .map(|(name, value)| ((*name).to_owned(), single(name, value)))
        .collect();
    assert_eq!(h.bulk(), Ok(expected));
}

fn undecodable_payload_is_invalid_argument(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    let mut payload = mecha_abi::encode(&SecretGetRequest {
        store: String::new(),
        name: "token".to_owned(),
    })
    .expect("encode");
    payload.push(0);
    let (status, _) = h.call(TENANT, Opcode::SECRET_GET, &payload);
    assert_eq!(status, Status::InvalidArgument, "trailing bytes");
    let (status, _) = h.call(TENANT, Opcode::SECRET_BULK_GET, &[]);
    assert_eq!(status, Status::InvalidArgument, "an empty bulk payload");
    let (status, _) = h.call(TENANT, Opcode::STATE_GET, &[]);
    assert_eq!(status, Status::UnknownOpcode, "another family's opcode");
}

fn changes_are_seen_without_a_restart(kind: Kind) {
    let mut h = Harness::vault(kind, &[]);
    assert_eq!(h.get("token"), Ok(single("token", "val-token-e4d2b8")));
    // Rewritten at once, at the same length: a cache keyed on size and a
    // coarse modification time alone would miss this.
    h.source().put("token", "val-token-AAAAAA");
    assert_eq!(h.get("token"), Ok(single("token", "val-token-AAAAAA")));
    h.source().put("added", "v");
    assert_eq!(h.get("added"), Ok(single("added", "v")));
    h.source().remove("db-password");
    assert_failure(h.get("db-password"), Status::NotFound, "db-password");
    let names = h.bulk_names_as(TENANT);
    assert_eq!(names, ["added", "api-key", "empty", "token"]);
}

fn allowed_tenants_refuse_everyone_else(kind: Kind) {
    let h = Harness::vault(kind, &[("allowedTenants", "team-x, uid:1000")]);
    assert_eq!(h.get("token"), Ok(single("token", "val-token-e4d2b8")));
    assert_eq!(h.bulk_names_as("team-x").len(), FIXTURE.len());
    for tenant in ["uid:0", "team-y", "team"] {
        assert_failure(
            h.get_as(tenant, "vault", "token"),
            Status::PermissionDenied,
            "allowedTenants",
        );
        assert_failure(
            h.get_as(tenant, "vault", "token"),
            Status::PermissionDenied,
            tenant,
        );
        // A refused tenant cannot tell a missing secret from a present one.
        assert_failure(
            h.get_as(tenant, "vault", "missing"),
            Status::PermissionDenied,
            "allowedTenants",
        );
        assert_failure(
            h.bulk_as(tenant, "vault"),
            Status::PermissionDenied,
            "allowedTenants",
        );
    }
}

fn allowed_secrets_admit_only_those_listed(kind: Kind) {
    let h = Harness::vault(kind, &[("allowedSecrets", "token,api-key, missing")]);
    assert_eq!(h.get("token"), Ok(single("token", "val-token-e4d2b8")));
    assert_failure(
        h.get("db-password"),
        Status::PermissionDenied,
        "allowedSecrets",
    );
    assert_failure(
        h.get("db-password"),
        Status::PermissionDenied,
        "db-password",
    );
    // Listed but absent is simply missing.
    assert_failure(h.get("missing"), Status::NotFound, "missing");
    assert_eq!(h.bulk_names_as(TENANT), ["api-key", "token"]);
}

fn denied_secrets_are_hidden(kind: Kind) {
    let h = Harness::vault(kind, &[("deniedSecrets", "db-password,missing")]);
    assert_failure(
        h.get("db-password"),
        Status::PermissionDenied,
        "deniedSecrets",
    );
    // A denied name is refused whether or not it exists.
    assert_failure(h.get("missing"), Status::PermissionDenied, "deniedSecrets");
    assert_eq!(h.get("token"), Ok(single("token", "val-token-e4d2b8")));
    assert_eq!(h.bulk_names_as(TENANT), ["api-key", "empty", "token"]);
}

fn default_access_deny_needs_an_allow_list(kind: Kind) {
    let h = Harness::vault(kind, &[("defaultAccess", "deny")]);
    assert_failure(h.get("token"), Status::PermissionDenied, "defaultAccess");
    assert!(h.bulk_names_as(TENANT).is_empty());

    let h = Harness::vault(
        kind,
        &[("defaultAccess", "Deny"), ("allowedSecrets", "token")],
    );
    assert_eq!(h.get("token"), Ok(single("token", "val-token-e4d2b8")));
    assert_eq!(h.bulk_names_as(TENANT), ["token"]);
}

fn rules_combine_per_tenant_then_per_secret(kind: Kind) {
    let h = Harness::vault(
        kind,
        &[("allowedTenants", "team-x"), ("deniedSecrets", "token")],
    );
    assert_failure(
        h.get_as("team-y", "vault", "api-key"),
        Status::PermissionDenied,
        "allowedTenants",
    );
    assert_failure(
        h.get_as("team-x", "vault", "token"),
        Status::PermissionDenied,
        "deniedSecrets",
    );
    assert_eq!(
        h.get_as("team-x", "vault", "api-key"),
        Ok(single("api-key", "val-api-7f3a9c"))
    );
}

fn bad_allow_lists_fail_the_start(kind: Kind) {
    for (metadata, needle) in [
        (&[("allowedTenants", "")][..], "allowedTenants"),
        (&[("allowedTenants", " , ")][..], "allowedTenants"),
        (
            &[("allowedSecrets", "a,b"), ("deniedSecrets", "b")][..],
            "\"b\"",
        ),
        (&[("defaultAccess", "sometimes")][..], "defaultAccess"),
        (&[("allowedTenant", "team-x")][..], "allowedTenant"),
        (
            &[("allowedTenants", "a"), ("AllowedTenants", "b")][..],
            "twice",
        ),
    ] {
        let stores = [StoreDef {
            name: "vault",
            secrets: FIXTURE,
            metadata,
        }];
        match Harness::try_new(kind, &stores) {
            Ok(_) => panic!("metadata {metadata:?} must be refused"),
            Err(e) => assert!(
                e.contains(needle) && e.contains("vault"),
                "{e:?} for {metadata:?}"
            ),
        }
    }
}

fn metadata_names_ignore_case(kind: Kind) {
    let h = Harness::vault(kind, &[("ALLOWEDTENANTS", "team-x")]);
    assert_failure(h.get("token"), Status::PermissionDenied, "allowedTenants");
}

fn values_stay_out_of_debug_output(kind: Kind) {
    let h = Harness::vault(kind, &[]);
    // The driver as the factory opens it, after it has read its secrets.
    let source = &h.sources[0];
    let (field, value) = match kind {
        Kind::Json | Kind::Yaml => ("secretsFile", source.path.to_str().expect("UTF-8")),
        Kind::Dir => ("secretsDir", source.path.to_str().expect("UTF-8")),
        Kind::Env => ("prefix", source.prefix.as_str()),
    };
    let spec = testing::spec("vault", kind.driver_type(), &[(field, value)]);
    let store = drivers::open(&spec, Path::new("/")).expect("open the driver");
    let secrets = h.served.block(store.bulk_get()).expect("bulk get");
    assert_eq!(secrets.len(), FIXTURE.len());
    let text = format!("{store:?} {store:#?} {secrets:?} {secrets:#?}");
    assert!(text.contains("db-password"), "names may show: {text}");
    assert_no_value(&text);

    let reply = SecretBulkReply {
        secrets: h.bulk().expect("bulk get"),
    };
    assert_no_value(&format!("{reply:?} {reply:#?}"));
}

mecha_module::conformance! {
    drivers: {
        json => Kind::Json,
        yaml => Kind::Yaml,
        env => Kind::Env,
        dir => Kind::Dir,
    }
    cases: [
    get_returns_one_pair_keyed_by_the_name,
    missing_secret_is_not_found_naming_it,
    empty_name_is_invalid_argument,
    empty_store_is_the_first_and_unknown_store_is_invalid,
    bulk_returns_every_secret_sorted,
    undecodable_payload_is_invalid_argument,
    changes_are_seen_without_a_restart,
    allowed_tenants_refuse_everyone_else,
    allowed_secrets_admit_only_those_listed,
    denied_secrets_are_hidden,
    default_access_deny_needs_an_allow_list,
    rules_combine_per_tenant_then_per_secret,
    bad_allow_lists_fail_the_start,
    metadata_names_ignore_case,
    values_stay_out_of_debug_output,
    ]
}

// ---- Driver-specific behaviour. ----

/// Stores serve no tenant unless their component lists some; the tests of
/// other behaviour admit every tenant (`*`) unless they list their own.
fn admit_everyone_unless_listed(metadata: &mut Vec<(String, String)>) {
    if !metadata
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("allowedTenants"))
    {
        metadata.push(("allowedTenants".to_owned(), "*".to_owned()));
    }
}

#[test]
fn a_store_without_allowed_tenants_serves_nobody() {
    let dir = temp_dir();
    let h = open_exact(
        "secretstores.local.env",
        pairs(&[("prefix", "MECHA_TEST_NOBODY_")]),
        dir.path(),
    )
    .expect("module starts");
    for tenant in ["uid:0", "uid:1000", "team-x"] {
        match h.get_as(tenant, "", "anything") {
            Err((status, message)) => {
                assert_eq!(status, Status::PermissionDenied, "{message}");
                assert!(message.contains("no allowedTenants"), "{message}");
            }
            Ok(v) => panic!("tenant {tenant} read {v:?}"),
        }
    }
}

/// A module serving one store of `kind` with `metadata` (admitting every
/// tenant unless it lists `allowedTenants`).
fn open_module(kind: &str, metadata: &[(&str, &str)], data_dir: &Path) -> Result<Harness, String> {
    let mut all = pairs(metadata);
    admit_everyone_unless_listed(&mut all);
    open_exact(kind, all, data_dir)
}

/// A module serving one store of `kind` with exactly `metadata`.
fn open_exact(
    kind: &str,
    metadata: Vec<(String, String)>,
    data_dir: &Path,
) -> Result<Harness, String> {
    let component = ComponentSpec {
        name: "vault".to_owned(),
        kind: kind.to_owned(),
        metadata,
    };
    let served = Served::start(data_dir, vec![component]).map_err(|e| e.0)?;
    Ok(Harness {
        served,
        sources: Vec::new(),
        _dir: temp_dir(),
    })
}

/// A file store over a file named `file` in a fresh directory holding `text`.
fn file_store(file: &str, text: &str, metadata: &[(&str, &str)]) -> (Harness, TempDir) {
    let dir = temp_dir();
    std::fs::write(dir.path().join(file), text).expect("write the secrets file");
    let mut all = vec![("secretsFile", file)];
    all.extend_from_slice(metadata);
    let h = open_module("secretstores.local.file", &all, dir.path())
        .unwrap_or_else(|e| panic!("the module starts: {e}"));
    (h, dir)
}

const NESTED_JSON: &str = r#"{
    "redis": "pw-redis",
    "db": {"user": "admin", "pass": "pw-db", "replica": {"host": "r1"}},
    "hosts": ["h0", "h1"],
    "port": 5432,
    "tls": true,
    "ratio": 1.5,
    "nothing": null
}"#;

const NESTED_YAML: &str = "
redis: pw-redis
db:
  user: admin
  pass: pw-db
  replica:
    host: r1
hosts: [h0, h1]
port: 5432
tls: true
ratio: 1.5
nothing: null
";

#[test]
fn file_flattens_nested_values_with_the_default_separator() {
    for (file, text) in [
        ("s.json", NESTED_JSON),
        ("s.yaml", NESTED_YAML),
        ("s.yml", NESTED_YAML),
    ] {
        let (h, _dir) = file_store(file, text, &[]);
        let names: Vec<String> = h
            .bulk()
            .expect("bulk")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "db:pass",
                "db:replica:host",
                "db:user",
                "hosts:0",
                "hosts:1",
                "nothing",
                "port",
                "ratio",
                "redis",
                "tls"
            ],
            "{file}"
        );
        assert_eq!(
            h.get("db:replica:host"),
            Ok(single("db:replica:host", "r1"))
        );
        assert_eq!(h.get("hosts:1"), Ok(single("hosts:1", "h1")));
        assert_eq!(h.get("port"), Ok(single("port", "5432")));
        assert_eq!(h.get("tls"), Ok(single("tls", "true")));
        assert_eq!(h.get("ratio"), Ok(single("ratio", "1.5")));
        assert_eq!(h.get("nothing"), Ok(single("nothing", "")));
        // A mapping is not itself a secret when not multi-valued.
        assert_failure(h.get("db"), Status::NotFound, "db");
    }
}

#[test]
fn file_nested_separator_is_configurable() {
    let (h, _dir) = file_store("s.json", NESTED_JSON, &[("nestedSeparator", "__")]);
    assert_eq!(
        h.get("db__replica__host"),
        Ok(single("db__replica__host", "r1"))
    );
    assert_failure(h.get("db:user"), Status::NotFound, "db:user");
}

#[test]
fn file_multi_valued_makes_top_level_keys_secrets() {
    for (file, text) in [("s.json", NESTED_JSON), ("s.yaml", NESTED_YAML)] {
        let (h, _dir) = file_store(file, text, &[("multiValued", "true")]);
        assert_eq!(
            h.get("db"),
            Ok(pairs(&[
                ("pass", "pw-db"),
                ("replica:host", "r1"),
                ("user", "admin")
            ])),
            "{file}"
        );
        assert_eq!(h.get("hosts"), Ok(pairs(&[("0", "h0"), ("1", "h1")])));
        // A scalar at the top is a one-pair secret keyed by its name.
        assert_eq!(h.get("redis"), Ok(single("redis", "pw-redis")));
        assert_failure(h.get("db:user"), Status::NotFound, "db:user");
        let bulk = h.bulk().expect("bulk");
        let names: Vec<&str> = bulk.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["db", "hosts", "nothing", "port", "ratio", "redis", "tls"]
        );
        assert_eq!(bulk[0].1, h.get("db").expect("get"));
    }
    let (h, _dir) = file_store(
        "s.json",
        NESTED_JSON,
        &[("multiValued", "TRUE"), ("nestedSeparator", ".")],
    );
    assert_eq!(
        h.get("db"),
        Ok(pairs(&[
            ("pass", "pw-db"),
            ("replica.host", "r1"),
            ("user", "admin")
        ]))
    );
}

#[test]
fn file_allow_lists_apply_to_multi_valued_secret_names() {
    let (h, _dir) = file_store(
        "s.json",
        NESTED_JSON,
        &[("multiValued", "true"), ("allowedSecrets", "db")],
    );
    assert_eq!(h.bulk_names_as(TENANT), ["db"]);
    assert_failure(h.get("redis"), Status::PermissionDenied, "allowedSecrets");
}

#[test]
fn file_yaml_scalar_keys_become_names_and_an_empty_file_holds_nothing() {
    let (h, _dir) = file_store("s.yaml", "1: one\ntrue: yes-value\n", &[]);
    assert_eq!(h.get("1"), Ok(single("1", "one")));
    assert_eq!(h.get("true"), Ok(single("true", "yes-value")));
    let (h, _dir) = file_store("s.yaml", "", &[]);
    assert_eq!(h.bulk(), Ok(Vec::new()));
}

#[test]
fn file_names_that_collide_after_flattening_fail_the_start() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("s.json"),
        r#"{"a:b": "x1", "a": {"b": "x2"}}"#,
    )
    .expect("write");
    let e = open_module(
        "secretstores.local.file",
        &[("secretsFile", "s.json")],
        dir.path(),
    )
    .err()
    .expect("colliding names are refused");
    assert!(
        e.contains("\"a:b\"") && e.contains("nestedSeparator"),
        "{e}"
    );
    assert!(!e.contains("x1") && !e.contains("x2"), "{e}");
}

#[test]
fn file_that_is_missing_or_broken_fails_the_start_without_its_content() {
    let dir = temp_dir();
    let e = open_module(
        "secretstores.local.file",
        &[("secretsFile", "absent.json")],
        dir.path(),
    )
    .err()
    .expect("a missing file is refused");
    assert!(e.contains("absent.json"), "{e}");

    for (file, text) in [
        (
            "bad.json",
            "{\"k\": \"val-leaked-1\",\n \"j\": val-leaked-2}",
        ),
        ("bad.yaml", "k: val-leaked-1\n  j: [val-leaked-2\n"),
        ("list.json", "[\"val-leaked-1\"]"),
        ("tag.yaml", "k: !vault val-leaked-1\n"),
        ("key.yaml", "? [val-leaked-1]\n: v\n"),
    ] {
        std::fs::write(dir.path().join(file), text).expect("write");
        let e = open_module(
            "secretstores.local.file",
            &[("secretsFile", file)],
            dir.path(),
        )
        .err()
        .unwrap_or_else(|| panic!("{file} is refused"));
        assert!(e.contains(file), "{e}");
        assert!(!e.contains("val-leaked"), "{e}");
    }
}

#[test]
fn file_broken_later_is_unavailable_until_fixed() {
    let (h, dir) = file_store("s.json", r#"{"k": "val-one"}"#, &[]);
    let path = dir.path().join("s.json");
    std::fs::write(&path, r#"{"k": "val-two""#).expect("write");
    assert_failure(h.get("k"), Status::Unavailable, "s.json");
    assert_failure(h.get("k"), Status::Unavailable, "line 1");
    assert_failure(h.bulk(), Status::Unavailable, "s.json");
    std::fs::remove_file(&path).expect("remove");
    assert_failure(h.get("k"), Status::Unavailable, "s.json");
    // Replaced atomically, as editors and Kubernetes do.
    let tmp = dir.path().join("s.json.tmp");
    std::fs::write(&tmp, r#"{"k": "val-three"}"#).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert_eq!(h.get("k"), Ok(single("k", "val-three")));
}

#[test]
fn file_path_is_absolute_or_under_the_data_dir() {
    let data = temp_dir();
    std::fs::create_dir(data.path().join("sub")).expect("mkdir");
    std::fs::write(data.path().join("sub/s.json"), r#"{"k": "rel"}"#).expect("write");
    let h = open_module(
        "secretstores.local.file",
        &[("secretsFile", "sub/s.json")],
        data.path(),
    )
    .expect("a relative path is under the data dir");
    assert_eq!(h.get("k"), Ok(single("k", "rel")));

    let elsewhere = temp_dir();
    let abs = elsewhere.path().join("s.json");
    std::fs::write(&abs, r#"{"k": "abs"}"#).expect("write");
    let h = open_module(
        "secretstores.local.file",
        &[("secretsFile", abs.to_str().expect("UTF-8"))],
        data.path(),
    )
    .expect("an absolute path is used as it is");
    assert_eq!(h.get("k"), Ok(single("k", "abs")));
}

#[test]
fn file_metadata_is_checked() {
    let dir = temp_dir();
    std::fs::write(dir.path().join("s.json"), "{}").expect("write");
    for (metadata, needle) in [
        (&[][..], "secretsFile"),
        (&[("secretsFile", "")][..], "secretsFile"),
        (
            &[("secretsFile", "s.json"), ("nestedSeparator", "")][..],
            "nestedSeparator",
        ),
        (
            &[("secretsFile", "s.json"), ("multiValued", "yes")][..],
            "multiValued",
        ),
        (&[("secretsFile", "s.json"), ("prefix", "X_")][..], "prefix"),
    ] {
        let e = open_module("secretstores.local.file", metadata, dir.path())
            .err()
            .unwrap_or_else(|| panic!("{metadata:?} is refused"));
        assert!(e.contains(needle), "{e:?} for {metadata:?}");
    }
}

#[test]
fn env_strips_the_prefix_and_sees_nothing_else() {
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("MECHA_SECRETS_ENV_{n}_");
    let set = [
        (format!("{prefix}DB_PASSWORD"), "val-env-1"),
        (format!("{prefix}lower.case"), "val-env-2"),
        // Shares the start of the prefix but not all of it.
        (format!("MECHA_SECRETS_ENV_{n}X"), "val-env-3"),
        // Exactly the prefix: would be the secret "", which nobody can name.
        (prefix.clone(), "val-env-4"),
    ];
    for (variable, value) in &set {
        std::env::set_var(variable, value);
    }
    let dir = temp_dir();
    let h =
        open_module("secretstores.local.env", &[("prefix", &prefix)], dir.path()).expect("open");
    assert_eq!(h.get("DB_PASSWORD"), Ok(single("DB_PASSWORD", "val-env-1")));
    assert_eq!(h.get("lower.case"), Ok(single("lower.case", "val-env-2")));
    // Names are case-sensitive, and the prefix is never part of a name.
    assert_failure(h.get("db_password"), Status::NotFound, "db_password");
    assert_failure(
        h.get(&format!("{prefix}DB_PASSWORD")),
        Status::NotFound,
        "DB_PASSWORD",
    );
    assert_failure(h.get("PATH"), Status::NotFound, "PATH");
    assert_eq!(
        h.bulk(),
        Ok(vec![
            ("DB_PASSWORD".to_owned(), single("DB_PASSWORD", "val-env-1")),
            ("lower.case".to_owned(), single("lower.case", "val-env-2")),
        ])
    );
    for (variable, _) in &set {
        std::env::remove_var(variable);
    }
}

#[test]
fn env_requires_a_prefix() {
    let dir = temp_dir();
    for metadata in [&[][..], &[("prefix", "")][..], &[("prefix", "A=B")][..]] {
        let e = open_module("secretstores.local.env", metadata, dir.path())
            .err()
            .unwrap_or_else(|| panic!("{metadata:?} is refused"));
        assert!(e.contains("prefix"), "{e}");
    }
    let e = open_module(
        "secretstores.local.env",
        &[("prefix", "P_"), ("secretsFile", "x")],
        dir.path(),
    )
    .err()
    .expect("another driver's field is refused");
    assert!(e.contains("secretsFile"), "{e}");
}

/// A secret directory laid out the way Kubernetes mounts a Secret: the data in
/// a timestamped directory, `..data` pointing at it, and one symlink per key.
fn kubernetes_dir(root: &Path, version: &str, secrets: &[(&str, &str)]) {
    let data = root.join(version);
    std::fs::create_dir(&data).expect("mkdir");
    for (name, value) in secrets {
        std::fs::write(data.join(name), value).expect("write");
    }
    // The swap is atomic: a new `..data` link renamed over the old one.
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("..data")).expect("rename");
    for (name, _) in secrets {
        let link = root.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("symlink");
        }
    }
}

#[test]
fn dir_reads_a_kubernetes_mount_through_its_symlinks() {
    let root = temp_dir();
    kubernetes_dir(
        root.path(),
        "..2024_01_01_00_00_00.1",
        &[("username", "admin\n"), ("password", "val-k8s-1")],
    );
    std::fs::write(root.path().join(".hidden"), "val-dot").expect("write");
    std::fs::create_dir(root.path().join("subdir")).expect("mkdir");
    std::fs::write(root.path().join("subdir/inner"), "val-sub").expect("write");
    let h = open_module(
        "secretstores.local.dir",
        &[("secretsDir", root.path().to_str().expect("UTF-8"))],
        Path::new("/"),
    )
    .expect("open");
    // Content is served exactly, trailing newline included.
    assert_eq!(h.get("username"), Ok(single("username", "admin\n")));
    assert_eq!(h.get("password"), Ok(single("password", "val-k8s-1")));
    for hidden in [
        ".hidden",
        "..data",
        "..2024_01_01_00_00_00.1",
        "subdir",
        "subdir/inner",
        "../x",
    ] {
        assert_failure(h.get(hidden), Status::NotFound, hidden);
    }
    assert_eq!(h.bulk_names_as(TENANT), ["password", "username"]);

    // An update swaps `..data`; the next read sees the new values.
    kubernetes_dir(
        root.path(),
        "..2024_01_02_00_00_00.2",
        &[("username", "admin\n"), ("password", "val-k8s-2")],
    );
    assert_eq!(h.get("password"), Ok(single("password", "val-k8s-2")));
}

#[test]
fn dir_refuses_unservable_files_and_bulk_skips_them() {
    let root = temp_dir();
    std::fs::write(root.path().join("binary"), [0xff, 0xfe, 0x00]).expect("write");
    std::fs::write(root.path().join("huge"), vec![b'x'; (1 << 20) + 1]).expect("write");
    std::fs::write(root.path().join("fine"), "ok").expect("write");
    std::os::unix::fs::symlink("nowhere", root.path().join("dangling")).expect("symlink");
    let h = open_module(
        "secretstores.local.dir",
        &[("secretsDir", root.path().to_str().expect("UTF-8"))],
        Path::new("/"),
    )
    .expect("open");
    assert_failure(h.get("binary"), Status::Internal, "UTF-8");
    assert_failure(h.get("huge"), Status::Internal, "larger");
    assert_failure(h.get("dangling"), Status::NotFound, "dangling");
    assert_eq!(h.bulk_names_as(TENANT), ["fine"]);
}

#[test]
fn dir_must_exist_at_start() {
    let root = temp_dir();
    std::fs::write(root.path().join("file"), "x").expect("write");
    for (dir, needle) in [("absent", "absent"), ("file", "not a directory")] {
        let e = open_module(
            "secretstores.local.dir",
            &[("secretsDir", dir)],
            root.path(),
        )
        .err()
        .unwrap_or_else(|| panic!("{dir} is refused"));
        assert!(e.contains(needle), "{e}");
    }
    // A relative path is under the data directory.
    std::fs::create_dir(root.path().join("d")).expect("mkdir");
    std::fs::write(root.path().join("d/k"), "v").expect("write");
    let h = open_module(
        "secretstores.local.dir",
        &[("secretsDir", "d")],
        root.path(),
    )
    .expect("open");
    assert_eq!(h.get("k"), Ok(single("k", "v")));
}

#[test]
fn factory_rejects_unknown_type() {
    let spec = testing::spec("vault", "secretstores.hashicorp.vault", &[]);
    match drivers::open(&spec, Path::new("/")) {
        Err(StoreError::Driver(DriverError::Config { component, reason })) => {
            assert_eq!(component, "vault");
            assert!(reason.contains("secretstores.hashicorp.vault"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let dir = temp_dir();
    let e = open_module("secretstores.nope", &[], dir.path())
        .err()
        .expect("the module refuses to start");
    assert!(
        e.contains("vault") && e.contains("secretstores.nope"),
        "{e}"
    );
}

#[test]
fn secret_debug_shows_keys_not_values() {
    let secret = Secret::from_pairs(pairs(&[("user", "val-debug-1"), ("pass", "val-debug-2")]));
    assert_eq!(
        secret.pairs(),
        pairs(&[("pass", "val-debug-2"), ("user", "val-debug-1")])
    );
    let text = format!("{secret:?} {secret:#?}");
    assert!(text.contains("user") && text.contains("pass"), "{text}");
    assert!(!text.contains("val-debug"), "{text}");
}
