//! Conformance tests: one behaviour suite run against every configuration
//! driver, then driver-specific behaviour (memory writes and tenants; file
//! reloads, malformed edits, rename-replace) and the module's own checks.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use mecha_abi::msg::{
    ComponentSpec, ConfigGetReply, ConfigGetRequest, ConfigItem, ConfigSetItem, ConfigSetRequest,
    ConfigSubscribeRequest, ErrorBody,
};
use mecha_mod_config::drivers::{self, ConfigError, ConfigStore, Subscriber};
use mecha_mod_config::ConfigModule;
use mecha_module::testing::{self, temp_dir, wait_until, Served};
use mecha_module::DriverError;
use mecha_module::{Opcode, Reply, Status};

/// Component "cfg" of type `kind` with `metadata`.
fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("cfg", kind, metadata)
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// The versions are decimal revisions; the suite compares them as numbers.
fn revision(item: &ConfigItem) -> u64 {
    item.version.parse().expect("versions are decimal")
}

/// (key, value) pairs of items, for compact assertions.
fn pairs(items: &[ConfigItem]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| (i.key.clone(), i.value.clone()))
        .collect()
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

/// How the harness changes a store's content.
enum Writer {
    /// Through `set`, in the given tenant.
    Memory,
    /// By rewriting the file (rename-replace), then waiting for the reload.
    File {
        path: PathBuf,
        content: BTreeMap<String, String>,
    },
}

/// One store under test (the SDK's harness), with a uniform way to change it.
struct Harness {
    inner: testing::Harness<dyn ConfigStore>,
    writer: Writer,
}

impl Deref for Harness {
    type Target = testing::Harness<dyn ConfigStore>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Harness {
    fn memory() -> Self {
        Self {
            inner: testing::Harness::open(spec("configuration.memory", &[]), drivers::open),
            writer: Writer::Memory,
        }
    }

    /// A file store over an empty file, named by its absolute path.
    fn file() -> Self {
        let setup = testing::Setup::new(spec("configuration.file", &[])).file("app.yaml", "");
        let path = setup.dir().join("app.yaml");
        let path_str = path.to_str().expect("the temporary path is UTF-8");
        Self {
            inner: setup.metadata("path", path_str).open(drivers::open),
            writer: Writer::File {
                path,
                content: BTreeMap::new(),
            },
        }
    }

    /// Applies `changes` (`None` deletes) in `tenant` and returns once the
    /// store shows them.
    fn write(&mut self, tenant: &str, changes: &[(&str, Option<&str>)]) {
        match &mut self.writer {
            Writer::Memory => {
                let items = changes
                    .iter()
                    .filter_map(|(k, v)| {
                        v.map(|v| ConfigSetItem {
                            key: (*k).to_owned(),
                            value: v.to_owned(),
                            metadata: Vec::new(),
                        })
                    })
                    .collect();
                let delete = changes
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| (*k).to_owned())
                    .collect();
                self.inner
                    .block(self.inner.store().set(tenant, items, delete))
                    .expect("the write succeeds");
            }
            Writer::File { path, content, .. } => {
                for (k, v) in changes {
                    match v {
                        Some(v) => content.insert((*k).to_owned(), (*v).to_owned()),
                        None => content.remove(*k),
                    };
                }
                replace_file(path, &yaml(content));
                let expected: Vec<(String, String)> = content
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let store = &self.inner;
                wait_until("the file store to reload", || {
                    pairs(&store.block(store.store().get(tenant, &[])).expect("get")) == expected
                });
            }
        }
    }

    fn get(&self, tenant: &str, wanted: &[&str]) -> Vec<ConfigItem> {
        self.block(self.store().get(tenant, &keys(wanted)))
            .expect("the read succeeds")
    }

    fn subscribe(&self, tenant: &str, wanted: &[&str]) -> (Vec<ConfigItem>, Subscriber) {
        self.block(self.store().subscribe(tenant, keys(wanted)))
            .expect("the subscription succeeds")
    }

