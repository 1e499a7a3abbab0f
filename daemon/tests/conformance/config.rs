//! Configuration store conformance: get (all, some, missing), watches that
//! see changes written through the backend itself (or CONFIG_SET for the
//! memory store), watches of several keys, cancel, item metadata or
//! UNSUPPORTED, and for server-backed drivers an outage of the server that
//! watches survive by resubscribing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mecha_abi::msg::{ConfigItem, ConfigSetItem};
use mecha_abi::Status;
use mecha_client::blocking::Client;
use mecha_client::{BlockingConfigWatch, RetryPolicy};

use crate::common::Daemon;
use crate::servers;
use crate::support::{self, component, unavailable_soon};

/// The component name every configuration conformance test uses.
const STORE: &str = "conf";

/// How long a test waits for a push before failing.
const PATIENCE: Duration = Duration::from_secs(20);

/// How a test writes items: as another application would write the backend.
#[derive(Clone, Debug)]
pub enum Writer {
    /// CONFIG_SET through mecha (the memory store has no other writer).
    Mecha,
    /// Directly to Redis, in Dapr's `value||version` form, under a prefix.
    Redis(SocketAddr, String),
    /// Directly to etcd, under a prefix.
    Etcd(SocketAddr, String),
    /// By replacing the watched YAML file (one `key: "value"` line per
    /// item), renaming the new file over the old one as careful tools do.
    File(std::path::PathBuf),
}

/// What a driver claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// CONFIG_SET writes the store (otherwise it is read-only through the
    /// ABI and CONFIG_SET is INVALID_ARGUMENT, SPEC §7.6.3).
    pub writable: bool,
    /// Items carry metadata written with CONFIG_SET.
    pub metadata: bool,
}

/// A configuration driver under test.
pub struct Driver {
    pub name: &'static str,
    pub component: String,
    pub writer: Writer,
    pub features: Features,
    /// Keeps a file store's directory alive as long as the driver.
    pub _dir: Option<tempfile::TempDir>,
}

impl Driver {
    fn start(&self) -> (Daemon, Client) {
        support::start(&self.component)
    }

    /// Writes `key` (or deletes it, for `None`) through the backend.
    fn write(&self, c: &Client, key: &str, value: Option<&str>) {
        write(&self.writer, c, key, value);
    }
}

fn write(writer: &Writer, c: &Client, key: &str, value: Option<&str>) {
    static VERSION: AtomicU64 = AtomicU64::new(1);
    match (writer, value) {
        (Writer::Mecha, Some(v)) => {
            c.set_config_value(STORE, key, v).unwrap();
        }
        (Writer::Mecha, None) => c.delete_config(STORE, vec![key.to_owned()]).unwrap(),
        (Writer::Redis(addr, prefix), value) => {
            let client = ::redis::Client::open(format!("redis://{addr}/")).expect("redis url");
            let mut con = client.get_connection().expect("connect to redis");
            let full = format!("{prefix}{key}");
            match value {
                Some(v) => {
                    let n = VERSION.fetch_add(1, Ordering::Relaxed);
                    ::redis::cmd("SET")
                        .arg(full)
                        .arg(format!("{v}||{n}"))
                        .query::<()>(&mut con)
                        .expect("SET");
                }
                None => ::redis::cmd("DEL")
                    .arg(full)
                    .query::<()>(&mut con)
                    .expect("DEL"),
            }
        }
        (Writer::File(path), value) => {
            let old = std::fs::read_to_string(path).expect("read the config file");
            let prefix = format!("{key}: ");
            let mut lines: Vec<String> = old
                .lines()
                .filter(|line| !line.starts_with(&prefix))
                .map(str::to_owned)
                .collect();
            if let Some(v) = value {
                lines.push(format!("{key}: {v:?}"));
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, lines.join("\n") + "\n").expect("write the new file");
            std::fs::rename(&tmp, path).expect("rename it over the old one");
            // The store re-reads the file once it has been quiet for a
            // moment; until then reads still answer the old items, unlike
            // the other writers, whose writes are visible at once.
            crate::common::wait_until(PATIENCE, "the file store to re-read", || {
                let got = c.get_config(STORE, vec![key.to_owned()]).unwrap();
                got.first().map(|i| i.value.as_str()) == value
            });
        }
        (Writer::Etcd(addr, prefix), value) => {
            let key = servers::base64(format!("{prefix}{key}").as_bytes());
            match value {
                Some(v) => servers::etcd_post(
                    *addr,
                    "/v3/kv/put",
                    &format!(
                        "{{\"key\":\"{key}\",\"value\":\"{}\"}}",
                        servers::base64(v.as_bytes())
                    ),
                ),
                None => servers::etcd_post(
                    *addr,
                    "/v3/kv/deleterange",
                    &format!("{{\"key\":\"{key}\"}}"),
                ),
            };
        }
    }
}

pub mod drivers {
    use super::*;

