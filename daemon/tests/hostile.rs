//! Hostile and malformed input against the real mechad (SPEC.md §4, §6): every
//! case checks the exact answer, whether the connection stays open, and that
//! the daemon keeps serving other connections afterwards.
//!
//! Each case is a function over a running daemon. It runs as its own test on
//! a fresh daemon, and all of them run again in sequence on one daemon in
//! `memory_stays_bounded_through_the_whole_hostile_run`, which checks that
//! the daemon's RSS stays bounded through the whole hostile run.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{error_message, wait_until, Daemon, Raw};
use mecha_abi::msg::{
    BulkGetReply, BulkGetRequest, BulkSetRequest, DeleteItem, DeleteReply, DeleteRequest,
    ErrorBody, GetRequest, Hello, NextIdRequest, SetItem, SetReply, SetRequest, StateEntry,
    TransactRequest, TryLockReply, TryLockRequest, TxOp, UnlockReply, UnlockRequest, UnlockStatus,
};
use mecha_abi::{Flags, Header, Opcode, Status, DEFAULT_MAX_FRAME, HEADER_LEN, MAGIC};

// ---------------------------------------------------------------- helpers

fn set_item(key: &str, value: &[u8]) -> SetItem {
    SetItem {
        key: key.into(),
        value: value.to_vec(),
        etag: None,
        ttl_ms: None,
    }
}

fn set_payload(store: &str, key: &str, value: &[u8]) -> Vec<u8> {
    mecha_abi::encode(&SetRequest {
        store: store.into(),
        item: set_item(key, value),
    })
    .expect("encode SetRequest")
}

fn get_payload(store: &str, key: &str) -> Vec<u8> {
    mecha_abi::encode(&GetRequest {
        store: store.into(),
        key: key.into(),
    })
    .expect("encode GetRequest")
}

fn hello_payload(min_version: u8, max_version: u8) -> Vec<u8> {
    mecha_abi::encode(&Hello {
        min_version,
        max_version,
        client: "hostile-test".into(),
    })
    .expect("encode Hello")
}

fn req(opcode: u16, id: u32) -> Header {
    Header::request(Opcode(opcode), id)
}

/// Sends a request and asserts a non-OK `status`; returns the ErrorBody message.
fn expect_error(raw: &mut Raw, header: Header, payload: &[u8], status: Status) -> String {
    let (got, body) = raw.call(header, payload);
    let message = error_message(&body);
    assert_eq!(
        got,
        status,
        "{} (id {}): expected {}, got {} ({message})",
        header.opcode,
        header.request_id,
        status.name(),
        got.name()
    );
    assert!(
        mecha_abi::decode::<ErrorBody>(&body).is_ok(),
        "a non-OK answer must carry an ErrorBody, got {body:02x?}"
    );
    message
}

/// Writes `key` = `value` on `raw` and returns the new ETag.
fn raw_set(raw: &mut Raw, id: u32, key: &str, value: &[u8]) -> String {
    let (status, body) = raw.call(req(0x0102, id), &set_payload("", key, value));
    assert_eq!(status, Status::Ok, "set {key:?}: {}", error_message(&body));
    mecha_abi::decode::<SetReply>(&body).expect("SetReply").etag
}

/// Reads `key` on `raw`; `None` when NOT_FOUND.
fn raw_get(raw: &mut Raw, id: u32, key: &str) -> Option<StateEntry> {
    let (status, body) = raw.call(req(0x0101, id), &get_payload("", key));
    match status {
        Status::Ok => Some(mecha_abi::decode(&body).expect("StateEntry")),
        Status::NotFound => None,
        other => panic!("get {key:?}: {} ({})", other.name(), error_message(&body)),
    }
}

/// The same connection still answers: a PING comes back OK with its id.
fn assert_still_open(raw: &mut Raw, id: u32) {
    let (status, body) = raw.call(req(0x0002, id), &[]);
    assert_eq!(
        status,
        Status::Ok,
        "PING after the error: {}",
        error_message(&body)
    );
    assert!(body.is_empty(), "PING answers with an empty payload");
}

/// The daemon closed this connection: the next read is EOF.
fn assert_closed(raw: &mut Raw) {
    if let Some((h, p)) = raw.recv() {
        panic!(
            "expected EOF, got another frame: {} id {} status {} ({})",
            h.opcode,
            h.request_id,
            h.status,
            error_message(&p)
        );
    }
}

/// Other connections are still served: a fresh raw connection does a
/// STATE_SET/STATE_GET round trip, and a client connection does too.
fn assert_serves_others(d: &Daemon, tag: &str) {
    let (mut raw, reply) = Raw::hello(&d.socket);
    assert_eq!(reply.version, 1);
    let key = format!("probe-{tag}");
    let etag = raw_set(&mut raw, 1, &key, tag.as_bytes());
    let entry = raw_get(&mut raw, 2, &key).expect("the probe key was just written");
    assert_eq!(entry.value, tag.as_bytes());
    assert_eq!(entry.etag, etag);

    let client = d.client();
    client.ping().expect("client ping");
    let entry = client
        .get("", &key)
        .expect("client get")
        .expect("probe key");
    assert_eq!(entry.value, tag.as_bytes());
    assert_daemon_alive(d);
}

fn assert_daemon_alive(d: &Daemon) {
    // `try_wait` needs `&mut`; read /proc instead so shared borrows suffice.
    let pid = d.pid();
    assert_ne!(pid, 0, "the daemon was started");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("mechad is alive");
    let state = stat[stat.rfind(')').expect("comm") + 2..].chars().next();
    assert_ne!(state, Some('Z'), "mechad is a zombie: it exited");
}

// ---------------------------------------------------------------- §6.3 bad magic

#[test]
fn bad_magic_is_answered_once_with_id_zero_then_closed() {
    bad_magic(&Daemon::start());
}

fn bad_magic(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let mut frame = req(0x0002, 9).encode().to_vec();
    frame[..4].copy_from_slice(b"MCHX");
    raw.send_bytes(&frame);
    let (h, p) = raw.recv().expect("the connection-fatal answer");
    assert_eq!(h.request_id, 0, "bad magic is answered with request id 0");
    assert_eq!(h.opcode, Opcode(0), "bad magic is answered with opcode 0");
    assert_eq!(h.version, 1);
    assert!(h.flags.is_response());
    assert_eq!(Status::from_code(h.status), Status::InvalidArgument);
    let message = error_message(&p);
    assert!(
        message.contains("magic"),
        "message mentions the magic: {message}"
    );
    assert_closed(&mut raw);

    // A request in flight before the bad header is still answered (§6.3 step 3).
    let (mut raw, _) = Raw::hello(&d.socket);
    let mut burst = mecha_abi::encode_frame(req(0x0002, 5), &[]).unwrap();
    burst.extend_from_slice(b"GARBAGE!GARBAGE!GARBAGE!more bytes after the bad header");
    raw.send_bytes(&burst);
    let mut answers = HashMap::new();
    while let Some((h, p)) = raw.recv() {
        assert!(
            answers.insert(h.request_id, (h, p)).is_none(),
            "one answer per id"
        );
    }
    let (ping, _) = &answers[&5];
    assert_eq!(
        Status::from_code(ping.status),
        Status::Ok,
        "the PING in flight is answered"
    );
    assert_eq!(ping.opcode, Opcode::PING);
    let (fatal, p) = &answers[&0];
    assert_eq!(fatal.opcode, Opcode(0));
    assert_eq!(Status::from_code(fatal.status), Status::InvalidArgument);
    assert!(error_message(p).contains("magic"), "{}", error_message(p));
    assert_eq!(answers.len(), 2, "nothing else is answered");

    // Bad magic as the very first bytes of a connection.
    let mut raw = Raw::connect(&d.socket);
    raw.send_bytes(&[0u8; HEADER_LEN]);
    let (h, p) = raw.recv().expect("an answer to the bad first header");
    assert_eq!((h.request_id, h.opcode), (0, Opcode(0)));
    assert_eq!(Status::from_code(h.status), Status::InvalidArgument);
    assert!(error_message(&p).contains("magic"));
    assert_closed(&mut raw);

    assert_serves_others(d, "bad-magic");
}

// ---------------------------------------------------------------- §6.1 / §6.5 versions

#[test]
fn frame_with_another_version_is_unsupported_and_connection_stays_open() {
    frame_version(&Daemon::start());
}

fn frame_version(d: &Daemon) {
    let (mut raw, reply) = Raw::hello(&d.socket);
    assert_eq!(reply.version, 1);
    raw_set(&mut raw, 2, "versioned", b"v1");

    let mut h = req(0x0101, 3);
    h.version = 2;
    raw.send(h, &get_payload("", "versioned"));
    let (answer, body) = raw.recv().expect("an answer");
    assert_eq!(answer.request_id, 3);
    assert_eq!(answer.opcode, Opcode::STATE_GET);
    assert_eq!(
        answer.version, 2,
        "a response echoes the request's version byte (§2)"
    );
    assert_eq!(
        Status::from_code(answer.status),
        Status::UnsupportedVersion,
        "{}",
        error_message(&body)
    );
    // The payload was read and discarded: the stream is still in sync.
    assert_still_open(&mut raw, 4);
    assert_eq!(raw_get(&mut raw, 5, "versioned").unwrap().value, b"v1");
    assert_serves_others(d, "frame-version");
}

#[test]
fn hello_without_a_common_version_is_unsupported_then_closed() {
    hello_version(&Daemon::start());
}