    /// Waits until `sub` has changes pending.
    fn wait_changed(&self, sub: &Subscriber) {
        self.block_until("a change to reach the subscriber", sub.changed());
    }
}

/// YAML for `content`, every value quoted so it stays a string.
fn yaml(content: &BTreeMap<String, String>) -> String {
    content
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}\n"))
        .collect()
}

/// Replaces `path` atomically: a new file renamed over the old one, the way
/// careful tools update configuration.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

// ---- The suite, run against every driver. ----

fn get_all_some_and_missing(mut h: Harness) {
    h.write("t", &[("b", Some("2")), ("a", Some("1")), ("c", Some("3"))]);
    assert_eq!(
        pairs(&h.get("t", &[])),
        vec![pair("a", "1"), pair("b", "2"), pair("c", "3")],
        "every item, sorted by key"
    );
    assert_eq!(
        pairs(&h.get("t", &["c", "missing", "a", "c"])),
        vec![pair("c", "3"), pair("a", "1")],
        "request order, each key once, missing keys absent"
    );
    assert_eq!(h.get("t", &["missing"]), Vec::new());
}

fn versions_grow_with_every_change_only(mut h: Harness) {
    h.write("t", &[("a", Some("1")), ("b", Some("1"))]);
    let before = h.get("t", &["a", "b"]);
    h.write("t", &[("a", Some("2"))]);
    let after = h.get("t", &["a", "b"]);
    assert!(
        revision(&after[0]) > revision(&before[0]),
        "a changed: {} then {}",
        before[0].version,
        after[0].version
    );
    assert_eq!(after[1].version, before[1].version, "b did not change");
    h.write("t", &[("a", Some("3"))]);
    let again = h.get("t", &["a"]);
    assert!(revision(&again[0]) > revision(&after[0]));
}

fn subscription_starts_with_a_snapshot_then_gets_changes_of_watched_keys(mut h: Harness) {
    h.write("t", &[("a", Some("1")), ("other", Some("x"))]);
    let (snapshot, sub) = h.subscribe("t", &["a", "b"]);
    assert_eq!(pairs(&snapshot), vec![pair("a", "1")]);
    assert_eq!(sub.take(), None, "nothing changed after the snapshot");

    h.write(
        "t",
        &[("a", Some("2")), ("b", Some("1")), ("other", Some("y"))],
    );
    h.wait_changed(&sub);
    let changes = sub.take().expect("changes are pending");
    assert_eq!(pairs(&changes.items), vec![pair("a", "2"), pair("b", "1")]);
    assert!(changes.deleted.is_empty());
    assert_eq!(
        changes.items,
        h.get("t", &["a", "b"]),
        "pushed items carry their versions"
    );

    // A change of an unwatched key alone reaches nobody.
    h.write("t", &[("other", Some("z"))]);
    assert_eq!(sub.take(), None, "other is not watched");
}

fn subscription_to_every_key_sees_new_keys_and_deletes(mut h: Harness) {
    h.write("t", &[("a", Some("1")), ("b", Some("1"))]);
    let (snapshot, sub) = h.subscribe("t", &[]);
    assert_eq!(pairs(&snapshot), vec![pair("a", "1"), pair("b", "1")]);
    h.write("t", &[("a", None), ("c", Some("1"))]);
    h.wait_changed(&sub);
    let changes = sub.take().expect("changes are pending");
    assert_eq!(pairs(&changes.items), vec![pair("c", "1")]);
    assert_eq!(changes.deleted, keys(&["a"]));
}

