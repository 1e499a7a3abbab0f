//! Hostile tenants and pub/sub: what one tenant can learn of another's
//! publishing from the answers to its own publishes. Connecting as a second
//! uid (`nobody`) needs root, so these tests must run as root.

mod common;

use common::{open_to_nobody, require_root, Daemon, NOBODY};

/// One in-memory pub/sub store shared by every tenant of the node.
const CONFIG: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: events}\n\
spec: {type: pubsub.memory, version: v1, metadata: []}\n";

/// How many messages the other tenant publishes between two of the
/// watcher's publishes.
const BURST: u64 = 300;

/// Publishes one message to `topic`; answers its id and offset.
fn publish(c: &mecha_client::blocking::Client, topic: &str) -> (String, u64) {
    let reply = c
        .publish(
            "events",
            topic,
            b"x".to_vec(),
            mecha_client::Client::publish_options(),
        )
        .expect("publish succeeds");
    (reply.id, reply.offset)
}

/// The runs of hexadecimal digits in an id, as numbers: whatever counter an
/// id might carry is in one of them.
fn numbers(id: &str) -> Vec<u128> {
    id.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|run| !run.is_empty())
        .map(|run| {
            assert!(run.len() <= 32, "{id:?} has a run of {} digits", run.len());
            u128::from_str_radix(run, 16).expect("hexadecimal digits")
        })
        .collect()
}

/// How each number of `to` differs from the same number of `from`: `None`
/// when it did not change, else whether the change is small (below 2^32,
/// as a counter's would be between two ids).
fn moves(from: &str, to: &str) -> Vec<Option<bool>> {
    let (from, to) = (numbers(from), numbers(to));
    assert_eq!(from.len(), to.len(), "ids of one shape");
    from.iter()
        .zip(&to)
        .map(|(a, b)| (a != b).then(|| a.abs_diff(*b) < 1 << 32))
        .collect()
}

/// The watcher (uid 0) publishes twice in a row, then twice around a burst
/// of publishes by another tenant (nobody) to a topic of the same name. Its
/// ids must not tell the two pairs apart: no part of them may count the
/// other tenant's messages, as a node-wide counter in the id did. Its
/// offsets count only its own topic's messages.
#[test]
fn one_tenants_message_ids_reveal_nothing_of_anothers_publishing() {
    require_root();
    let d = Daemon::start_with(Some(CONFIG));
    open_to_nobody(&d);
    let watcher = d.client();
    let other = d.client_as(NOBODY);
    assert_ne!(watcher.tenant(), other.tenant(), "two tenants");

    let (first, first_offset) = publish(&watcher, "orders");
    let (second, _) = publish(&watcher, "orders");
    for _ in 0..BURST {
        publish(&other, "orders");
    }
    let (third, third_offset) = publish(&watcher, "orders");

    let ids = [&first, &second, &third];
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b, "ids are unique");
        }
    }
    let quiet = moves(&first, &second);
    let busy = moves(&second, &third);
    assert_eq!(
        quiet, busy,
        "ids {first} → {second} (nothing between) and {second} → {third} ({BURST} publishes \
         by another tenant between) change alike"
    );
    assert!(
        busy.iter().all(|m| *m != Some(true)),
        "no part of {second} → {third} moves like a counter"
    );
    assert_eq!(
        third_offset,
        first_offset + 2,
        "offsets count only the tenant's own messages"
    );
}
