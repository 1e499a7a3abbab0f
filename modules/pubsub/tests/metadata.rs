//! Metadata of the networked pubsub drivers: `pubsub.redis` reads the Redis
//! fields every Redis driver shares through the SDK's shared layer, so they
//! are refused and honoured exactly as for `state.redis` and `lock.redis`.

use std::net::TcpListener;
use std::time::Duration;

use mecha_abi::msg::PublishRequest;
use mecha_mod_pubsub::drivers::redis::open;
use mecha_mod_pubsub::error::PubsubError;
use mecha_module::testing;
use mecha_module::DriverError;

fn config(e: &PubsubError) -> Option<(&str, &str)> {
    match e {
        PubsubError::Driver(DriverError::Config { component, reason }) => Some((component, reason)),
        _ => None,
    }
}

/// The fields every Redis driver shares are checked by the shared
/// layer, so `pubsub.redis` refuses them with the very message
/// `state.redis` and `lock.redis` give.
#[test]
fn shared_redis_fields_are_refused_as_in_every_redis_driver() {
    for (metadata, mentions) in [
        (
            &[("redisHost", "h:1"), ("redisType", "cluster")][..],
            "\"redisType\" is \"cluster\"; only \"node\" is supported",
        ),
        (
            &[("redisHost", "h:1"), ("dialTimeout", "soon")][..],
            "\"dialTimeout\" must be a duration",
        ),
        (&[("redisHost", "localhost")][..], "host:port"),
    ] {
        let spec = testing::spec("bus", "pubsub.redis", metadata);
        let opened = testing::open_in_runtime(|| open(&spec).map(|_| ()));
        testing::assert_refused(&spec, opened, config, mentions);
    }
    let spec = testing::spec(
        "bus",
        "pubsub.redis",
        &[
            ("redisHost", "127.0.0.1:1"),
            ("redisType", "node"),
            ("dialTimeout", "1s"),
            ("readTimeout", "2s"),
            ("redisMaxRetries", "1"),
        ],
    );
    testing::open_in_runtime(|| open(&spec).map(|_| ())).expect("opens lazily");
}

/// How long a publish to a server that accepts connections but never
/// answers takes to fail, with `dialTimeout` set to `dial`; `None` if it
/// has not failed after `patience`.
fn publish_to_a_silent_server(dial: &str, patience: Duration) -> Option<Duration> {
    // The kernel completes connections to a listening socket that never
    // accepts, so the connection is made and its setup (AUTH, sent
    // because of the password) waits for an answer that never comes.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a listening socket");
    let host = silent.local_addr().expect("its address").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let spec = testing::spec(
        "bus",
        "pubsub.redis",
        &[
            ("redisHost", &host),
            ("redisPassword", "secret"),
            ("dialTimeout", dial),
            ("readTimeout", "30s"),
            ("redisMaxRetries", "0"),
        ],
    );
    let store = {
        let _guard = rt.enter();
        open(&spec).expect("opens")
    };
    let req = PublishRequest {
        store: String::new(),
        topic: "t".into(),
        data: b"x".to_vec(),
        content_type: String::new(),
        metadata: Vec::new(),
        raw: false,
    };
    let started = std::time::Instant::now();
    let outcome =
        rt.block_on(async { tokio::time::timeout(patience, store.publish("t", &req)).await });
    match outcome {
        Ok(Err(PubsubError::Driver(DriverError::Unavailable(message)))) => {
            assert!(
                message.contains("\"bus\"") && message.contains(&host),
                "{message}"
            );
            Some(started.elapsed())
        }
        Ok(other) => panic!("publishing to a silent server answered {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn dial_timeout_bounds_connecting() {
    // A short dial timeout fails the publish well before the shared
    // layer's 2 s default would.
    let failed =
        publish_to_a_silent_server("200ms", Duration::from_secs(10)).expect("the publish fails");
    assert!(failed < Duration::from_millis(1500), "took {failed:?}");
    // A long one keeps it waiting for the connection.
    assert_eq!(
        publish_to_a_silent_server("5s", Duration::from_millis(1000)),
        None,
        "a 5 s dial timeout is still waiting after 1 s"
    );
}