fn a_slow_subscriber_gets_the_latest_value_coalesced(mut h: Harness) {
    let (_, sub) = h.subscribe("t", &["k"]);
    // Rewriting a file and waiting for each reload is slower than a memory
    // write, so the file store gets fewer rounds; coalescing is the same.
    let rounds = match h.writer {
        Writer::Memory => 2_000,
        Writer::File { .. } => 20,
    };
    for i in 0..rounds {
        let value = i.to_string();
        h.write("t", &[("k", Some(&value)), ("unwatched", Some(&value))]);
        assert!(
            sub.pending_keys() <= 1,
            "the mailbox holds one entry per key"
        );
    }
    let changes = sub.take().expect("changes are pending");
    let last = (rounds - 1).to_string();
    assert_eq!(pairs(&changes.items), vec![pair("k", &last)]);
    assert_eq!(changes.items, h.get("t", &["k"]), "the latest version");
    assert_eq!(sub.take(), None, "taking empties the mailbox");
}

mecha_module::conformance! {
    drivers: {
        memory => Harness::memory(),
        file => Harness::file(),
    }
    cases: [
    get_all_some_and_missing,
    versions_grow_with_every_change_only,
    subscription_starts_with_a_snapshot_then_gets_changes_of_watched_keys,
    subscription_to_every_key_sees_new_keys_and_deletes,
    a_slow_subscriber_gets_the_latest_value_coalesced,
    ]
}

// ---- Memory driver. ----

fn set_item(key: &str, value: &str, metadata: &[(&str, &str)]) -> ConfigSetItem {
    ConfigSetItem {
        key: key.to_owned(),
        value: value.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

#[test]
fn memory_set_writes_and_deletes_atomically_with_one_version() {
    let h = Harness::memory();
    let versions = h
        .block(h.store().set(
            "t",
            vec![
                set_item("a", "1", &[("z", "last"), ("owner", "ops")]),
                set_item("b", "2", &[]),
            ],
            keys(&["missing"]),
        ))
        .expect("the write succeeds");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0], versions[1], "one request is one change");
    let a = &h.get("t", &["a"])[0];
    assert_eq!(a.version, versions[0]);
    assert_eq!(
        a.metadata,
        vec![
            ("owner".to_owned(), "ops".to_owned()),
            ("z".to_owned(), "last".to_owned())
        ],
        "metadata sorted by name"
    );

    let (_, sub) = h.subscribe("t", &[]);
    let none = h
        .block(h.store().set("t", Vec::new(), keys(&["a", "missing"])))
        .expect("deleting succeeds");
    assert!(none.is_empty());
    assert_eq!(pairs(&h.get("t", &[])), vec![pair("b", "2")]);
    let changes = sub.take().expect("the delete is pending");
    assert_eq!(changes.deleted, keys(&["a"]), "only keys that existed");
}

#[test]
fn memory_tenants_are_isolated() {
    let mut h = Harness::memory();
    let (_, sub_u) = h.subscribe("u", &[]);
    h.write("t", &[("k", Some("t's"))]);
    assert_eq!(pairs(&h.get("t", &["k"])), vec![pair("k", "t's")]);
    assert_eq!(h.get("u", &["k"]), Vec::new());
    assert_eq!(h.get("u", &[]), Vec::new());
    assert_eq!(sub_u.take(), None, "u hears nothing of t's writes");
    h.write("u", &[("k", Some("u's"))]);
    assert_eq!(pairs(&h.get("t", &["k"])), vec![pair("k", "t's")]);
    assert_eq!(
        pairs(&sub_u.take().expect("u's own write").items),
        vec![pair("k", "u's")]
    );
}

#[test]
fn memory_dropped_subscribers_are_unregistered() {
    let store = drivers::memory::MemoryStore::new();
    let rt = testing::runtime();
    let (_, a) = rt
        .block_on(store.subscribe("t", Vec::new()))
        .expect("subscribe");
    let (_, b) = rt
        .block_on(store.subscribe("t", keys(&["k"])))
        .expect("subscribe");
    assert_eq!(store.hub().len(), 2);
    drop(a);
    assert_eq!(store.hub().len(), 1);
    drop(b);
    assert!(store.hub().is_empty());
}

