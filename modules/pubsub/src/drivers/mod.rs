//! The pubsub drivers, one file per component type, and the factory that
//! opens a store from a component spec (`spec.type` → driver).
//!
//! Two kinds of driver: embedded logs (`pubsub.memory`, `pubsub.redb`)
//! only *store* — a per-(tenant, topic) log of messages and per-group
//! progress, through [`PubsubLog`](crate::broker::log::PubsubLog) — under
//! the module's own [`Broker`], which does all delivery; servers that
//! deliver messages themselves (`pubsub.redis`, `pubsub.jetstream`)
//! implement [`Backend`](crate::server_delivery::backend::Backend) and are
//! served by a [`ServerStore`](crate::server_delivery::ServerStore).

use std::path::Path;

use mecha_abi::msg::ComponentSpec;
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;

use crate::broker::settings::Settings;
use crate::broker::Broker;
use crate::error::PubsubError;
use crate::store::Store;

pub mod jetstream;
pub mod memory;
pub mod redb;
pub mod redis;

/// The default `maxMessages` of `pubsub.memory`: its log lives in the
/// module's memory, so the bound is modest.
pub const MEMORY_MAX_MESSAGES: u64 = 10_000;

/// The default `maxMessages` of `pubsub.redb`, whose log lives on disk.
pub const REDB_MAX_MESSAGES: u64 = 1_000_000;

/// Opens the store named by `spec.kind`: an embedded driver with a
/// [`Broker`] on top, or a server that delivers messages itself.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Store, PubsubError> {
    match spec.kind.as_str() {
        "pubsub.redis" => Ok(Store::Redis(redis::open(spec)?)),
        // Dapr's type is `pubsub.jetstream`; `pubsub.nats` names the same.
        "pubsub.jetstream" | "pubsub.nats" => Ok(Store::Jetstream(jetstream::open(spec)?)),
        _ => open_embedded(spec, data_dir).map(Store::Embedded),
    }
}

/// Opens an embedded store: its log driver with a [`Broker`] on top
/// configured from the metadata both share.
pub fn open_embedded(spec: &ComponentSpec, data_dir: &Path) -> Result<Broker, PubsubError> {
    match spec.kind.as_str() {
        "pubsub.memory" => {
            let metadata = Metadata::parse(spec, &Settings::KNOWN_FIELDS)?;
            let settings = Settings::parse(&metadata, MEMORY_MAX_MESSAGES)?;
            Ok(Broker::new(settings, Box::new(memory::MemoryLog::new())))
        }
        "pubsub.redb" => {
            let known = [&Settings::KNOWN_FIELDS[..], &redb::KNOWN_FIELDS].concat();
            let metadata = Metadata::parse(spec, &known)?;
            let settings = Settings::parse(&metadata, REDB_MAX_MESSAGES)?;
            let path =
                mecha_module::embedded::redb_file(&spec.name, metadata.str("path")?, data_dir)
                    .map_err(|reason| metadata.error(reason))?;
            Ok(Broker::new(settings, Box::new(redb::RedbLog::open(path)?)))
        }
        other => Err(PubsubError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown pubsub store type {other:?} (known: pubsub.memory, pubsub.redb, \
                 pubsub.redis, pubsub.jetstream, pubsub.nats)"
            ),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
        ComponentSpec {
            name: "bus".into(),
            kind: kind.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn error(kind: &str, metadata: &[(&str, &str)]) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _guard = rt.enter();
        match open(&spec(kind, metadata), Path::new("/nonexistent")) {
            Ok(_) => panic!("{kind} {metadata:?} opens"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn server_stores_check_their_metadata_at_start() {
        for (kind, metadata, field) in [
            ("pubsub.redis", &[][..], "redisHost"),
            ("pubsub.redis", &[("redisHost", "h:x")][..], "redisHost"),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("processingTimeout", "soon")][..],
                "processingTimeout",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("queueDepth", "0")][..],
                "queueDepth",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("enableTLS", "true")][..],
                "enableTLS",
            ),
            (
                "pubsub.redis",
                &[("redisHost", "h:1"), ("maxDeliveries", "3")][..],
                "maxDeliveries",
            ),
            ("pubsub.jetstream", &[][..], "natsURL"),
            (
                "pubsub.nats",
                &[("natsURL", "nats://h:1"), ("ackWait", "0")][..],
                "ackWait",
            ),
            (
                "pubsub.jetstream",
                &[("natsURL", "nats://h:1"), ("deliverPolicy", "sometimes")][..],
                "deliverPolicy",
            ),
            (
                "pubsub.jetstream",
                &[("natsURL", "nats://h:1"), ("streamName", "a.b")][..],
                "streamName",
            ),
        ] {
            let message = error(kind, metadata);
            assert!(
                message.contains("\"bus\"") && message.contains(field),
                "{kind} {metadata:?}: {message}"
            );
        }
    }

    #[test]
    fn server_stores_start_while_their_server_is_down() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _guard = rt.enter();
        // Port 1 on loopback has no server; opening must not try to connect.
        for (kind, field, value) in [
            ("pubsub.redis", "redisHost", "127.0.0.1:1"),
            ("pubsub.jetstream", "natsURL", "nats://127.0.0.1:1"),
        ] {
            assert!(open(&spec(kind, &[(field, value)]), Path::new("/nonexistent")).is_ok());
        }
    }
}