fn hello_version(d: &Daemon) {
    let mut raw = Raw::connect(&d.socket);
    let message = expect_error(
        &mut raw,
        req(0x0001, 1),
        &hello_payload(2, 3),
        Status::UnsupportedVersion,
    );
    assert!(
        message.contains('2') && message.contains('3'),
        "names the client range: {message}"
    );
    assert_closed(&mut raw);

    // An inverted range overlaps nothing either.
    let mut raw = Raw::connect(&d.socket);
    expect_error(
        &mut raw,
        req(0x0001, 1),
        &hello_payload(1, 0),
        Status::UnsupportedVersion,
    );
    assert_closed(&mut raw);

    // A range that includes 1 negotiates 1.
    let mut raw = Raw::connect(&d.socket);
    let (status, body) = raw.call(req(0x0001, 1), &hello_payload(0, 9));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    let reply: mecha_abi::msg::HelloReply = mecha_abi::decode(&body).unwrap();
    assert_eq!(reply.version, 1);
    assert_eq!(reply.max_frame, DEFAULT_MAX_FRAME);
    assert_still_open(&mut raw, 2);

    assert_serves_others(d, "hello-version");
}

// ---------------------------------------------------------------- §6.6 opcodes

#[test]
fn unknown_and_link_opcodes_are_unknown_opcode_and_connection_stays_open() {
    unknown_opcodes(&Daemon::start());
}

fn unknown_opcodes(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let opcodes = [
        0x7701u16, 0xF001, 0xF002, 0xF003, 0x0000, 0x0008, 0x0107, 0xFFFF,
    ];
    for (i, op) in opcodes.into_iter().enumerate() {
        let id = 10 + i as u32;
        // A payload, so that a daemon that forgot to discard it would desync.
        let header = req(op, id);
        raw.send(header, b"some payload bytes that must be discarded");
        let (h, body) = raw.recv().expect("an answer");
        assert_eq!(h.request_id, id);
        assert_eq!(h.opcode, Opcode(op), "UNKNOWN_OPCODE echoes the opcode");
        assert_eq!(
            Status::from_code(h.status),
            Status::UnknownOpcode,
            "opcode 0x{op:04x}: {}",
            error_message(&body)
        );
        assert_still_open(&mut raw, 100 + id);
    }
    assert_serves_others(d, "opcodes");
}

// ---------------------------------------------------------------- §6.4 frame too large

#[test]
fn oversized_payload_len_is_resource_exhausted_then_closed() {
    oversized_length(&Daemon::start());
}

fn oversized_length(d: &Daemon) {
    let (mut raw, reply) = Raw::hello(&d.socket);
    assert_eq!(reply.max_frame, DEFAULT_MAX_FRAME);
    let mut h = req(0x0102, 77);
    h.payload_len = DEFAULT_MAX_FRAME + 1;
    // Only the header: the daemon must answer before any payload byte arrives.
    raw.send_bytes(&h.encode());
    let (answer, body) = raw.recv().expect("an answer before any payload byte");
    assert_eq!(
        answer.request_id, 77,
        "the oversized frame's id is answered"
    );
    assert_eq!(
        answer.opcode,
        Opcode(0),
        "connection-fatal answers carry opcode 0"
    );
    assert_eq!(answer.version, 1);
    assert_eq!(Status::from_code(answer.status), Status::ResourceExhausted);
    let message = error_message(&body);
    assert!(
        message.contains(&(DEFAULT_MAX_FRAME + 1).to_string())
            && message.contains(&DEFAULT_MAX_FRAME.to_string()),
        "message names both numbers: {message}"
    );
    assert_closed(&mut raw);

    // Before the handshake too, and with the largest possible claim.
    let mut raw = Raw::connect(&d.socket);
    let mut h = req(0x0001, 3);
    h.payload_len = u32::MAX;
    raw.send_bytes(&h.encode());
    let (answer, _) = raw.recv().expect("an answer");
    assert_eq!((answer.request_id, answer.opcode), (3, Opcode(0)));
    assert_eq!(Status::from_code(answer.status), Status::ResourceExhausted);
    assert_closed(&mut raw);

    // Exactly max_frame is accepted (the check is `>`, not `>=`).
    let (mut raw, _) = Raw::hello(&d.socket);
    // The SetRequest's fixed overhead for store "" and key "big" is the
    // encoding of an empty value; pad the value to make exactly max_frame.
    let overhead = set_payload("", "big", &[]).len();
    let value = vec![7u8; DEFAULT_MAX_FRAME as usize - overhead];
    let payload = set_payload("", "big", &value);
    assert_eq!(payload.len(), DEFAULT_MAX_FRAME as usize);
    let (status, body) = raw.call(req(0x0102, 4), &payload);
    assert_eq!(status, Status::Ok, "{}", error_message(&body));

    assert_serves_others(d, "oversized");
}

// ---------------------------------------------------------------- §6.7 undecodable payloads

#[test]
fn undecodable_state_payloads_are_invalid_argument_and_nothing_is_lost() {
    undecodable_payloads(&Daemon::start());
}

fn undecodable_payloads(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let etag = raw_set(&mut raw, 1, "keep", b"original");

    // Garbage bytes.
    let msg = expect_error(
        &mut raw,
        req(0x0102, 2),
        b"\xde\xad\xbe\xef not a SetRequest",
        Status::InvalidArgument,
    );
    assert!(!msg.is_empty(), "the message explains the decode error");
    assert_still_open(&mut raw, 3);

    // A valid SetRequest that would overwrite `keep`, with trailing bytes.
    let mut trailing = set_payload("", "keep", b"overwritten");
    trailing.extend_from_slice(b"\x00\x01");
    let msg = expect_error(&mut raw, req(0x0102, 4), &trailing, Status::InvalidArgument);
    assert!(
        msg.contains("trailing"),
        "the message names the problem: {msg}"
    );
    assert_still_open(&mut raw, 5);

    // Invalid UTF-8 in the key: store "", key ff fe, value "", etag None, ttl None.
    let mut bad_utf8 = Vec::new();
    bad_utf8.extend_from_slice(&0u64.to_le_bytes());
    bad_utf8.extend_from_slice(&2u64.to_le_bytes());
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(&0u64.to_le_bytes());
    bad_utf8.extend_from_slice(&[0, 0]);
    expect_error(&mut raw, req(0x0102, 6), &bad_utf8, Status::InvalidArgument);
    assert_still_open(&mut raw, 7);

    // Truncated: a valid SetRequest for `keep` cut short.
    let full = set_payload("", "keep", b"overwritten");
    expect_error(
        &mut raw,
        req(0x0102, 8),
        &full[..full.len() - 1],
        Status::InvalidArgument,
    );
    // A length prefix far beyond the payload (hostile length).
    let mut huge = Vec::new();
    huge.extend_from_slice(&0u64.to_le_bytes());
    huge.extend_from_slice(&(60u64 << 20).to_le_bytes());
    huge.extend_from_slice(b"k");
    expect_error(&mut raw, req(0x0102, 9), &huge, Status::InvalidArgument);
    // An Option tag other than 0/1, and an empty payload.
    let mut bad_tag = set_payload("", "keep", b"overwritten");
    let n = bad_tag.len();
    bad_tag[n - 2] = 2; // the etag Option tag
    expect_error(&mut raw, req(0x0102, 10), &bad_tag, Status::InvalidArgument);
    expect_error(&mut raw, req(0x0101, 11), &[], Status::InvalidArgument);
    // Control opcodes with a payload where "empty" is required.
    expect_error(&mut raw, req(0x0002, 12), b"x", Status::InvalidArgument);
    expect_error(&mut raw, req(0x0003, 13), b"x", Status::InvalidArgument);
    assert_still_open(&mut raw, 14);

    // Nothing was lost or changed.
    let entry = raw_get(&mut raw, 15, "keep").expect("keep survives");
    assert_eq!(entry.value, b"original");
    assert_eq!(entry.etag, etag, "no write happened: the ETag is unchanged");
    assert_serves_others(d, "undecodable");
}

#[test]
fn undecodable_hello_is_invalid_argument_then_closed() {
    undecodable_hello(&Daemon::start());
}

fn undecodable_hello(d: &Daemon) {
    let mut raw = Raw::connect(&d.socket);
    let mut payload = hello_payload(1, 1);
    payload.push(0);
    expect_error(&mut raw, req(0x0001, 1), &payload, Status::InvalidArgument);
    assert_closed(&mut raw);
    assert_serves_others(d, "bad-hello");
}

// ---------------------------------------------------------------- §6.1 handshake order

#[test]
fn first_frame_not_hello_is_invalid_argument_then_closed() {
    first_frame_not_hello(&Daemon::start());
}