// ---- File driver. ----

/// A file store over `text` written to `name` in a fresh directory.
struct FileFixture {
    h: testing::Harness<drivers::file::FileStore>,
    path: PathBuf,
}

impl Deref for FileFixture {
    type Target = testing::Harness<drivers::file::FileStore>;

    fn deref(&self) -> &Self::Target {
        &self.h
    }
}

impl FileFixture {
    fn new(name: &str, text: &str) -> Self {
        let h = testing::Setup::new(spec("configuration.file", &[("path", name)]))
            .file(name, text)
            .open(|spec: &ComponentSpec, dir: &Path| {
                drivers::file::FileStore::open(spec, dir).map(Box::new)
            });
        let path = h.dir().join(name);
        Self { h, path }
    }

    fn get(&self, wanted: &[&str]) -> Vec<ConfigItem> {
        self.block(self.store().get("t", &keys(wanted)))
            .expect("the read succeeds")
    }

    fn wait_for(&self, what: &str, expected: &[(String, String)]) {
        wait_until(what, || pairs(&self.get(&[])) == expected);
    }
}

#[test]
fn file_reloads_an_in_place_edit() {
    let f = FileFixture::new("app.yaml", "a: \"1\"\nb: \"2\"\n");
    assert_eq!(pairs(&f.get(&[])), vec![pair("a", "1"), pair("b", "2")]);
    let (_, sub) = f
        .block(f.store().subscribe("t", keys(&["a"])))
        .expect("subscribe");
    // std::fs::write truncates and writes in place, as many editors do.
    std::fs::write(&f.path, "a: \"one\"\nb: \"2\"\n").expect("edit the file");
    f.wait_for("the edit to be read", &[pair("a", "one"), pair("b", "2")]);
    let changes = sub.take().expect("the change was published");
    assert_eq!(pairs(&changes.items), vec![pair("a", "one")]);
}

#[test]
fn file_rename_replace_is_detected() {
    let f = FileFixture::new("app.yaml", "a: x\n");
    replace_file(&f.path, "a: y\nnew: z\n");
    f.wait_for(
        "the replaced file to be read",
        &[pair("a", "y"), pair("new", "z")],
    );
    // And again: the watch survives the replacement of the file.
    replace_file(&f.path, "a: w\n");
    f.wait_for("the second replacement to be read", &[pair("a", "w")]);
}

#[test]
fn file_malformed_edit_keeps_the_previous_content() {
    let f = FileFixture::new("app.yaml", "a: good\n");
    let (_, sub) = f
        .block(f.store().subscribe("t", Vec::new()))
        .expect("subscribe");
    let before = f.get(&[]);
    for (i, bad) in [
        "a: [unclosed\n",
        "- a list\n- not a map\n",
        "a: {value: x, extra: y}\n",
        "a: null\n",
    ]
    .into_iter()
    .enumerate()
    {
        let rejected = f.store().rejected_edits();
        replace_file(&f.path, bad);
        wait_until(&format!("malformed edit {i} to be rejected"), || {
            f.store().rejected_edits() > rejected
        });
        assert_eq!(f.get(&[]), before, "edit {i} changed nothing");
    }
    assert_eq!(sub.take(), None, "subscribers heard nothing");
    // A good edit afterwards applies as usual.
    replace_file(&f.path, "a: fixed\n");
    f.wait_for("the repaired file to be read", &[pair("a", "fixed")]);
}

#[test]
fn file_removed_keeps_the_content_until_it_returns() {
    let f = FileFixture::new("app.yaml", "a: kept\n");
    let rejected = f.store().rejected_edits();
    std::fs::remove_file(&f.path).expect("remove the file");
    wait_until("the removal to be noticed", || {
        f.store().rejected_edits() > rejected
    });
    assert_eq!(pairs(&f.get(&[])), vec![pair("a", "kept")]);
    replace_file(&f.path, "a: back\n");
    f.wait_for("the file to be read again", &[pair("a", "back")]);
}

