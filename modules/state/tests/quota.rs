//! The per-tenant quota of the embedded state drivers (`maxKeysPerTenant`,
//! `maxBytesPerTenant`), run against each of them: growth past a limit is
//! refused and changes nothing, other tenants are unaffected, deletes,
//! overwrites and expiry give room back, and the redb totals survive a
//! reopen.

use std::time::Duration;

use mecha_abi::msg::{ComponentSpec, DeleteItem, SetItem, TxOp};
use mecha_mod_state::drivers::{self, OpOutcome, StateStore, StoreError};
use mecha_module::DriverError;
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// The drivers with a quota.
const KINDS: [&str; 2] = ["state.memory", "state.redb"];

/// A store of `kind` allowing 3 keys and 100 bytes per tenant.
struct Small {
    rt: Runtime,
    spec: ComponentSpec,
    dir: TempDir,
    store: Option<Box<dyn StateStore>>,
}

impl Small {
    fn new(kind: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let spec = ComponentSpec {
            name: "small".to_owned(),
            kind: kind.to_owned(),
            metadata: vec![
                ("maxKeysPerTenant".to_owned(), "3".to_owned()),
                ("maxBytesPerTenant".to_owned(), "100".to_owned()),
            ],
        };
        let dir = TempDir::new().expect("create a temporary directory");
        let store = drivers::open(&spec, dir.path()).expect("open the store");
        Self {
            rt,
            spec,
            dir,
            store: Some(store),
        }
    }

    fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(drivers::open(&self.spec, self.dir.path()).expect("reopen the store"));
    }

    fn run(&self, tenant: &str, ops: Vec<TxOp>) -> Result<Vec<OpOutcome>, StoreError> {
        let store = self.store.as_deref().expect("the store is open");
        self.rt.block_on(store.transact(tenant, ops))
    }

    fn present(&self, tenant: &str, key: &str) -> bool {
        let store = self.store.as_deref().expect("the store is open");
        let found = self
            .rt
            .block_on(store.get(tenant, vec![key.to_owned()]))
            .expect("get");
        found.into_iter().next().flatten().is_some()
    }

    fn sweep(&self) -> usize {
        let store = self.store.as_deref().expect("the store is open");
        self.rt.block_on(store.sweep()).expect("sweep")
    }
}

fn set(key: &str, len: usize) -> TxOp {
    set_ttl(key, len, None)
}

fn set_ttl(key: &str, len: usize, ttl_ms: Option<u64>) -> TxOp {
    TxOp::Set(SetItem {
        key: key.to_owned(),
        value: vec![b'x'; len],
        etag: None,
        ttl_ms,
    })
}

fn delete(key: &str) -> TxOp {
    TxOp::Delete(DeleteItem {
        key: key.to_owned(),
        etag: None,
    })
}

fn refused_on(result: Result<Vec<OpOutcome>, StoreError>, field: &str) {
    match result {
        Err(StoreError::QuotaExceeded {
            component,
            field: f,
            ..
        }) => {
            assert_eq!(component, "small");
            assert_eq!(f, field);
        }
        other => panic!("expected a refusal on {field}, got {other:?}"),
    }
}

#[test]
fn the_key_limit_refuses_a_new_key_but_not_an_overwrite() {
    for kind in KINDS {
        let s = Small::new(kind);
        for key in ["a", "b", "c"] {
            s.run("t", vec![set(key, 1)]).expect("within the quota");
        }
        refused_on(s.run("t", vec![set("d", 1)]), "maxKeysPerTenant");
        assert!(!s.present("t", "d"), "{kind}: a refused set stores nothing");
        s.run("t", vec![set("a", 2)])
            .expect("an overwrite adds no key");
        s.run("other", vec![set("d", 1)])
            .expect("another tenant has room");
        s.run("t", vec![delete("a"), set("d", 1)])
            .expect("a transaction that frees a key first may add one");
    }
}

#[test]
fn the_byte_limit_counts_keys_and_values_and_a_refused_transaction_changes_nothing() {
    for kind in KINDS {
        let s = Small::new(kind);
        // "a" + 89 bytes = 90 of 100.
        s.run("t", vec![set("a", 89)]).expect("within the quota");
        refused_on(s.run("t", vec![set("b", 10)]), "maxBytesPerTenant");
        // The first op fits alone; the second takes the total over, so
        // neither is applied.
        refused_on(
            s.run("t", vec![set("c", 1), set("a", 99)]),
            "maxBytesPerTenant",
        );
        assert!(
            !s.present("t", "c"),
            "{kind}: the transaction was all or nothing"
        );
        // Shrinking "a" makes room.
        s.run("t", vec![set("a", 9)]).expect("a smaller overwrite");
        s.run("t", vec![set("b", 79)])
            .expect("room made by shrinking");
    }
}

#[test]
fn expired_keys_count_until_swept_and_then_give_their_room_back() {
    for kind in KINDS {
        let s = Small::new(kind);
        s.run(
            "t",
            vec![set_ttl("a", 1, Some(1)), set("b", 1), set("c", 1)],
        )
        .expect("within the quota");
        std::thread::sleep(Duration::from_millis(5));
        refused_on(s.run("t", vec![set("d", 1)]), "maxKeysPerTenant");
        assert_eq!(s.sweep(), 1, "{kind}");
        s.run("t", vec![set("d", 1)])
            .expect("room made by the sweep");
    }
}

#[test]
fn redb_totals_survive_a_reopen() {
    let mut s = Small::new("state.redb");
    s.run("t", vec![set("a", 1), set("b", 1), set("c", 1)])
        .expect("within the quota");
    s.reopen();
    refused_on(s.run("t", vec![set("d", 1)]), "maxKeysPerTenant");
    s.run("t", vec![delete("c")]).expect("delete");
    s.reopen();
    s.run("t", vec![set("d", 1)])
        .expect("room made before the reopen");
}

#[test]
fn a_quota_field_out_of_range_is_refused() {
    for kind in KINDS {
        let spec = ComponentSpec {
            name: "bad".to_owned(),
            kind: kind.to_owned(),
            metadata: vec![("maxKeysPerTenant".to_owned(), "0".to_owned())],
        };
        let dir = TempDir::new().expect("create a temporary directory");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let _guard = rt.enter();
        match drivers::open(&spec, dir.path()) {
            Err(StoreError::Driver(DriverError::Config { component, reason })) => {
                assert_eq!(component, "bad");
                assert!(reason.contains("maxKeysPerTenant"), "{reason}");
            }
            Err(other) => panic!("{kind}: expected a configuration error, got {other}"),
            Ok(_) => panic!("{kind}: a zero quota was accepted"),
        }
    }
}
