//! Component files written the way Dapr's documentation and quickstarts show
//! them load unchanged: Dapr's own type names (`state.in-memory`), fields Dapr
//! defines that mecha does not implement (`actorStateStore`) with one warning
//! each, and `version`. A misspelt field still stops the start with the
//! closest name suggested, and a Dapr field whose loss would reach another
//! server than the file asks (`failover: "true"`) is refused rather than
//! ignored.

use std::time::Duration;

use mecha_client::{PublishOptions, SetOptions};

use crate::common::{start_fails, wait_until, Daemon};
use crate::servers;

/// Dapr's quickstart components, as its documentation writes them, on the
/// test's Redis.
fn quickstart(redis: &str) -> String {
    format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: {redis}
  - name: redisPassword
    value: ""
  - name: actorStateStore
    value: "true"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: {redis}
  - name: redisPassword
    value: ""
  - name: redeliverInterval
    value: "10s"
  - name: streamTTL
    value: "1h"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: cache
spec:
  type: state.in-memory
  version: v1
  metadata: []
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: events
spec:
  type: pubsub.in-memory
  version: v1
  metadata: []
"#
    )
}

#[test]
fn dapr_documentation_files_load_as_written() {
    let Some(redis) = servers::redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("mechad.log");
    // mechad's and its modules' stderr, to read the warnings from.
    let wrapper = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "exec \"$@\" 2>>\"$0\"".to_owned(),
        log.display().to_string(),
    ];
    let d = Daemon::start_wrapped(
        dir,
        Some(&quickstart(&redis.host_port())),
        Vec::new(),
        wrapper,
    );
    let client = d.client();
    for store in ["statestore", "cache"] {
        client
            .set(store, "order-1", b"paid".to_vec(), SetOptions::default())
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        let got = client.get(store, "order-1").expect("get").expect("found");
        assert_eq!(got.value, b"paid", "{store}");
    }
    for store in ["pubsub", "events"] {
        client
            .publish(store, "orders", b"{}".to_vec(), PublishOptions::default())
            .unwrap_or_else(|e| panic!("{store}: {e}"));
    }
    // One warning per inert field, naming it and saying it has no effect.
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(10), "the warnings", || {
        text().contains("\"actorStateStore\"") && text().contains("\"streamTTL\"")
    });
    let log = text();
    for field in ["actorStateStore", "streamTTL"] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{field:?}")))
            .collect();
        assert_eq!(lines.len(), 1, "one warning for {field}: {lines:?}");
        assert!(lines[0].contains("has no effect"), "{}", lines[0]);
    }
}

#[test]
fn a_misspelt_field_names_the_closest_one() {
    let file = quickstart("127.0.0.1:1").replacen("redisPassword", "redisPasword", 1);
    let err = start_fails(&file);
    assert!(
        err.contains("unknown metadata field \"redisPasword\"")
            && err.contains("did you mean \"redisPassword\""),
        "{err}"
    );
}

#[test]
fn a_dapr_field_that_would_weaken_the_connection_is_refused() {
    let file = quickstart("127.0.0.1:1").replacen(
        "  - name: actorStateStore\n",
        "  - name: failover\n    value: \"true\"\n  - name: actorStateStore\n",
        1,
    );
    let err = start_fails(&file);
    assert!(
        err.contains("\"failover\"") && err.contains("does not support"),
        "{err}"
    );
}

/// More of Dapr's documented component files: a cron and an HTTP binding, a
/// local file secret store, a Redis lock store and a Redis configuration
/// store, written as Dapr's pages show them (with `route` and `direction`,
/// which mecha does not use). Every module starts and serves; a secret store
/// without `allowedTenants` keeps mecha's deny-by-default rather than Dapr's
/// open access.
#[test]
fn more_dapr_documentation_files_load_as_written() {
    let Some(redis) = servers::redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"db": {"password": "s3cret"}}"#).expect("secrets file");
    let redis = redis.host_port();
    let config = format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: scheduled
spec:
  type: bindings.cron
  version: v1
  metadata:
  - name: schedule
    value: "@every 15s"
  - name: direction
    value: "input"
  - name: route
    value: /checkout
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: orders-api
spec:
  type: bindings.http
  version: v1
  metadata:
  - name: url
    value: http://127.0.0.1:9/orders
  - name: direction
    value: "output"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: localsecretstore
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: {secrets}
  - name: nestedSeparator
    value: ":"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: lockstore
spec:
  type: lock.redis
  version: v1
  metadata:
  - name: redisHost
    value: {redis}
  - name: redisPassword
    value: ""
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: configstore
spec:
  type: configuration.redis
  version: v1
  metadata:
  - name: redisHost
    value: {redis}
  - name: redisPassword
    value: ""
"#,
        secrets = secrets.display()
    );
    let d = Daemon::start_in(dir, Some(&config), Vec::new());
    let client = d.client();
    let status = client.status().expect("status");
    for module in ["bindings", "secrets", "lock", "config"] {
        let m = status
            .modules
            .iter()
            .find(|m| m.name == module)
            .unwrap_or_else(|| panic!("{module} in {status:?}"));
        assert_eq!(m.state, "running", "{module}: {m:?}");
    }
    let token = client
        .try_lock(
            "lockstore",
            "order-7",
            "worker-1",
            Duration::from_secs(5),
            None,
        )
        .expect("lock.redis serves");
    assert!(token.is_some(), "the lock is granted");
    let refused = client
        .get_secret("localsecretstore", "db:password")
        .expect_err("deny by default without allowedTenants");
    assert!(refused.to_string().contains("allowedTenants"), "{refused}");
}
