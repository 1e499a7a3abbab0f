//! Criterion micro-benchmarks of the ABI codec: the 24-byte header, whole-frame encoding, and bincode payloads of typical messages.
//!
//! Run with `cargo bench -p mecha-bench --bench codec` (add `-- --quick` for a
//! short run). Results and their reading are in BENCHMARKS.md, "Micro-benchmarks".

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mecha_abi::msg::{
    ErrorBody, GetRequest, PublishRequest, SetItem, SetReply, SetRequest, StateEntry,
};
use mecha_abi::{Header, Opcode, DEFAULT_MAX_FRAME, HEADER_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The two value sizes of the suite: the 100 B of the end-to-end benchmarks,
/// and a 4 KiB value, where copying the bytes starts to dominate.
const SIZES: [(&str, usize); 2] = [("100B", 100), ("4KiB", 4096)];

/// A value of `len` bytes. The contents do not matter to bincode, which copies
/// byte buffers whole, but varied bytes keep the data from looking special.
fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A header with every field non-zero, as the daemon forwards it to a module.
fn forwarded_header() -> Header {
    let mut h = Header::request(Opcode::STATE_SET, 0x0102_0304);
    h.ext = 8;
    h.deadline_ms = 5_000;
    h.payload_len = 140;
    h
}

fn header(c: &mut Criterion) {
    let h = forwarded_header();
    let bytes = h.encode();
    // A complete frame, so that parse_frame gets past the "wait for more
    // bytes" check and returns the header, as it does for every frame read.
    let frame = mecha_abi::encode_frame(h, &value(140)).expect("frame");

    let mut group = c.benchmark_group("header");
    group.throughput(Throughput::Bytes(HEADER_LEN as u64));
    group.bench_function("encode", |b| b.iter(|| black_box(&h).encode()));
    group.bench_function("decode", |b| {
        b.iter(|| Header::decode(black_box(&bytes), DEFAULT_MAX_FRAME))
    });
    group.bench_function("parse_frame", |b| {
        b.iter(|| mecha_abi::parse_frame(black_box(&frame), DEFAULT_MAX_FRAME))
    });
    group.finish();
}

fn encode_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_frame");
    for (label, len) in SIZES {
        let payload = value(len);
        group.throughput(Throughput::Bytes((HEADER_LEN + len) as u64));
        // encode_frame copies header and payload into one new buffer; the
        // result is dropped inside the timed loop, so the figure includes one
        // allocation and one free, as it does for a client sending a frame.
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| mecha_abi::encode_frame(forwarded_header(), black_box(&payload)))
        });
    }
    group.finish();
}

/// Benchmarks `mecha_abi::encode` and `mecha_abi::decode` of each value in
/// `cases`, in a group named after the message. Throughput is the encoded
/// size, so the two sizes of one message can be compared as bytes per second.
///
/// Encoded and decoded values are dropped inside the timed loop: every
/// payload the daemon or a module produces is freed again, so the allocator's
/// share belongs in the figure.
fn payload<T: Serialize + DeserializeOwned>(c: &mut Criterion, message: &str, cases: &[(&str, T)]) {
    let mut group = c.benchmark_group(format!("payload/{message}"));
    for (label, value) in cases {
        let bytes = mecha_abi::encode(value).expect("encode");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| mecha_abi::encode(black_box(value)).expect("encode"))
        });
        group.bench_function(BenchmarkId::new("decode", label), |b| {
            b.iter(|| mecha_abi::decode::<T>(black_box(&bytes)).expect("decode"))
        });
    }
    group.finish();
}

fn payloads(c: &mut Criterion) {
    // The key of SPEC.md's golden vectors, and the default store (empty name),
    // as the benchmark clients send them.
    let key = "order:1001";
    payload(
        c,
        "state_get_request",
        &[(
            "key",
            GetRequest {
                store: String::new(),
                key: key.into(),
            },
        )],
    );
    let entries: Vec<(&str, StateEntry)> = SIZES
        .iter()
        .map(|&(label, len)| {
            (
                label,
                StateEntry {
                    value: value(len),
                    etag: "41".into(),
                },
            )
        })
        .collect();
    payload(c, "state_get_reply", &entries);
    let sets: Vec<(&str, SetRequest)> = SIZES
        .iter()
        .map(|&(label, len)| {
            (
                label,
                SetRequest {
                    store: String::new(),
                    item: SetItem {
                        key: key.into(),
                        value: value(len),
                        etag: None,
                        ttl_ms: None,
                    },
                },
            )
        })
        .collect();
    payload(c, "state_set_request", &sets);
    payload(
        c,
        "state_set_reply",
        &[("etag", SetReply { etag: "42".into() })],
    );
    let publishes: Vec<(&str, PublishRequest)> = SIZES
        .iter()
        .map(|&(label, len)| {
            (
                label,
                PublishRequest {
                    store: String::new(),
                    topic: "orders".into(),
                    data: value(len),
                    content_type: "application/json".into(),
                    metadata: Vec::new(),
                    raw: false,
                },
            )
        })
        .collect();
    payload(c, "pubsub_publish_request", &publishes);
    // A message the daemon really sends (link.rs), of a typical length.
    payload(
        c,
        "error_body",
        &[(
            "message",
            ErrorBody {
                message: "module state is unavailable: its link closed before the request was sent"
                    .into(),
            },
        )],
    );
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = header, encode_frame, payloads
}
criterion_main!(benches);