fn first_frame_not_hello(d: &Daemon) {
    let mut raw = Raw::connect(&d.socket);
    // Two frames in one write: the second is discarded unanswered.
    let mut burst = mecha_abi::encode_frame(req(0x0002, 5), &[]).unwrap();
    burst.extend(mecha_abi::encode_frame(req(0x0002, 6), &[]).unwrap());
    raw.send_bytes(&burst);
    let (h, body) = raw.recv().expect("an answer to the first frame");
    assert_eq!(h.request_id, 5);
    assert_eq!(h.opcode, Opcode::PING);
    assert_eq!(Status::from_code(h.status), Status::InvalidArgument);
    let message = error_message(&body);
    assert!(message.starts_with("expected HELLO"), "message: {message}");
    assert_closed(&mut raw);

    // A state request as the first frame is not forwarded either.
    let mut raw = Raw::connect(&d.socket);
    let msg = expect_error(
        &mut raw,
        req(0x0102, 1),
        &set_payload("", "pre-hello", b"x"),
        Status::InvalidArgument,
    );
    assert!(msg.starts_with("expected HELLO"), "{msg}");
    assert_closed(&mut raw);
    assert!(
        d.client().get("", "pre-hello").unwrap().is_none(),
        "nothing was written"
    );

    // A second HELLO after a successful one: INVALID_ARGUMENT, stays open.
    let (mut raw, _) = Raw::hello(&d.socket);
    expect_error(
        &mut raw,
        req(0x0001, 2),
        &hello_payload(1, 1),
        Status::InvalidArgument,
    );
    assert_still_open(&mut raw, 3);

    assert_serves_others(d, "not-hello");
}

// ---------------------------------------------------------------- §6.5 header bits

#[test]
fn bad_header_bits_are_invalid_argument_and_connection_stays_open() {
    bad_header_bits(&Daemon::start());
}

fn bad_header_bits(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let etag = raw_set(&mut raw, 1, "keep", b"original");

    type Mutate = fn(&mut Header);
    let cases: [(&str, Mutate); 6] = [
        ("RESPONSE flag", |h| h.flags = Flags(Flags::RESPONSE)),
        ("STREAM flag", |h| h.flags = Flags(Flags::STREAM)),
        ("undefined flag bit", |h| h.flags = Flags(0x80)),
        ("ext != 0", |h| h.ext = 1),
        ("status != 0", |h| h.status = 3),
        ("status 0xffff", |h| h.status = 0xffff),
    ];
    for (i, (what, mutate)) in cases.into_iter().enumerate() {
        let id = 10 + i as u32;
        let mut h = req(0x0102, id);
        mutate(&mut h);
        // The payload would overwrite `keep` if the frame were not rejected.
        let msg = expect_error(
            &mut raw,
            h,
            &set_payload("", "keep", what.as_bytes()),
            Status::InvalidArgument,
        );
        assert!(!msg.is_empty(), "{what}: the message explains");
        assert_still_open(&mut raw, 100 + id);
    }
    let entry = raw_get(&mut raw, 200, "keep").unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.etag),
        (&b"original"[..], etag)
    );

    // Before the handshake a bad-header frame is rejected but the connection
    // stays open, and HELLO can follow (§6.1).
    let mut raw = Raw::connect(&d.socket);
    let mut h = req(0x0001, 1);
    h.ext = 9;
    expect_error(&mut raw, h, &hello_payload(1, 1), Status::InvalidArgument);
    let (status, body) = raw.call(req(0x0001, 2), &hello_payload(1, 1));
    assert_eq!(
        status,
        Status::Ok,
        "HELLO after a rejected frame: {}",
        error_message(&body)
    );
    assert_still_open(&mut raw, 3);

    assert_serves_others(d, "header-bits");
}

// ---------------------------------------------------------------- §6.9 truncated frames

#[test]
fn truncated_frames_and_abandoned_connections_do_not_hurt_the_daemon() {
    truncated_frames(&Daemon::start());
}

fn truncated_frames(d: &Daemon) {
    // EOF inside a payload.
    {
        let (mut raw, _) = Raw::hello(&d.socket);
        let mut h = req(0x0102, 2);
        h.payload_len = 100;
        raw.send_bytes(&h.encode());
        raw.send_bytes(&[1u8; 10]);
        raw.stream.shutdown(Shutdown::Write).unwrap();
        assert_closed(&mut raw);
    }
    // EOF inside a header, before and after the handshake.
    {
        let mut raw = Raw::connect(&d.socket);
        raw.send_bytes(&MAGIC);
        raw.stream.shutdown(Shutdown::Write).unwrap();
        assert_closed(&mut raw);
        let (mut raw, _) = Raw::hello(&d.socket);
        raw.send_bytes(&req(0x0002, 2).encode()[..13]);
        drop(raw);
    }
    // A client that closes with requests in flight, without reading answers.
    {
        let (mut raw, _) = Raw::hello(&d.socket);
        let mut burst = Vec::new();
        for id in 2..100 {
            burst.extend(mecha_abi::encode_frame(req(0x0101, id), &get_payload("", "x")).unwrap());
        }
        burst.extend_from_slice(&req(0x0002, 100).encode()[..7]);
        raw.send_bytes(&burst);
        drop(raw);
    }
    // Half-close at a frame boundary: the answers in flight are still delivered.
    {
        let (mut raw, _) = Raw::hello(&d.socket);
        let mut burst = Vec::new();
        for id in 2..12 {
            burst.extend(mecha_abi::encode_frame(req(0x0002, id), &[]).unwrap());
        }
        raw.send_bytes(&burst);
        raw.stream.shutdown(Shutdown::Write).unwrap();
        let mut ids = Vec::new();
        while let Some((h, _)) = raw.recv() {
            assert_eq!(Status::from_code(h.status), Status::Ok);
            ids.push(h.request_id);
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            (2..12).collect::<Vec<_>>(),
            "every PING is answered after half-close"
        );
    }
    assert_serves_others(d, "truncated");
}

// ---------------------------------------------------------------- pipelining

#[test]
fn pipelined_burst_with_bad_frames_is_answered_by_id() {
    pipelined_burst(&Daemon::start());
}

fn pipelined_burst(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    const ROUNDS: u32 = 60;
    let mut burst = Vec::new();
    let mut expected: HashMap<u32, (Opcode, Status)> = HashMap::new();
    for i in 0..ROUNDS {
        let base = 1000 + 4 * i;
        let key = format!("burst-{i}");
        burst.extend(
            mecha_abi::encode_frame(req(0x0102, base), &set_payload("", &key, key.as_bytes()))
                .unwrap(),
        );
        expected.insert(base, (Opcode::STATE_SET, Status::Ok));
        burst.extend(mecha_abi::encode_frame(req(0x7701, base + 1), b"junk").unwrap());
        expected.insert(base + 1, (Opcode(0x7701), Status::UnknownOpcode));
        burst.extend(mecha_abi::encode_frame(req(0x0002, base + 2), &[]).unwrap());
        expected.insert(base + 2, (Opcode::PING, Status::Ok));
        // A key nobody wrote: NOT_FOUND, answered among the rest.
        burst.extend(
            mecha_abi::encode_frame(req(0x0101, base + 3), &get_payload("", "never-written"))
                .unwrap(),
        );
        expected.insert(base + 3, (Opcode::STATE_GET, Status::NotFound));
    }
    // One write for the whole burst (well under the in-flight limit of 256).
    raw.send_bytes(&burst);
    let mut answered: HashMap<u32, Status> = HashMap::new();
    for _ in 0..expected.len() {
        let (h, body) = raw.recv().expect("an answer for every request");
        let (opcode, status) = expected
            .get(&h.request_id)
            .unwrap_or_else(|| panic!("answer to an id never sent: {}", h.request_id));
        assert_eq!(h.opcode, *opcode, "id {} echoes its opcode", h.request_id);
        let got = Status::from_code(h.status);
        assert_eq!(
            got,
            *status,
            "id {}: {}",
            h.request_id,
            error_message(&body)
        );
        assert!(
            answered.insert(h.request_id, got).is_none(),
            "id {} answered twice",
            h.request_id
        );
    }
    assert_eq!(answered.len(), expected.len());
    assert_still_open(&mut raw, 1);

    let client = d.client();
    for i in 0..ROUNDS {
        let key = format!("burst-{i}");
        let entry = client
            .get("", &key)
            .unwrap()
            .unwrap_or_else(|| panic!("{key} was written"));
        assert_eq!(entry.value, key.as_bytes());
    }
    assert_serves_others(d, "burst");
}

// ---------------------------------------------------------------- fuzz

/// xorshift64*: small, deterministic, good enough to spray bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const INTERESTING_OPCODES: [u16; 13] = [
    0x0000, 0x0001, 0x0002, 0x0003, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0106, 0x0107, 0xF001,
    0x7701,
];

/// A header that passes the magic check, with mostly-plausible fields.
fn fuzz_frame(rng: &mut Rng) -> Vec<u8> {
    let mut h = req(rng.pick(&INTERESTING_OPCODES), rng.next() as u32);
    if rng.below(4) == 0 {
        h.version = rng.next() as u8;
    }
    if rng.below(4) == 0 {
        h.flags = Flags(rng.next() as u8);
    }
    if rng.below(6) == 0 {
        h.status = rng.next() as u16;
    }
    if rng.below(6) == 0 {
        h.ext = rng.next() as u16;
    }
    h.deadline_ms = rng.below(2000) as u32;
    let body_len = rng.below(96) as usize;
    h.payload_len = match rng.below(8) {
        0 => rng.next() as u32,                      // usually oversized
        1 => body_len as u32 + rng.below(64) as u32, // truncated
        _ => body_len as u32,
    };
    let mut out = h.encode().to_vec();
    out.extend(rng.bytes(body_len));
    out
}

