//! Hostile and malformed input against the real mechad (SPEC.md §4, §6): every
//! case checks the exact answer, whether the connection stays open, and that
//! the daemon keeps serving other connections afterwards.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{error_message, Daemon, Raw};
use mecha_abi::msg::{
    BulkSetRequest, ErrorBody, GetRequest, Hello, SetItem, SetReply, SetRequest, StateEntry,
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
    let d = Daemon::start();
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

    assert_serves_others(&d, "bad-magic");
}

// ---------------------------------------------------------------- §6.1 / §6.5 versions

#[test]
fn frame_with_another_version_is_unsupported_and_connection_stays_open() {
    let d = Daemon::start();
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
    assert_serves_others(&d, "frame-version");
}

#[test]
fn hello_without_a_common_version_is_unsupported_then_closed() {
    let d = Daemon::start();
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

    assert_serves_others(&d, "hello-version");
}

// ---------------------------------------------------------------- §6.6 opcodes

#[test]
fn unknown_and_link_opcodes_are_unknown_opcode_and_connection_stays_open() {
    let d = Daemon::start();
    let (mut raw, _) = Raw::hello(&d.socket);
    let opcodes = [
        0x7701u16, 0xF001, 0xF002, 0xF003, 0x0000, 0x0007, 0x0107, 0xFFFF,
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
    assert_serves_others(&d, "opcodes");
}

// ---------------------------------------------------------------- §6.4 frame too large

#[test]
fn oversized_payload_len_is_resource_exhausted_then_closed() {
    let d = Daemon::start();
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

    assert_serves_others(&d, "oversized");
}

// ---------------------------------------------------------------- §6.7 undecodable payloads

#[test]
fn undecodable_state_payloads_are_invalid_argument_and_nothing_is_lost() {
    let d = Daemon::start();
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
    assert_serves_others(&d, "undecodable");
}

#[test]
fn undecodable_hello_is_invalid_argument_then_closed() {
    let d = Daemon::start();
    let mut raw = Raw::connect(&d.socket);
    let mut payload = hello_payload(1, 1);
    payload.push(0);
    expect_error(&mut raw, req(0x0001, 1), &payload, Status::InvalidArgument);
    assert_closed(&mut raw);
    assert_serves_others(&d, "bad-hello");
}

// ---------------------------------------------------------------- §6.1 handshake order

#[test]
fn first_frame_not_hello_is_invalid_argument_then_closed() {
    let d = Daemon::start();
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

    assert_serves_others(&d, "not-hello");
}

// ---------------------------------------------------------------- §6.5 header bits

#[test]
fn bad_header_bits_are_invalid_argument_and_connection_stays_open() {
    let d = Daemon::start();
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

    assert_serves_others(&d, "header-bits");
}

// ---------------------------------------------------------------- §6.9 truncated frames

#[test]
fn truncated_frames_and_abandoned_connections_do_not_hurt_the_daemon() {
    let d = Daemon::start();
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
    assert_serves_others(&d, "truncated");
}

// ---------------------------------------------------------------- pipelining

#[test]
fn pipelined_burst_with_bad_frames_is_answered_by_id() {
    let d = Daemon::start();
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
    assert_serves_others(&d, "burst");
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
        assert_eq!(
            (h.ext, h.deadline_ms),
            (0, 0),
            "blob {i}: ext and deadline are 0"
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
    let mut d = Daemon::start();
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

    assert!(
        d.child
            .as_mut()
            .unwrap()
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "mechad exited during the fuzz loop"
    );
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
    assert_serves_others(&d, "fuzz");
}

// ---------------------------------------------------------------- §7.2 field rules

#[test]
fn empty_key_and_zero_ttl_are_invalid_argument() {
    let d = Daemon::start();
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
    assert_still_open(&mut raw, 7);
    assert_serves_others(&d, "field-rules");
}

/// SPEC.md §7.2: "a name that is not a configured state component is answered
/// NOT_FOUND with a message naming the store" (for every state operation).
#[test]
fn unknown_store_is_invalid_argument_naming_the_store() {
    let d = Daemon::start();
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
    assert_serves_others(&d, "unknown-store");
}