    pub fn memory() -> Option<Driver> {
        Some(Driver {
            name: "configuration.memory",
            component: component(STORE, "configuration.memory", &[]),
            writer: Writer::Mecha,
            features: Features {
                writable: true,
                metadata: true,
            },
            _dir: None,
        })
    }

    pub fn file() -> Option<Driver> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("items.yaml");
        std::fs::write(&path, "# conformance items\n").expect("create the file");
        let path_text = path.to_str().expect("temporary paths are UTF-8").to_owned();
        Some(Driver {
            name: "configuration.file",
            component: component(STORE, "configuration.file", &[("path", path_text)]),
            writer: Writer::File(path),
            features: Features {
                writable: false,
                metadata: false,
            },
            _dir: Some(dir),
        })
    }

    pub fn redis() -> Option<Driver> {
        let s = servers::redis()?;
        let prefix = format!("{}:", servers::unique("conf"));
        Some(Driver {
            name: "configuration.redis",
            component: component(
                STORE,
                "configuration.redis",
                &[("redisHost", s.host_port()), ("keyPrefix", prefix.clone())],
            ),
            writer: Writer::Redis(s.addr, prefix),
            features: Features {
                writable: true,
                metadata: false,
            },
            _dir: None,
        })
    }

    pub fn etcd() -> Option<Driver> {
        let s = servers::etcd()?;
        let prefix = format!("{}/", servers::unique("conf"));
        Some(Driver {
            name: "configuration.etcd",
            component: component(
                STORE,
                "configuration.etcd",
                &[
                    ("endpoints", s.host_port()),
                    ("keyPrefixPath", prefix.clone()),
                ],
            ),
            writer: Writer::Etcd(s.addr, prefix),
            features: Features {
                writable: true,
                metadata: false,
            },
            _dir: None,
        })
    }
}