fn fuzz_blob(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let n = rng.below(300) as usize;
            rng.bytes(n)
        }
        1 => {
            let mut b = MAGIC.to_vec();
            let n = rng.below(60) as usize;
            b.extend(rng.bytes(n));
            b
        }
        2 => fuzz_frame(rng),
        _ => {
            // A good HELLO, then a few fuzzed frames, sometimes random tail bytes.
            let mut b = mecha_abi::encode_frame(req(0x0001, 1), &hello_payload(1, 1)).unwrap();
            for _ in 0..=rng.below(6) {
                b.extend(fuzz_frame(rng));
            }
            if rng.below(3) == 0 {
                let n = rng.below(40) as usize;
                b.extend(rng.bytes(n));
            }
            b
        }
    }
}

/// Every byte the daemon sends back must parse as whole, well-formed responses;
/// returns the status of each.
fn check_responses(i: usize, mut bytes: &[u8]) -> Vec<Status> {
    let mut statuses = Vec::new();
    while !bytes.is_empty() {
        let head: &[u8; HEADER_LEN] = bytes
            .first_chunk()
            .unwrap_or_else(|| panic!("blob {i}: a partial header came back: {bytes:02x?}"));
        let h = Header::decode(head, u32::MAX).expect("the daemon sends valid magic");
        let end = HEADER_LEN + h.payload_len as usize;
        assert!(bytes.len() >= end, "blob {i}: a partial payload came back");
        assert!(h.flags.is_response(), "blob {i}: flags {:?}", h.flags);
        assert_eq!(
            h.flags.0,
            Flags::RESPONSE,
            "blob {i}: only the RESPONSE bit"
        );
        // SPEC §7.1.1: an OK HELLO answer carries the feature bits in ext.
        let hello_ok = h.opcode == mecha_abi::Opcode::HELLO && h.status == 0;
        let ext = if hello_ok {
            mecha_abi::Features::TRACE
        } else {
            0
        };
        assert_eq!(
            (h.ext, h.deadline_ms),
            (ext, 0),
            "blob {i}: ext (feature bits on HELLO OK, else 0) and deadline 0"
        );
        let payload = &bytes[HEADER_LEN..end];
        if h.status != 0 {
            assert!(
                mecha_abi::decode::<ErrorBody>(payload).is_ok(),
                "blob {i}: non-OK answer without an ErrorBody"
            );
        }
        statuses.push(Status::from_code(h.status));
        bytes = &bytes[end..];
    }
    statuses
}

#[test]
fn random_byte_blobs_do_not_break_the_daemon() {
    random_blobs(&Daemon::start());
}

fn random_blobs(d: &Daemon) {
    let client = d.client();
    client
        .set("", "fuzz-canary", b"alive".to_vec(), Default::default())
        .unwrap();
    let module_pid = d.module_pid("state");
    assert_ne!(module_pid, 0);

    let mut rng = Rng(0x5EED_0F4D_EC4A_1100);
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for i in 0..200 {
        let blob = fuzz_blob(&mut rng);
        let mut stream = UnixStream::connect(&d.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        // The daemon may close early (bad magic, oversize): write errors are fine.
        let _ = stream.write_all(&blob);
        let _ = stream.shutdown(Shutdown::Write);
        let mut back = Vec::new();
        match stream.read_to_end(&mut back) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "blob {i} ({} bytes): the daemon did not close: {e}",
                blob.len()
            ),
        }
        for status in check_responses(i, &back) {
            *seen.entry(status.name()).or_insert(0u32) += 1;
        }
    }
    // The blobs reached past the header checks, not only the magic check.
    for status in [
        Status::Ok,
        Status::InvalidArgument,
        Status::UnknownOpcode,
        Status::UnsupportedVersion,
        Status::ResourceExhausted,
    ] {
        assert!(
            seen.contains_key(status.name()),
            "the fuzz loop never provoked {}: {seen:?}",
            status.name()
        );
    }

    assert_daemon_alive(d);
    let client = d.client();
    client.ping().unwrap();
    let entry = client
        .get("", "fuzz-canary")
        .unwrap()
        .expect("canary survives");
    assert_eq!(entry.value, b"alive");
    let status = client.status().unwrap();
    let state = status
        .modules
        .iter()
        .find(|m| m.name == "state")
        .expect("state module");
    assert_eq!(state.state, "running");
    assert_eq!(
        state.pid, module_pid,
        "the state module was not restarted by fuzzed payloads"
    );
    assert_eq!(state.restarts, 0);
    assert_serves_others(d, "fuzz");
}

// ---------------------------------------------------------------- §7.2 field rules

#[test]
fn empty_key_and_zero_ttl_are_invalid_argument() {
    empty_key_and_zero_ttl(&Daemon::start());
}

fn empty_key_and_zero_ttl(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);

    expect_error(
        &mut raw,
        req(0x0102, 1),
        &set_payload("", "", b"v"),
        Status::InvalidArgument,
    );
    expect_error(
        &mut raw,
        req(0x0101, 2),
        &get_payload("", ""),
        Status::InvalidArgument,
    );

    let zero_ttl = mecha_abi::encode(&SetRequest {
        store: String::new(),
        item: SetItem {
            ttl_ms: Some(0),
            ..set_item("ttl-zero", b"v")
        },
    })
    .unwrap();
    expect_error(&mut raw, req(0x0102, 3), &zero_ttl, Status::InvalidArgument);
    assert!(
        raw_get(&mut raw, 4, "ttl-zero").is_none(),
        "the zero-TTL write did not apply"
    );

    // One empty key makes a whole bulk write invalid; nothing is written.
    let bulk = mecha_abi::encode(&BulkSetRequest {
        store: String::new(),
        items: vec![set_item("bulk-ok", b"v"), set_item("", b"v")],
    })
    .unwrap();
    expect_error(&mut raw, req(0x0105, 5), &bulk, Status::InvalidArgument);
    assert!(
        raw_get(&mut raw, 6, "bulk-ok").is_none(),
        "the bulk write is atomic"
    );

    // SPEC §7 "Names": at most 1024 bytes and no NUL byte. The longest
    // allowed key works; one byte more, or a NUL anywhere, is refused with a
    // message naming the rule, and nothing is written.
    let longest = "k".repeat(1024);
    raw_set(&mut raw, 8, &longest, b"fits");
    assert_eq!(raw_get(&mut raw, 9, &longest).unwrap().value, b"fits");
    let too_long = "k".repeat(1025);
    let msg = expect_error(
        &mut raw,
        req(0x0102, 10),
        &set_payload("", &too_long, b"v"),
        Status::InvalidArgument,
    );
    assert!(msg.contains("1025 bytes") && msg.contains("1024"), "{msg}");
    let msg = expect_error(
        &mut raw,
        req(0x0102, 11),
        &set_payload("", "nul\0key", b"v"),
        Status::InvalidArgument,
    );
    assert!(msg.contains("NUL"), "{msg}");
    let msg = expect_error(
        &mut raw,
        req(0x0101, 12),
        &get_payload("", "nul\0key"),
        Status::InvalidArgument,
    );
    assert!(msg.contains("NUL"), "{msg}");
    assert!(
        raw_get(&mut raw, 13, "nul").is_none(),
        "no truncated key was written"
    );
    assert_still_open(&mut raw, 14);
    assert_serves_others(d, "field-rules");
}

/// SPEC.md §7.2: "a name that is not a configured state component is answered
/// NOT_FOUND with a message naming the store" (for every state operation).
#[test]
fn unknown_store_is_invalid_argument_naming_the_store() {
    unknown_store(&Daemon::start());
}

fn unknown_store(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let msg = expect_error(
        &mut raw,
        req(0x0102, 1),
        &set_payload("no-such-store", "k", b"v"),
        Status::InvalidArgument,
    );
    assert!(
        msg.contains("no-such-store"),
        "the message names the store: {msg}"
    );
    let msg = expect_error(
        &mut raw,
        req(0x0101, 2),
        &get_payload("no-such-store", "k"),
        Status::InvalidArgument,
    );
    assert!(
        msg.contains("no-such-store"),
        "the message names the store: {msg}"
    );
    // The configured store by name works.
    let (status, body) = raw.call(req(0x0102, 3), &set_payload("statestore", "k", b"v"));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    assert_still_open(&mut raw, 4);
    assert_serves_others(d, "unknown-store");
}

// ---------------------------------------------------------------- process helpers

/// Serialises the cases that open thousands of descriptors in this test
/// process, so two of them running in parallel cannot exhaust its limit.
static FD_HEAVY: Mutex<()> = Mutex::new(());

fn fd_heavy() -> MutexGuard<'static, ()> {
    // A failed heavy case must not fail the others with a poisoned lock.
    FD_HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Descriptors kept free for the rest of this test process: other tests'
/// daemons, pipes and connections, and the harness.
const FD_RESERVE: usize = 1_000;

/// Raises this process's RLIMIT_NOFILE soft limit to `want` (and the hard
/// limit too when allowed, as root), or as far as the hard limit allows.
/// Daemons started afterwards inherit it. Returns the soft limit now in force.
fn raise_fd_limit(want: u64) -> u64 {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut now), 0);
        if now.rlim_cur >= want {
            return now.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: now.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let to_hard = libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard), 0);
        now.rlim_max
    }
}

/// A line of `/proc/<pid>/status` such as `VmRSS:   12345 kB`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn rss_kib(d: &Daemon) -> u64 {
    proc_status_kib(d.pid(), "VmRSS")
}

/// Descriptors the daemon has open: a leaked connection keeps its socket.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd dir")
        .count()
}

/// The soft RLIMIT_NOFILE of another process, from /proc.
fn fd_limit_of(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|soft| soft.parse().ok())
        .expect("a numeric soft limit")
}

