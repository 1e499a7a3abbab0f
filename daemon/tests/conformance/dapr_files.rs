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