#[test]
fn file_formats_scalars_metadata_and_json() {
    let f = FileFixture::new(
        "app.yaml",
        "port: 8080\nratio: 0.5\nenabled: true\nname: plain\n\
         feature:\n  value: \"on\"\n  metadata: {owner: team-a, tier: 1}\n",
    );
    let items = f.get(&[]);
    assert_eq!(
        pairs(&items),
        vec![
            pair("enabled", "true"),
            pair("feature", "on"),
            pair("name", "plain"),
            pair("port", "8080"),
            pair("ratio", "0.5"),
        ]
    );
    assert_eq!(
        items[1].metadata,
        vec![
            ("owner".to_owned(), "team-a".to_owned()),
            ("tier".to_owned(), "1".to_owned())
        ]
    );
    let versions: Vec<&str> = items.iter().map(|i| i.version.as_str()).collect();
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "one load, one version"
    );

    let j = FileFixture::new(
        "app.json",
        r#"{"a": "1", "b": 2, "c": {"value": "3", "metadata": {"m": "n"}}}"#,
    );
    assert_eq!(
        pairs(&j.get(&[])),
        vec![pair("a", "1"), pair("b", "2"), pair("c", "3")]
    );
    let empty = FileFixture::new("empty.yaml", "# nothing configured yet\n");
    assert_eq!(empty.get(&[]), Vec::new());
}

#[test]
fn file_store_is_read_only_and_node_wide() {
    let f = FileFixture::new("app.yaml", "a: shared\n");
    let err = f
        .block(
            f.store()
                .set("t", vec![set_item("a", "x", &[])], Vec::new()),
        )
        .expect_err("a file store cannot be written");
    assert_eq!(
        err,
        ConfigError::ReadOnly {
            store: "cfg".to_owned()
        }
    );
    for tenant in ["t", "u", "uid:1000"] {
        let items = f.block(f.store().get(tenant, &[])).expect("get");
        assert_eq!(pairs(&items), vec![pair("a", "shared")], "tenant {tenant}");
    }
    let (_, sub) = f
        .block(f.store().subscribe("u", Vec::new()))
        .expect("subscribe");
    replace_file(&f.path, "a: changed\n");
    f.block_until(
        "every tenant's subscriber to hear of the file",
        sub.changed(),
    );
}

fn open_error(spec: &ComponentSpec, dir: &Path) -> ConfigError {
    testing::refused(spec, drivers::open(spec, dir))
}