/// Waits until the daemon has closed every connection a case opened: its
/// descriptor count is back to `baseline` (give or take `slack`).
fn wait_for_fds(d: &Daemon, baseline: usize, slack: usize, what: &str) {
    wait_until(Duration::from_secs(30), what, || {
        open_fds(d.pid()) <= baseline + slack
    });
}

/// Like `Raw::recv`, but `None` when nothing arrives within `limit`.
fn recv_within(raw: &mut Raw, limit: Duration) -> Option<(Header, Vec<u8>)> {
    raw.stream.set_read_timeout(Some(limit)).unwrap();
    let mut head = [0u8; HEADER_LEN];
    let got = match raw.stream.read_exact(&mut head) {
        Ok(()) => {
            let h = Header::decode(&head, u32::MAX).expect("valid header");
            let mut payload = vec![0u8; h.payload_len as usize];
            raw.stream.read_exact(&mut payload).expect("payload");
            Some((h, payload))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("reading a frame: {e}"),
    };
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    got
}

fn frame(opcode: u16, id: u32, payload: &[u8]) -> Vec<u8> {
    mecha_abi::encode_frame(req(opcode, id), payload).expect("encode frame")
}

fn try_lock_payload(resource: &str, owner: &str, wait_ms: u64) -> Vec<u8> {
    mecha_abi::encode(&TryLockRequest {
        store: String::new(),
        resource: resource.into(),
        owner: owner.into(),
        ttl_ms: 60_000,
        wait_ms,
    })
    .expect("encode TryLockRequest")
}

// ---------------------------------------------------------------- zero-length frames

#[test]
fn zero_length_frames_are_invalid_argument_where_a_payload_is_needed() {
    zero_length_frames(&Daemon::start());
}

/// payload_len 0 for every opcode whose request type is not empty: an empty
/// payload is undecodable (§6.7), so INVALID_ARGUMENT and the connection stays
/// open — whether the daemon (STREAM_CANCEL, MODULE_RESTART) or a module
/// decodes it. Opcodes with an empty request (PING) answer OK, also in a
/// pipelined burst; a zero-length HELLO is undecodable, so INVALID_ARGUMENT
/// and the connection is closed (§6.1).
fn zero_length_frames(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let needs_payload = [
        Opcode::MODULE_RESTART,
        Opcode::STREAM_CANCEL,
        Opcode::STATE_GET,
        Opcode::STATE_SET,
        Opcode::STATE_DELETE,
        Opcode::STATE_BULK_GET,
        Opcode::STATE_BULK_SET,
        Opcode::STATE_TRANSACT,
        Opcode::PUBSUB_PUBLISH,
        Opcode::PUBSUB_SUBSCRIBE,
        Opcode::PUBSUB_ACK,
        Opcode::LOCK_TRY_LOCK,
        Opcode::LOCK_UNLOCK,
        Opcode::LOCK_EXTEND,
        Opcode::SEQ_NEXT,
        Opcode::CONFIG_GET,
        Opcode::CONFIG_SUBSCRIBE,
        Opcode::CONFIG_SET,
        Opcode::SECRET_GET,
        Opcode::SECRET_BULK_GET,
    ];
    for (i, opcode) in needs_payload.into_iter().enumerate() {
        let id = 10 + i as u32;
        let msg = expect_error(
            &mut raw,
            Header::request(opcode, id),
            &[],
            Status::InvalidArgument,
        );
        assert!(!msg.is_empty(), "{opcode}: the message explains");
        assert_still_open(&mut raw, 100 + id);
    }

    // Many empty frames in one write are each answered, by id.
    let burst: Vec<u8> = (1000..1200).flat_map(|id| frame(0x0002, id, &[])).collect();
    raw.send_bytes(&burst);
    let mut ids: Vec<u32> = (0..200)
        .map(|_| {
            let (h, body) = raw.recv().expect("a PING answer");
            assert_eq!(Status::from_code(h.status), Status::Ok);
            assert!(body.is_empty());
            h.request_id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1000..1200).collect::<Vec<_>>());

    let mut raw = Raw::connect(&d.socket);
    expect_error(&mut raw, req(0x0001, 1), &[], Status::InvalidArgument);
    assert_closed(&mut raw);
    assert_serves_others(d, "zero-length");
}

// ---------------------------------------------------------------- reused request ids

#[test]
fn a_request_id_reused_while_in_flight_is_answered_twice_in_completion_order() {
    reused_request_id(&Daemon::start());
}

/// Two LOCK_TRY_LOCK requests with the same id, both waiting in the lock
/// module at once. The daemon gives every forwarded request its own link id,
/// so the two never mix: each is answered once, with the reused id, in the
/// order they complete (here the second first). The id only lets a client
/// match answers; reusing one in flight makes its answers ambiguous to the
/// client, not to the daemon.
fn reused_request_id(d: &Daemon) {
    let holder = d.client();
    let lease = Duration::from_secs(60);
    for resource in ["reuse-a", "reuse-b"] {
        assert!(
            holder
                .try_lock("", resource, "holder", lease, None)
                .unwrap()
                .is_some(),
            "{resource} is free"
        );
    }
    let (mut raw, _) = Raw::hello(&d.socket);
    const ID: u32 = 7;
    // reuse-a is never released: answered `acquired = false` after its wait.
    raw.send(
        req(0x0301, ID),
        &try_lock_payload("reuse-a", "reuser", 3_000),
    );
    // reuse-b is released below: granted long before reuse-a gives up.
    raw.send(
        req(0x0301, ID),
        &try_lock_payload("reuse-b", "reuser", 4_000),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        holder.unlock("", "reuse-b", "holder").unwrap(),
        UnlockStatus::Success
    );
    let answers: Vec<TryLockReply> = (0..2)
        .map(|_| {
            let (h, body) = raw.recv().expect("both requests are answered");
            assert_eq!((h.request_id, h.opcode), (ID, Opcode::LOCK_TRY_LOCK));
            let status = Status::from_code(h.status);
            assert_eq!(status, Status::Ok, "{}", error_message(&body));
            mecha_abi::decode(&body).expect("TryLockReply")
        })
        .collect();
    assert!(answers[0].acquired, "first answer: reuse-b was granted");
    assert!(
        !answers[1].acquired,
        "second answer: reuse-a's wait ran out"
    );
    assert_eq!(answers[1].fencing_token, 0);
    // Nothing else arrives for the id.
    assert!(recv_within(&mut raw, Duration::from_millis(200)).is_none());

    assert_eq!(
        holder.unlock("", "reuse-a", "holder").unwrap(),
        UnlockStatus::Success
    );
    let unlock = mecha_abi::encode(&UnlockRequest {
        store: String::new(),
        resource: "reuse-b".into(),
        owner: "reuser".into(),
    })
    .unwrap();
    let (status, body) = raw.call(req(0x0302, 8), &unlock);
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    let reply: UnlockReply = mecha_abi::decode(&body).unwrap();
    assert_eq!(reply.status, UnlockStatus::Success, "reuser held reuse-b");
    assert_still_open(&mut raw, 9);
    assert_serves_others(d, "reused-id");
}

// ---------------------------------------------------------------- idle connections

/// How many idle connections the case opens when the limits allow.
const IDLE_WANTED: usize = 10_000;
/// The least the case accepts to be meaningful.
const IDLE_MINIMUM: usize = 5_000;

#[test]
fn ten_thousand_idle_connections_do_not_stop_a_normal_client() {
    let _heavy = fd_heavy();
    raise_fd_limit((IDLE_WANTED + FD_RESERVE) as u64);
    idle_connections(&Daemon::start_with(Some(CAPACITY)));
}

/// The embedded default's modules, with the connection quota of a tenant
/// (1024 by default) raised: the cases that hold thousands of connections
/// from this one process measure the daemon's capacity, not the quota,
/// which `daemon/tests/hostile_tenants.rs` checks.
const CAPACITY: &str = "apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: m}
spec:
  quotas:
    default: {maxConnections: 20000}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: lockstore}
