//! Daemon hand-over at its edges, against the real mechad: a frame cut in
//! half across the hand-over and requests pipelined into it reach the new
//! daemon intact; an offer in a version nobody speaks, an upgrade binary
//! others could have written, and one that exits at start change nothing.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{wait_until, Daemon, Raw};
use mecha_abi::msg::{GetRequest, SetItem, SetRequest, StateEntry};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::SetOptions;

/// Runs `mechactl daemon upgrade` with `args`; the output and whether it
/// succeeded.
fn upgrade(d: &Daemon, args: &[&str]) -> (bool, String) {
    let mut all = vec!["daemon", "upgrade"];
    all.extend_from_slice(args);
    let out = d.mechactl(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The pid after `->` in mechactl's "mechad upgraded: pid A -> B".
fn new_pid(output: &str) -> u32 {
    output
        .rsplit("-> ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {output:?}"))
}

fn set_frame(id: u32, key: &str, value: &[u8]) -> Vec<u8> {
    let body = mecha_abi::encode(&SetRequest {
        store: String::new(),
        item: SetItem {
            key: key.into(),
            value: value.to_vec(),
            etag: None,
            ttl_ms: None,
        },
    })
    .unwrap();
    mecha_abi::encode_frame(Header::request(Opcode::STATE_SET, id), &body).unwrap()
}

fn get(raw: &mut Raw, id: u32, key: &str) -> Vec<u8> {
    let body = mecha_abi::encode(&GetRequest {
        store: String::new(),
        key: key.into(),
    })
    .unwrap();
    let (status, payload) = raw.call(Header::request(Opcode::STATE_GET, id), &body);
    assert_eq!(status, Status::Ok, "{}", common::error_message(&payload));
    mecha_abi::decode::<StateEntry>(&payload).unwrap().value
}

#[test]
fn a_frame_cut_in_half_and_pipelined_requests_cross_the_hand_over() {
    let d = Daemon::start();
    let old = d.pid();
    let (mut cut, _) = Raw::hello(&d.socket);
    let (mut piped, _) = Raw::hello(&d.socket);
    // Half a header now; the rest after the hand-over.
    let frame = set_frame(7, "cut", b"whole");
    cut.send_bytes(&frame[..10]);
    // Requests written back to back throughout the hand-over, none read yet.
    let mut writer = piped.stream.try_clone().unwrap();
    let pipelining = std::thread::spawn(move || {
        for id in 1..=200u32 {
            writer
                .write_all(&set_frame(id, &format!("p{id}"), &id.to_le_bytes()))
                .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let (ok, out) = upgrade(&d, &[]);
    assert!(ok, "upgrade failed: {out}");
    let new = new_pid(&out);
    let _reaper = common::Reaper(new);
    assert_ne!(new, old);
    pipelining.join().unwrap();
    wait_until(Duration::from_secs(10), "the old daemon to exit", || {
        !common::alive(old)
    });
    cut.send_bytes(&frame[10..]);
    let (h, p) = cut.recv().expect("an answer to the frame cut in half");
    assert_eq!(h.request_id, 7);
    assert_eq!(
        Status::from_code(h.status),
        Status::Ok,
        "{}",
        common::error_message(&p)
    );
    assert_eq!(get(&mut cut, 8, "cut"), b"whole");
    // Every pipelined request was answered once (answers may come in any
    // order, SPEC §2) and took effect.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 1..=200u32 {
        let (h, p) = piped.recv().expect("an answer to a pipelined request");
        assert_eq!(
            Status::from_code(h.status),
            Status::Ok,
            "{}",
            common::error_message(&p)
        );
        assert!(
            answered.insert(h.request_id),
            "request {} answered twice",
            h.request_id
        );
    }
    assert_eq!(answered, (1..=200u32).collect());
    assert_eq!(get(&mut piped, 1000, "p200"), 200u32.to_le_bytes());
    assert_eq!(get(&mut piped, 1001, "p1"), 1u32.to_le_bytes());
}

#[test]
fn an_offer_in_a_version_nobody_speaks_is_refused_and_changes_nothing() {
    use serde::Serialize;
    // The hand-over's first message, as `handover/wire.rs` defines it.
    #[derive(Serialize)]
    enum ToOld {
        Offer {
            min_version: u32,
            max_version: u32,
            pid: u32,
            daemon_version: String,
            netns: u64,
        },
    }
    let d = Daemon::start();
    let client = d.client();
    client
        .set("", "k", b"before".to_vec(), SetOptions::default())
        .unwrap();
    let path = format!("{}.handover", d.socket.display());
    let mut s = UnixStream::connect(&path).expect("the hand-over socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = mecha_abi::encode(&ToOld::Offer {
        min_version: 99,
        max_version: 99,
        pid: 1,
        daemon_version: "9.9.9".into(),
        netns: 0,
    })
    .unwrap();
    s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut len).unwrap();
    let mut answer = vec![0u8; u32::from_le_bytes(len) as usize];
    std::io::Read::read_exact(&mut s, &mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("versions do not meet") && text.contains("99..=99"),
        "a refusal naming the versions: {text:?}"
    );
    // The same daemon serves on, same connection, same data.
    assert_eq!(client.status().unwrap().pid, d.pid());
    assert_eq!(client.get("", "k").unwrap().unwrap().value, b"before");
    client
        .set("", "k", b"after".to_vec(), SetOptions::default())
        .unwrap();
}

#[test]
fn an_upgrade_binary_that_fails_or_is_untrusted_changes_nothing() {
    let d = Daemon::start();
    let client = d.client();
    client
        .set("", "k", b"v".to_vec(), SetOptions::default())
        .unwrap();
    // A binary that exits at once.
    let broken = d.dir.path().join("broken-mechad");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, out) = upgrade(&d, &["--binary", broken.to_str().unwrap()]);
    assert!(!ok, "a broken binary must fail the upgrade: {out}");
    assert!(out.contains("exited before taking over"), "{out}");
    // One others could have written.
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, out) = upgrade(&d, &["--binary", broken.to_str().unwrap()]);
    assert!(!ok, "an untrusted binary must fail the upgrade: {out}");
    assert!(out.contains("writable"), "{out}");
    // The same daemon serves on, on the same connection.
    assert_eq!(client.status().unwrap().pid, d.pid());
    assert_eq!(client.get("", "k").unwrap().unwrap().value, b"v");
}