conformance! {
    drivers: [memory, file, redis, etcd],
    tests: [
        get_all_some_and_missing,
        watch_sees_a_backend_write_and_delete,
        watch_of_several_keys,
        cancel_ends_the_watch,
        config_set_round_trips_or_metadata_is_unsupported,
    ]
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

fn values(items: &[ConfigItem]) -> Vec<(&str, &str)> {
    items
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect()
}

/// Reads the watch until the caller knows `key` as `value` (`None`: absent).
fn wait_for(watch: &mut BlockingConfigWatch<'_>, key: &str, value: Option<&str>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = watch
            .current()
            .find(|item| item.key == key)
            .map(|item| item.value.clone());
        if now.as_deref() == value {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {key}={value:?}");
        match watch.next_timeout(left) {
            Some(Ok(_)) => {}
            Some(Err(e)) if e.status() == Some(Status::DeadlineExceeded) => {}
            Some(Err(mecha_client::Error::Timeout(_))) => {}
            Some(Err(e)) => panic!("the watch failed: {e}"),
            None => panic!("the watch ended"),
        }
    }
}

fn get_all_some_and_missing(driver: &Driver) {
    let (_d, c) = driver.start();
    driver.write(&c, "a", Some("1"));
    driver.write(&c, "b", Some("2"));
    let all = c.get_config(STORE, Vec::new()).unwrap();
    assert_eq!(
        values(&all),
        vec![("a", "1"), ("b", "2")],
        "{}",
        driver.name
    );
    assert!(all.iter().all(|i| !i.version.is_empty()), "{all:?}");
    let some = c
        .get_config(STORE, keys(&["b", "missing", "a", "b"]))
        .unwrap();
    assert_eq!(
        values(&some),
        vec![("b", "2"), ("a", "1")],
        "{}: request order, each key once, missing keys absent",
        driver.name
    );
    assert!(c.get_config(STORE, keys(&["missing"])).unwrap().is_empty());
}

fn watch_sees_a_backend_write_and_delete(driver: &Driver) {
    let (_d, c) = driver.start();
    driver.write(&c, "k", Some("before"));
    let watcher = Client::connect(&_d.socket).expect("connect");
    let mut watch = watcher.watch_config(STORE, keys(&["k"])).expect("watch");
    assert_eq!(
        values(watch.snapshot()),
        vec![("k", "before")],
        "{}",
        driver.name
    );
    driver.write(&c, "k", Some("after"));
    wait_for(&mut watch, "k", Some("after"));
    driver.write(&c, "k", None);
    wait_for(&mut watch, "k", None);
}

fn watch_of_several_keys(driver: &Driver) {
    let (d, c) = driver.start();
    let watcher = Client::connect(&d.socket).expect("connect");
    let mut watch = watcher
        .watch_config(STORE, keys(&["x", "y"]))
        .expect("watch");
    assert!(watch.snapshot().is_empty());
    driver.write(&c, "unwatched", Some("0"));
    driver.write(&c, "y", Some("1"));
    driver.write(&c, "x", Some("2"));
    wait_for(&mut watch, "y", Some("1"));
    wait_for(&mut watch, "x", Some("2"));
    assert!(
        watch.current().all(|i| i.key != "unwatched"),
        "{}: only watched keys are pushed",
        driver.name
    );
    // A watch of every key sees keys created later.
    let mut all = watcher.watch_config(STORE, Vec::new()).expect("watch all");
    driver.write(&c, "later", Some("3"));
    wait_for(&mut all, "later", Some("3"));
}

fn cancel_ends_the_watch(driver: &Driver) {
    let (d, _c) = driver.start();
    let watcher = Client::connect(&d.socket).expect("connect");
    let mut watch = watcher.watch_config(STORE, Vec::new()).expect("watch");
    watch.cancel().expect("cancel");
    assert!(
        watch.next_timeout(PATIENCE).is_none(),
        "{}: a cancelled watch ends",
        driver.name
    );
}

fn config_set_round_trips_or_metadata_is_unsupported(driver: &Driver) {
    let (_d, c) = driver.start();
    let first = c.set_config_value(STORE, "set", "v1");
    if !driver.features.writable {
        let e = first.unwrap_err();
        assert_eq!(
            e.status(),
            Some(Status::InvalidArgument),
            "{}: {e}",
            driver.name
        );
        assert!(e.to_string().contains("read-only"), "{e}");
        return;
    }
    let plain = first.unwrap();
    let got = c.get_config(STORE, keys(&["set"])).unwrap();
    assert_eq!(values(&got), vec![("set", "v1")], "{}", driver.name);
    assert_eq!(got[0].version, plain, "the version CONFIG_SET answered");
    let again = c.set_config_value(STORE, "set", "v2").unwrap();
    assert_ne!(again, plain, "{}: a change gets a new version", driver.name);
    let item = ConfigSetItem {
        key: "meta".into(),
        value: "m".into(),
        metadata: vec![("owner".into(), "ops".into())],
    };
    let result = c.set_config(STORE, vec![item], Vec::new());
    if driver.features.metadata {
        result.unwrap();
        let got = c.get_config(STORE, keys(&["meta"])).unwrap();
        assert_eq!(
            got[0].metadata,
            vec![("owner".to_owned(), "ops".to_owned())]
        );
    } else {
        let e = result.unwrap_err();
        assert_eq!(
            e.status(),
            Some(Status::Unsupported),
            "{}: {e}",
            driver.name
        );
        let text = e.to_string();
        assert!(
            text.contains(STORE) && text.contains(driver.name) && text.contains("metadata"),
            "names the component, its type and the feature: {text}"
        );
        assert!(c.get_config(STORE, keys(&["meta"])).unwrap().is_empty());
    }
    c.delete_config(STORE, keys(&["set"])).unwrap();
    assert!(c.get_config(STORE, keys(&["set"])).unwrap().is_empty());
}

/// Server-backed drivers: the module starts while the server is down, reads
/// answer UNAVAILABLE naming the component while it is down, and reads and a
/// watch opened before the outage work again once it returns — the watch
/// stream is ended with UNAVAILABLE by the module and the client
/// resubscribes by itself — without restarting mecha.
mod outage {
    use super::*;

    fn assert_unavailable(c: &Client) {
        unavailable_soon(STORE, || c.get_config(STORE, Vec::new()));
    }

    fn run(
        kind: &str,
        writer: impl Fn(SocketAddr) -> Writer,
        mut server: servers::Restartable,
        field: &str,
    ) {
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        let writer = writer(addr);
        let metadata = [(field, addr.to_string())];
        let d = Daemon::start_with(Some(&component(STORE, kind, &metadata)));
        let mut c = d.client();
        c.set_retries(RetryPolicy::disabled());
        assert_unavailable(&c);
        server.start();
        crate::common::wait_until(PATIENCE, "the server to be used", || {
            c.get_config(STORE, Vec::new()).is_ok()
        });
        write(&writer, &c, "k", Some("1"));
        let watcher = Client::connect(&d.socket).expect("connect");
        let mut watch = watcher.watch_config(STORE, keys(&["k"])).expect("watch");
        wait_for(&mut watch, "k", Some("1"));
        server.stop();
        assert_unavailable(&c);
        server.start();
        crate::common::wait_until(PATIENCE, "the driver to reconnect", || {
            c.get_config(STORE, Vec::new()).is_ok()
        });
        write(&writer, &c, "k", Some("2"));
        wait_for(&mut watch, "k", Some("2"));
    }

    #[test]
    fn redis_outage_is_unavailable_then_recovers() {
        let Some(server) = servers::Restartable::redis() else {
            return;
        };
        let writer = |addr| Writer::Redis(addr, String::new());
        run("configuration.redis", writer, server, "redisHost");
    }

    #[test]
    fn etcd_outage_is_unavailable_then_recovers() {
        let Some(server) = servers::Restartable::etcd() else {
            return;
        };
        let writer = |addr| Writer::Etcd(addr, String::new());
        run("configuration.etcd", writer, server, "endpoints");
    }
}