spec: {type: lock.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: sequencer}
spec: {type: sequencer.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: configstore}
spec: {type: configuration.memory, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: secretstore}
spec:
  type: secretstores.local.env
  version: v1
  metadata:
  - {name: prefix, value: MECHA_SECRET_}
  - {name: allowedTenants, value: \"*\"}
---
apiVersion: mecha.io/v1alpha1
kind: Component
metadata: {name: invoke}
spec: {type: invoke.mesh, version: v1, metadata: []}
";

/// Up to 10,000 connections held open and idle — half after HELLO (a
/// long-lived client between requests), half before sending a byte. The
/// daemon keeps them all (idle connections are never timed out), a normal
/// client is still served, idle ones at both ends still answer, and closing
/// them all gives every descriptor back.
///
/// Must run with [`FD_HEAVY`] held, on a daemon started after
/// [`raise_fd_limit`].
fn idle_connections(d: &Daemon) {
    let pid = d.pid();
    let baseline_fds = open_fds(pid);
    let ours = raise_fd_limit((IDLE_WANTED + FD_RESERVE) as u64) as usize;
    let n = IDLE_WANTED
        .min(ours.saturating_sub(FD_RESERVE + open_fds(std::process::id())))
        .min(fd_limit_of(pid).saturating_sub(baseline_fds + 100));
    assert!(
        n >= IDLE_MINIMUM,
        "RLIMIT_NOFILE allows only {n} idle connections (this process: {ours}, mechad: {}); \
         the case needs {IDLE_MINIMUM}: raise the hard limit (ulimit -Hn) or run as root",
        fd_limit_of(pid)
    );
    let rss_before = rss_kib(d);

    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = Raw::connect(&d.socket);
        if i % 2 == 0 {
            raw.send(req(0x0001, 1), &hello_payload(1, 1));
        }
        idle.push(raw);
    }
    // The answers are read only now, so the daemon holds every connection
    // (and every queued HELLO) at once.
    for raw in idle.iter_mut().step_by(2) {
        let (h, body) = raw.recv().expect("a HELLO answer");
        assert_eq!(
            Status::from_code(h.status),
            Status::Ok,
            "{}",
            error_message(&body)
        );
    }
    // Slack: connections of an earlier case may still have been closing when
    // the baseline was taken.
    wait_until(
        Duration::from_secs(30),
        "the daemon to accept every connection",
        || open_fds(pid) + 16 >= baseline_fds + n,
    );
    let rss_idle = rss_kib(d);
    let per_connection = rss_idle.saturating_sub(rss_before) as f64 / n as f64;
    eprintln!(
        "{n} idle connections: mechad VmRSS {rss_before} KiB -> {rss_idle} KiB \
         ({per_connection:.1} KiB per connection)"
    );
    assert!(
        per_connection <= IDLE_CONNECTION_BOUND_KIB as f64,
        "an idle connection costs mechad {per_connection:.1} KiB \
         (bound: {IDLE_CONNECTION_BOUND_KIB} KiB)"
    );

    assert_serves_others(d, "idle");
    assert_still_open(&mut idle[0], 2);
    let last_hello = (n - 1) & !1;
    assert_still_open(&mut idle[last_hello], 2);
    // One that never sent a byte can still start.
    let (status, body) = idle[1].call(req(0x0001, 1), &hello_payload(1, 1));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));

    drop(idle);
    wait_for_fds(
        d,
        baseline_fds,
        2,
        "the daemon to close the idle connections",
    );
    assert_serves_others(d, "idle-after");
    // The daemon trims its heap once the connections are gone (glibc would
    // otherwise keep the freed memory): at least half of what they cost is
    // given back to the system.
    let grown = rss_idle.saturating_sub(rss_before);
    let mut rss_after = rss_kib(d);
    wait_until(
        Duration::from_secs(10),
        "mechad to give memory back",
        || {
            rss_after = rss_kib(d);
            rss_after <= rss_before + grown / 2
        },
    );
    eprintln!("after closing them: mechad VmRSS {rss_after} KiB");
}

// ---------------------------------------------------------------- descriptor exhaustion

/// Restores a process's RLIMIT_NOFILE when dropped, also when a check fails.
struct FdLimitGuard {
    pid: libc::pid_t,
    old: libc::rlimit,
}

impl FdLimitGuard {
    /// Lowers `pid`'s soft limit to `soft`, keeping its hard limit.
    fn lower(pid: u32, soft: u64) -> Self {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads `new` and writes `old`, both valid structs.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0, "reading mechad's RLIMIT_NOFILE");
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(
            rc,
            0,
            "lowering mechad's RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        Self { pid, old }
    }
}

impl Drop for FdLimitGuard {
    fn drop(&mut self) {
        // SAFETY: prlimit reads `old`, a valid struct.
        unsafe {
            libc::prlimit(
                self.pid,
                libc::RLIMIT_NOFILE,
                &self.old,
                std::ptr::null_mut(),
            )
        };
    }
}

#[test]
fn out_of_descriptors_new_connections_are_refused_and_established_ones_are_served() {
    out_of_descriptors(&Daemon::start());
}

/// The daemon's descriptor limit is lowered (prlimit) to what it has open
/// plus 32. A connection beyond it is accepted with the descriptor the daemon
/// keeps in reserve and refused at once with RESOURCE_EXHAUSTED (request id
/// 0) and closed, rather than left unanswered in the listen backlog. The
/// daemon does not crash, every established connection (and the module
/// links) keeps working, and once descriptors are freed new connections are
/// served again.
fn out_of_descriptors(d: &Daemon) {
    let pid = d.pid();
    let (mut first, _) = Raw::hello(&d.socket);
    let tight = FdLimitGuard::lower(pid, open_fds(pid) as u64 + 32);

    let mut served = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        // connect() succeeds while the listen backlog has room.
        let mut raw = Raw::connect(&d.socket);
        raw.send(req(0x0001, 1), &hello_payload(1, 1));
        let (h, body) = recv_within(&mut raw, Duration::from_secs(10))
            .expect("every connection is answered, served or refused");
        match Status::from_code(h.status) {
            Status::Ok => served.push(raw),
            Status::ResourceExhausted => {
                assert_eq!(h.request_id, 0, "a connection-level refusal");
                let message = error_message(&body);
                assert!(message.contains("out of file descriptors"), "{message}");
                refused = Some(raw);
                break;
            }
            other => panic!("unexpected {other:?}: {}", error_message(&body)),
        }
    }
    let mut refused = refused.expect("a connection beyond the descriptor limit is refused");
    assert_closed(&mut refused);
    assert!(
        !served.is_empty(),
        "connections up to the limit were served"
    );
    assert_daemon_alive(d);

    // Established connections, and the link to the state module, still work.
    assert_still_open(&mut first, 2);
    let etag = raw_set(&mut first, 3, "fd-limit", b"still served");
    assert_eq!(raw_get(&mut first, 4, "fd-limit").unwrap().etag, etag);
    for raw in served.iter_mut().take(3) {
        assert_still_open(raw, 2);
    }

    // Closing a few connections frees descriptors: new ones get in again.
    served.truncate(served.len().saturating_sub(8));
    let mut again = None;
    wait_until(
        Duration::from_secs(10),
        "a new connection to be served",
        || {
            let mut raw = Raw::connect(&d.socket);
            raw.send(req(0x0001, 1), &hello_payload(1, 1));
            let ok = raw
                .recv()
                .is_some_and(|(h, _)| Status::from_code(h.status) == Status::Ok);
            if ok {
                again = Some(raw);
            }
            ok
        },
    );
    let mut again = again.expect("served");
    assert_still_open(&mut again, 2);

    drop(tight);
    drop((served, again, first));
    assert_serves_others(d, "fd-limit");
}

// ---------------------------------------------------------------- half a frame, then silence

/// The partial-frame timeout the tests run the daemon with (the real one is
/// `PARTIAL_FRAME_TIMEOUT`, 10 s).
const SHORT_PARTIAL_MS: u64 = 600;

/// A daemon whose partial-frame timeout is [`SHORT_PARTIAL_MS`]: started
/// normally, then restarted on the same paths with the test-only variable
/// `MECHA_PARTIAL_FRAME_TIMEOUT_MS` (the harness offers no other way to add
/// an environment variable).
fn start_with_short_partial_timeout() -> Daemon {
    let mut d = Daemon::start_with(Some(CAPACITY));
    let status = d.stop();
    assert!(status.success(), "mechad exited with {status}");
    let mut cmd = d.command();
    cmd.env(
        "MECHA_PARTIAL_FRAME_TIMEOUT_MS",
        SHORT_PARTIAL_MS.to_string(),
    );
    d.child = Some(cmd.spawn().expect("respawning mechad"));
    let socket = d.socket.clone();
    wait_until(Duration::from_secs(20), "mechad to listen again", || {
        UnixStream::connect(&socket).is_ok()
    });
    d
}

#[test]
fn half_a_frame_then_silence_is_disconnected_after_the_timeout() {
    half_frame_then_silence(&start_with_short_partial_timeout());
}