fn assert_config_error(e: ConfigError, mentions: &str) {
    match e {
        ConfigError::Driver(DriverError::Config { component, reason }) => {
            assert_eq!(component, "cfg");
            assert!(
                reason.contains(mentions),
                "reason {reason:?} mentions {mentions:?}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn file_open_fails_loudly_on_a_bad_spec_or_file() {
    let dir = temp_dir();
    let kind = "configuration.file";
    assert_config_error(open_error(&spec(kind, &[]), dir.path()), "path");
    assert_config_error(open_error(&spec(kind, &[("path", "")]), dir.path()), "path");
    assert_config_error(
        open_error(&spec(kind, &[("path", "missing.yaml")]), dir.path()),
        "missing.yaml",
    );
    std::fs::write(dir.path().join("bad.yaml"), "secret-value: [unclosed\n").expect("write");
    let e = open_error(&spec(kind, &[("path", "bad.yaml")]), dir.path());
    assert!(
        !e.to_string().contains("secret-value") || e.to_string().contains("line"),
        "the error gives a location: {e}"
    );
    assert_config_error(
        open_error(
            &spec(kind, &[("path", "a.yaml"), ("Path", "b.yaml")]),
            dir.path(),
        ),
        "twice",
    );
    assert_config_error(
        open_error(
            &spec(kind, &[("path", "a.yaml"), ("interval", "1s")]),
            dir.path(),
        ),
        "interval",
    );
}

#[test]
fn parse_errors_never_show_values() {
    let dir = temp_dir();
    for text in [
        "key: [\"hunter2\"\n",
        "key: {value: hunter2, bogus: hunter2}\n",
    ] {
        std::fs::write(dir.path().join("v.yaml"), text).expect("write");
        let e = open_error(
            &spec("configuration.file", &[("path", "v.yaml")]),
            dir.path(),
        );
        assert!(
            !e.to_string().contains("hunter2"),
            "the error shows a value: {e}"
        );
    }
}

// ---- Factory and metadata. ----

#[test]
fn factory_rejects_unknown_types_and_memory_metadata() {
    let dir = temp_dir();
    assert_config_error(
        open_error(&spec("configuration.nope", &[]), dir.path()),
        "configuration.nope",
    );
    assert_config_error(
        open_error(&spec("configuration.memory", &[("path", "x")]), dir.path()),
        "path",
    );
    // `allowedTenants` is accepted by every driver, in any case.
    drivers::open(
        &spec("configuration.memory", &[("AllowedTenants", "a")]),
        dir.path(),
    )
    .expect("allowedTenants is known");
}

#[test]
fn allowed_tenants_are_parsed() {
    assert_eq!(
        drivers::allowed_tenants(&spec("configuration.memory", &[])),
        Ok(None)
    );
    assert_eq!(
        drivers::allowed_tenants(&spec(
            "configuration.memory",
            &[("allowedTenants", " a, uid:7 ,,")]
        )),
        Ok(Some(keys(&["a", "uid:7"])))
    );
    assert_config_error(
        drivers::allowed_tenants(&spec("configuration.memory", &[("allowedTenants", " , ")]))
            .expect_err("an empty list is refused"),
        "allowedTenants",
    );
}

// ---- The module: request checks and routing to stores. ----

struct ModuleFixture {
    served: Served<ConfigModule>,
    _dir: tempfile::TempDir,
}

impl Deref for ModuleFixture {
    type Target = Served<ConfigModule>;

    fn deref(&self) -> &Self::Target {
        &self.served
    }
}

impl ModuleFixture {
    /// A module with a memory store `mem` (the default), a file store
    /// `node` and a memory store `restricted` for tenant `ops` only.
    fn new() -> Self {
        let dir = temp_dir();
        std::fs::write(dir.path().join("node.yaml"), "region: eu\n").expect("write");
        let component = |name: &str, kind: &str, metadata: &[(&str, &str)]| ComponentSpec {
            name: name.to_owned(),
            ..spec(kind, metadata)
        };
        let components = vec![
            component("mem", "configuration.memory", &[]),
            component("node", "configuration.file", &[("path", "node.yaml")]),
            component(
                "restricted",
                "configuration.memory",
                &[("allowedTenants", "ops")],
            ),
        ];
        let served = Served::start(dir.path(), components).expect("the module starts");
        Self { served, _dir: dir }
    }

    fn set(&self, tenant: &str, store: &str, items: Vec<ConfigSetItem>, delete: &[&str]) -> Reply {
        let req = ConfigSetRequest {
            store: store.to_owned(),
            items,
            delete: keys(delete),
        };
        self.call(tenant, Opcode::CONFIG_SET, &req)
    }

    fn get(&self, tenant: &str, store: &str, wanted: &[&str]) -> Reply {
        let req = ConfigGetRequest {
            store: store.to_owned(),
            keys: keys(wanted),
        };
        self.call(tenant, Opcode::CONFIG_GET, &req)
    }
}

fn items_of(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(reply.status, Status::Ok, "{}", message(reply));
    let reply: ConfigGetReply = mecha_abi::decode(&reply.payload).expect("a ConfigGetReply");
    pairs(&reply.items)
}

fn message(reply: &Reply) -> String {
    mecha_abi::decode::<ErrorBody>(&reply.payload)
        .map(|b| b.message)
        .unwrap_or_default()
}

fn assert_error(reply: &Reply, status: Status, mentions: &str) {
    assert_eq!(reply.status, status, "{}", message(reply));
    assert!(
        message(reply).contains(mentions),
        "message {:?} mentions {mentions:?}",
        message(reply)
    );
}

#[test]
fn module_routes_to_the_named_or_default_store() {
    let m = ModuleFixture::new();
    let set = m.set("t", "", vec![set_item("k", "v", &[])], &[]);
    assert_eq!(set.status, Status::Ok, "{}", message(&set));
    assert_eq!(items_of(&m.get("t", "mem", &["k"])), vec![pair("k", "v")]);
    assert_eq!(items_of(&m.get("t", "", &[])), vec![pair("k", "v")]);
    assert_eq!(
        items_of(&m.get("t", "node", &[])),
        vec![pair("region", "eu")]
    );
    assert_eq!(
        items_of(&m.get("someone-else", "node", &[])),
        vec![pair("region", "eu")]
    );
    assert_error(
        &m.get("t", "nope", &[]),
        Status::InvalidArgument,
        "\"nope\"",
    );
}

#[test]
fn module_rejects_bad_requests() {
    let m = ModuleFixture::new();
    assert_error(
        &m.set("t", "node", vec![set_item("k", "v", &[])], &[]),
        Status::InvalidArgument,
        "read-only",
    );
    assert_error(
        &m.get("t", "", &["ok", ""]),
        Status::InvalidArgument,
        "empty",
    );
    assert_error(
        &m.set("t", "", vec![set_item("", "v", &[])], &[]),
        Status::InvalidArgument,
        "empty",
    );
    assert_error(
        &m.set("t", "", vec![set_item("k", "v", &[])], &["k"]),
        Status::InvalidArgument,
        "more than once",
    );
    let garbage = m.handle("t", Opcode::CONFIG_GET, b"\x01");
    assert_eq!(garbage.status, Status::InvalidArgument);
    let other = m.handle("t", Opcode::STATE_GET, b"");
    assert_eq!(other.status, Status::UnknownOpcode);
}

#[test]
fn module_enforces_allowed_tenants() {
    let m = ModuleFixture::new();
    assert_error(
        &m.get("t", "restricted", &[]),
        Status::PermissionDenied,
        "\"t\"",
    );
    assert_error(
        &m.set("t", "restricted", vec![set_item("k", "v", &[])], &[]),
        Status::PermissionDenied,
        "restricted",
    );
    let sub = ConfigSubscribeRequest {
        store: "restricted".to_owned(),
        keys: Vec::new(),
    };
    assert_eq!(
        m.call("t", Opcode::CONFIG_SUBSCRIBE, &sub).status,
        Status::PermissionDenied
    );
    assert_eq!(
        m.set("ops", "restricted", vec![set_item("k", "v", &[])], &[])
            .status,
        Status::Ok
    );
    assert_eq!(
        items_of(&m.get("ops", "restricted", &[])),
        vec![pair("k", "v")]
    );
}

#[test]
fn module_subscribe_opens_a_stream_with_the_snapshot() {
    let m = ModuleFixture::new();
    let req = ConfigSubscribeRequest {
        store: "node".to_owned(),
        keys: keys(&["region", "missing"]),
    };
    let reply = m.call("t", Opcode::CONFIG_SUBSCRIBE, &req);
    assert!(reply.opens_stream, "the answer opens a stream");
    assert_eq!(items_of(&reply), vec![pair("region", "eu")]);
    let bad = ConfigSubscribeRequest {
        store: "nope".to_owned(),
        keys: Vec::new(),
    };
    let reply = m.call("t", Opcode::CONFIG_SUBSCRIBE, &bad);
    assert!(!reply.opens_stream, "an error opens no stream");
    assert_eq!(reply.status, Status::InvalidArgument);
}