/// A frame must be complete within the partial-frame timeout of its first
/// byte (SPEC §6.9): half a header, or a header and part of its payload, then
/// silence, is closed without an answer once the timeout passes — after the
/// answers to earlier requests have been written. A trickle of bytes does not
/// extend it (the limit is per frame, not per read). Idle connections, before
/// or after HELLO, are never timed out, and a frame arriving in pieces within
/// the limit is served. Needs a daemon from [`start_with_short_partial_timeout`].
fn half_frame_then_silence(d: &Daemon) {
    let limit = Duration::from_millis(SHORT_PARTIAL_MS);
    // Idle from the start; checked at the end, several timeouts later.
    let (mut idle_after_hello, _) = Raw::hello(&d.socket);
    let mut idle_before_hello = Raw::connect(&d.socket);
    let idle_since = Instant::now();

    // A PING, then half of the next header.
    let (mut raw, _) = Raw::hello(&d.socket);
    let mut bytes = frame(0x0002, 2, &[]);
    bytes.extend_from_slice(&req(0x0002, 3).encode()[..10]);
    let start = Instant::now();
    raw.send_bytes(&bytes);
    let (h, _) = raw.recv().expect("the PING before the partial frame");
    assert_eq!((h.request_id, h.opcode), (2, Opcode::PING));
    assert_closed(&mut raw);
    let waited = start.elapsed();
    assert!(
        waited >= limit && waited < Duration::from_secs(5),
        "closed after {waited:?}; the timeout is {limit:?}"
    );

    // A whole header and half its payload.
    let (mut raw, _) = Raw::hello(&d.socket);
    let payload = set_payload("", "half-frame", b"never written");
    let full = frame(0x0102, 2, &payload);
    raw.send_bytes(&full[..HEADER_LEN + payload.len() / 2]);
    assert_closed(&mut raw);

    // One byte every quarter of the limit: closed all the same.
    let (mut raw, _) = Raw::hello(&d.socket);
    let start = Instant::now();
    let mut sent = 0;
    for byte in &full {
        if raw.stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(limit / 4);
    }
    assert!(
        sent < full.len(),
        "the trickle was cut off ({sent} of {} bytes sent in {:?})",
        full.len(),
        start.elapsed()
    );
    assert_closed(&mut raw);

    // A frame in two pieces, well within the limit, is served.
    let (mut raw, _) = Raw::hello(&d.socket);
    let split = frame(0x0102, 2, &set_payload("", "split-frame", b"written"));
    raw.send_bytes(&split[..HEADER_LEN + 3]);
    std::thread::sleep(limit / 3);
    raw.send_bytes(&split[HEADER_LEN + 3..]);
    let (h, body) = raw.recv().expect("the answer to the split frame");
    assert_eq!(h.request_id, 2);
    assert_eq!(
        Status::from_code(h.status),
        Status::Ok,
        "{}",
        error_message(&body)
    );
    assert_still_open(&mut raw, 3);

    // Idle connections outlived several timeouts.
    if let Some(rest) = (limit * 3).checked_sub(idle_since.elapsed()) {
        std::thread::sleep(rest);
    }
    assert_still_open(&mut idle_after_hello, 2);
    let (status, body) = idle_before_hello.call(req(0x0001, 1), &hello_payload(1, 1));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));

    assert!(
        raw_get(&mut idle_after_hello, 3, "half-frame").is_none(),
        "no partial frame was acted on"
    );
    let split = raw_get(&mut idle_after_hello, 4, "split-frame").expect("the split frame");
    assert_eq!(split.value, b"written");
    assert_serves_others(d, "half-frame");
}

// ---------------------------------------------------------------- disconnect in flight

/// Clients in the measured part of the case.
const IN_FLIGHT_CLIENTS: usize = 200;

#[test]
fn clients_disconnecting_with_requests_in_flight_leak_nothing() {
    disconnect_in_flight(&Daemon::start());
}

/// One connection's worth of pipelined work, written at once and then
/// abandoned: HELLO, writes, reads, a sequence id, and a lock wait that is
/// certainly still in the lock module when the client is gone.
fn abandoned_burst(i: usize) -> Vec<u8> {
    let mut b = frame(0x0001, 1, &hello_payload(1, 1));
    for j in 0..8u32 {
        let key = format!("abandoned-{}", (i + j as usize) % 32);
        b.extend(frame(
            0x0102,
            10 + j,
            &set_payload("", &key, &[j as u8; 64]),
        ));
        b.extend(frame(0x0101, 20 + j, &get_payload("", &key)));
    }
    let next = mecha_abi::encode(&NextIdRequest {
        store: String::new(),
        key: "abandoned".into(),
        count: 1,
    })
    .unwrap();
    b.extend(frame(0x0401, 30, &next));
    b.extend(frame(
        0x0301,
        31,
        &try_lock_payload("abandoned-held", "ghost", 500),
    ));
    b
}

fn abandon(d: &Daemon, clients: std::ops::Range<usize>) {
    for i in clients {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.write_all(&abandoned_burst(i)).expect("write the burst");
        drop(s);
    }
}

/// 200 clients each pipeline ~20 requests (one a lock wait the module holds
/// for 500 ms) and disconnect without reading. The daemon discards their
/// answers: every connection's descriptor is closed, the modules keep
/// running (same pids, no restarts) and serve others — lock waits included —
/// and the daemon's RSS does not grow with the number of such clients.
fn disconnect_in_flight(d: &Daemon) {
    let holder = d.client();
    let lease = Duration::from_secs(60);
    assert!(holder
        .try_lock("", "abandoned-held", "holder", lease, None)
        .unwrap()
        .is_some());
    // The modules that run (the embedded default's Dapr personality stays
    // idle until a Dapr caller comes).
    let pids: Vec<(String, u32)> = holder
        .status()
        .unwrap()
        .modules
        .into_iter()
        .filter(|m| m.state == "running")
        .map(|m| (m.name, m.pid))
        .collect();
    let baseline_fds = open_fds(d.pid());

    // A first round takes the allocator to its high-water mark for this many
    // connections at once (freed memory stays with the process); the growth
    // that matters is across a second round of the same size. Measured: the
    // first round adds ~3 MiB, later rounds ~0.5 MiB, then nothing.
    abandon(d, 0..IN_FLIGHT_CLIENTS);
    wait_for_fds(d, baseline_fds, 0, "the warm-up connections to close");
    std::thread::sleep(Duration::from_millis(700));
    let rss_before = rss_kib(d);
    abandon(d, 0..IN_FLIGHT_CLIENTS);
    wait_for_fds(d, baseline_fds, 0, "the abandoned connections to close");
    // Let every lock wait end, so its answer has come back and been dropped.
    std::thread::sleep(Duration::from_millis(700));
    let rss_after = rss_kib(d);
    eprintln!(
        "{IN_FLIGHT_CLIENTS} clients abandoned requests in flight: mechad VmRSS \
         {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "mechad grew from {rss_before} KiB to {rss_after} KiB across \
         {IN_FLIGHT_CLIENTS} abandoning clients"
    );

    let status = holder.status().unwrap();
    for (name, pid) in &pids {
        let m = status.modules.iter().find(|m| &m.name == name).unwrap();
        assert_eq!(
            (m.pid, m.restarts, m.state.as_str()),
            (*pid, 0, "running"),
            "module {name} was not disturbed"
        );
    }
    // The lock module still grants waits: release and wait for the resource.
    let other = d.client();
    let waiter = std::thread::spawn(move || {
        other.try_lock(
            "",
            "abandoned-held",
            "after",
            lease,
            Some(Duration::from_secs(5)),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        holder.unlock("", "abandoned-held", "holder").unwrap(),
        UnlockStatus::Success
    );
    assert!(
        waiter.join().unwrap().unwrap().is_some(),
        "the wait succeeds"
    );
    assert_eq!(
        holder.unlock("", "abandoned-held", "after").unwrap(),
        UnlockStatus::Success
    );
    assert_serves_others(d, "in-flight");
}

// ---------------------------------------------------------------- invalid keys

#[test]
fn invalid_keys_empty_long_and_nul_get_their_documented_answers() {
    invalid_keys(&Daemon::start());
}

/// Keys per SPEC §7.2 (non-empty UTF-8 strings of at most 1024 bytes without
/// NUL, compared byte for byte):
/// - empty: INVALID_ARGUMENT for every state operation, and likewise an empty
///   lock resource (§7.4) or sequence key (§7.5);
/// - NUL bytes (SPEC §7 "Names"): INVALID_ARGUMENT in a get, a set, a bulk
///   and a transaction, and nothing is written under a key cut at the NUL;
/// - longer than 1024 bytes: INVALID_ARGUMENT, also inside a bulk get; a key
///   of exactly 1024 bytes is written, read back, found by BULK_GET, deleted.
fn invalid_keys(d: &Daemon) {
    let (mut raw, _) = Raw::hello(&d.socket);

    let delete = |key: &str| {
        mecha_abi::encode(&DeleteRequest {
            store: String::new(),
            item: DeleteItem {
                key: key.into(),
                etag: None,
            },
        })
        .unwrap()
    };
    let bulk_get = |keys: &[&str]| {
        mecha_abi::encode(&BulkGetRequest {
            store: String::new(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
        .unwrap()
    };
    let transact = mecha_abi::encode(&TransactRequest {
        store: String::new(),
        ops: vec![
            TxOp::Set(set_item("tx-ok", b"v")),
            TxOp::Set(set_item("", b"v")),
        ],
    })
    .unwrap();
    expect_error(
        &mut raw,
        req(0x0103, 1),
        &delete(""),
        Status::InvalidArgument,
    );
    expect_error(
        &mut raw,
        req(0x0104, 2),
        &bulk_get(&["fine", ""]),
        Status::InvalidArgument,
    );
    expect_error(&mut raw, req(0x0106, 3), &transact, Status::InvalidArgument);
    assert!(
        raw_get(&mut raw, 4, "tx-ok").is_none(),
        "transactions are atomic"
    );
    expect_error(
        &mut raw,
        req(0x0301, 5),
        &try_lock_payload("", "owner", 0),
        Status::InvalidArgument,
    );
    let empty_sequence = mecha_abi::encode(&NextIdRequest {
        store: String::new(),
        key: String::new(),
        count: 1,
    })
    .unwrap();
    expect_error(
        &mut raw,
        req(0x0401, 6),
        &empty_sequence,
        Status::InvalidArgument,
    );

    // NUL bytes are refused everywhere, and no key cut at the NUL appears.
    for (i, key) in ["nul\0key", "nul\0"].iter().enumerate() {
        let id = 10 + 4 * i as u32;
        expect_error(
            &mut raw,
            req(0x0102, id),
            &set_payload("", key, b"v"),
            Status::InvalidArgument,
        );
        expect_error(
            &mut raw,
            req(0x0101, id + 1),
            &get_payload("", key),
            Status::InvalidArgument,
        );
        expect_error(
            &mut raw,
            req(0x0104, id + 2),
            &bulk_get(&["fine", key]),
            Status::InvalidArgument,
        );
    }
    let nul_tx = mecha_abi::encode(&TransactRequest {
        store: String::new(),
        ops: vec![
            TxOp::Set(set_item("tx-nul-ok", b"v")),
            TxOp::Set(set_item("a\0b", b"v")),
        ],
    })
    .unwrap();
    expect_error(&mut raw, req(0x0106, 18), &nul_tx, Status::InvalidArgument);
    assert!(
        raw_get(&mut raw, 19, "nul").is_none(),
        "nothing was written under a cut key"
    );
    assert!(
        raw_get(&mut raw, 20, "tx-nul-ok").is_none(),
        "the transaction is atomic"
    );
    // A key one byte over the limit, also inside a bulk get.
    let over = "k".repeat(1025);
    expect_error(
        &mut raw,
        req(0x0104, 21),
        &bulk_get(&["fine", &over]),
        Status::InvalidArgument,
    );

    // A key of exactly the limit.
    raw_set(&mut raw, 22, "nul", b"plain");
    let long_key = "k".repeat(1024);
    let etag = raw_set(&mut raw, 30, &long_key, b"long");
    let entry = raw_get(&mut raw, 31, &long_key).expect("the long key exists");
    assert_eq!((entry.value.as_slice(), &entry.etag), (&b"long"[..], &etag));
    let (status, body) = raw.call(req(0x0104, 32), &bulk_get(&[&long_key, "nul"]));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    let reply: BulkGetReply = mecha_abi::decode(&body).unwrap();
    assert_eq!(reply.items.len(), 2);
    assert_eq!(reply.items[0].key, long_key);
    assert!(reply.items[0].entry.is_some() && reply.items[1].entry.is_some());
    assert!(
        raw_get(&mut raw, 33, &long_key[1..]).is_none(),
        "a key one byte shorter is another key"
    );
    let (status, body) = raw.call(req(0x0103, 34), &delete(&long_key));
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    let reply: DeleteReply = mecha_abi::decode(&body).unwrap();
    assert!(reply.existed);
    assert_still_open(&mut raw, 35);
    assert_serves_others(d, "keys");
}

// ---------------------------------------------------------------- values over the limit

#[test]
fn values_over_the_frame_limit_are_resource_exhausted_then_closed() {
    values_over_the_limit(&Daemon::start());
}

/// A value that makes the payload exceed `max_frame` (4 MiB):
/// - Rust client: it checks the payload against the `max_frame` the daemon
///   announced in HELLO and refuses locally with RESOURCE_EXHAUSTED, without
///   sending anything, so its connection stays usable;
/// - raw: the answer comes as soon as the header is read, without the daemon
///   reading (or buffering) the payload, even while the client is still
///   writing it; then the connection closes.
///
/// Nothing is written either way.
fn values_over_the_limit(d: &Daemon) {
    let max = DEFAULT_MAX_FRAME as usize;
    let client = d.client();
    let err = client
        .set("", "too-big", vec![1u8; max], Default::default())
        .expect_err("a payload over max_frame is refused");
    assert_eq!(
        err.status(),
        Some(Status::ResourceExhausted),
        "the call is refused as too large: {err}"
    );
    assert!(err.to_string().contains("max_frame"), "{err}");
    client.ping().expect("the connection is still usable");

    let (mut raw, _) = Raw::hello(&d.socket);
    let payload = set_payload("", "too-big", &vec![2u8; max]);
    assert!(payload.len() > max);
    // The write fails part-way once the daemon closes; only the answer matters.
    let mut writer = raw.stream.try_clone().unwrap();
    let frame = frame(0x0102, 9, &payload);
    let write = std::thread::spawn(move || writer.write_all(&frame).is_ok());
    let (h, body) = raw.recv().expect("an answer before the payload is read");
    assert_eq!((h.request_id, h.opcode), (9, Opcode(0)));
    assert_eq!(Status::from_code(h.status), Status::ResourceExhausted);
    assert!(error_message(&body).contains(&(payload.len()).to_string()));
    assert_closed(&mut raw);
    assert!(
        !write.join().unwrap(),
        "the daemon did not read the payload"
    );

    assert!(d.client().get("", "too-big").unwrap().is_none());
    assert_serves_others(d, "over-limit");
}

// ---------------------------------------------------------------- connect/disconnect flood

const FLOOD_CYCLES: usize = 2_000;

#[test]
fn a_flood_of_connect_disconnect_cycles_leaves_nothing_behind() {
    flood(&Daemon::start());
}

/// 2,000 connect/disconnect cycles, rotating through: close at once; HELLO,
/// read the answer, close; a few header bytes, close; HELLO and pipelined
/// requests, close without reading. Afterwards every descriptor is back and
/// the daemon serves others.
fn flood(d: &Daemon) {
    let baseline_fds = open_fds(d.pid());
    let hello = frame(0x0001, 1, &hello_payload(1, 1));
    let mut pipelined = hello.clone();
    for id in 2..6 {
        pipelined.extend(frame(0x0101, id, &get_payload("", "flood")));
    }
    for i in 0..FLOOD_CYCLES {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        match i % 4 {
            0 => {}
            1 => {
                s.write_all(&hello).unwrap();
                let mut raw = Raw { stream: s };
                let (h, _) = raw.recv().expect("HELLO answer");
                assert_eq!(Status::from_code(h.status), Status::Ok);
                continue;
            }
            2 => s.write_all(&MAGIC[..3]).unwrap(),
            _ => s.write_all(&pipelined).unwrap(),
        }
    }
    wait_for_fds(d, baseline_fds, 0, "the flood's connections to close");
    assert_serves_others(d, "flood");
}

// ---------------------------------------------------------------- memory through the whole run

/// A hostile case: a check over a running daemon.
type Case = fn(&Daemon);

/// Every case above, in order; the memory test runs them all on one daemon.
const ALL_CASES: &[(&str, Case)] = &[
    ("bad_magic", bad_magic),
    ("frame_version", frame_version),
    ("hello_version", hello_version),
    ("unknown_opcodes", unknown_opcodes),
    ("oversized_length", oversized_length),
    ("undecodable_payloads", undecodable_payloads),
    ("undecodable_hello", undecodable_hello),
    ("first_frame_not_hello", first_frame_not_hello),
    ("bad_header_bits", bad_header_bits),
    ("truncated_frames", truncated_frames),
    ("pipelined_burst", pipelined_burst),
    ("random_blobs", random_blobs),
    ("empty_key_and_zero_ttl", empty_key_and_zero_ttl),
    ("unknown_store", unknown_store),
    ("zero_length_frames", zero_length_frames),
    ("reused_request_id", reused_request_id),
    ("idle_connections", idle_connections),
    ("out_of_descriptors", out_of_descriptors),
    ("half_frame_then_silence", half_frame_then_silence),
    ("disconnect_in_flight", disconnect_in_flight),
    ("invalid_keys", invalid_keys),
    ("values_over_the_limit", values_over_the_limit),
    ("flood", flood),
];

/// How much the daemon's RSS may grow beyond what the idle connections
/// explain. Generous: the point is that nothing grows with the amount of
/// hostile traffic.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// The most RSS one idle connection may cost the daemon (measured: 17 KiB in
/// a debug build — its tasks, the first pages of its read and write buffers,
/// and its write queue's first block).
const IDLE_CONNECTION_BOUND_KIB: u64 = 32;

/// The whole hostile run on one daemon, measuring its RSS before and after.
///
/// glibc keeps memory the daemon has freed instead of returning it to the
/// system, so RSS after the run reflects the run's peak — dominated by the
/// 10,000 idle connections held at once — rather than what is still in use.
/// Measured in a debug build: 9.6 MiB before, ~179 MiB with the idle
/// connections open, ~160-185 MiB after the run; `malloc_stats` shows under
/// 1 MiB in use after they close, and `malloc_trim(0)` brings RSS back to
/// 10 MiB, so this is retention, not a leak. The bound is therefore the idle
/// connections at [`IDLE_CONNECTION_BOUND_KIB`] each plus
/// [`RSS_GROWTH_BOUND_KIB`] for everything else; the cases check leaks of
/// connections (descriptor counts) and requests (`disconnect_in_flight`)
/// more sharply.
#[test]
fn memory_stays_bounded_through_the_whole_hostile_run() {
    let _heavy = fd_heavy();
    raise_fd_limit((IDLE_WANTED + FD_RESERVE) as u64);
    let d = start_with_short_partial_timeout();
    // Warm up: a handshake and a state round trip on both kinds of client.
    assert_serves_others(&d, "warm-up");
    let baseline_fds = open_fds(d.pid());
    let before = rss_kib(&d);

    for (name, case) in ALL_CASES {
        let start = Instant::now();
        case(&d);
        eprintln!(
            "case {name}: {:?}, mechad VmRSS {} KiB",
            start.elapsed(),
            rss_kib(&d)
        );
    }
    wait_for_fds(&d, baseline_fds, 2, "every case's connections to close");
    let after = rss_kib(&d);
    let peak = proc_status_kib(d.pid(), "VmHWM");
    eprintln!("mechad VmRSS: before {before} KiB, after {after} KiB, peak {peak} KiB");

    let bound = before + RSS_GROWTH_BOUND_KIB + IDLE_WANTED as u64 * IDLE_CONNECTION_BOUND_KIB;
    assert!(
        after <= bound,
        "mechad's RSS grew from {before} KiB to {after} KiB over the hostile run \
         (bound: {bound} KiB)"
    );
    assert_serves_others(&d, "after-everything");
}
