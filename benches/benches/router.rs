//! Criterion micro-benchmarks of the router's per-frame work that lives in reusable crates: reading pipelined frames, rewriting a header for a module link, and writing a batch.
//!
//! Run with `cargo bench -p mecha-bench --bench router` (add `-- --quick` for
//! a short run). Results and their reading are in BENCHMARKS.md,
//! "Micro-benchmarks".
//!
//! The streams are in memory (`&[u8]` to read from, `tokio::io::sink()` to
//! write to), so no system call is timed: what is left is the framing code's
//! own cost, which the end-to-end benchmarks cannot separate from the kernel's.

mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mecha_abi::msg::{SetItem, SetRequest};
use mecha_abi::{Flags, Header, Opcode, TraceContext, DEFAULT_MAX_FRAME, HEADER_LEN, TRACE_LEN};
use mecha_wire::{write_loop, FrameReader, OutFrame};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Pipeline depths: one request, a small batch, and a deep pipeline.
const DEPTHS: [u32; 3] = [1, 8, 64];

/// The tenant prefix the daemon puts in front of every forwarded payload.
/// Tenants are short names; this one has the length of a typical app id.
const TENANT: &[u8] = b"checkout";

/// The per-request deadline the router stamps on a forwarded frame.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One current-thread runtime without I/O or timer drivers, as nothing here
/// waits on either: the in-memory reader and the sink are always ready, so
/// `block_on` measures the framing code plus the runtime's fixed entry cost,
/// which the `runtime/block_on` benchmark measures alone.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// The payload of the end-to-end benchmarks' write: a STATE_SET with a
/// 100-byte value.
fn set_payload() -> Bytes {
    let request = SetRequest {
        store: String::new(),
        item: SetItem {
            key: "order:1001".into(),
            value: vec![b'v'; 100],
            etag: None,
            ttl_ms: None,
        },
    };
    Bytes::from(mecha_abi::encode(&request).expect("encode"))
}

/// `n` STATE_SET request frames back to back, as a pipelining client sends them.
fn pipelined(n: u32, payload: &[u8]) -> Vec<u8> {
    (0..n)
        .flat_map(|id| {
            mecha_abi::encode_frame(Header::request(Opcode::STATE_SET, id), payload).expect("frame")
        })
        .collect()
}

/// The fixed cost every async benchmark below pays once per iteration, so
/// that it can be subtracted from them.
fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("runtime");
    group.bench_function("block_on", |b| b.iter(|| rt.block_on(async {})));
    group.finish();
}

fn frame_reader(c: &mut Criterion) {
    let rt = runtime();
    let payload = set_payload();
    let mut group = c.benchmark_group("frame_reader");
    for n in DEPTHS {
        let stream = pipelined(n, &payload);
        group.throughput(Throughput::Elements(u64::from(n)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &stream, |b, stream| {
            b.iter_batched(
                // A new reader per iteration, made outside the timed part: its
                // 8 KiB buffer is allocated once per connection in the daemon.
                || FrameReader::new(&stream[..], DEFAULT_MAX_FRAME),
                |mut reader| {
                    rt.block_on(async {
                        let mut frames = 0;
                        while let Some((header, payload)) = reader.next().await.expect("frame") {
                            black_box((header, payload));
                            frames += 1;
                        }
                        assert_eq!(frames, n);
                    });
                    // Returned, so that freeing the buffer is not timed either.
                    reader
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// What `Link::forward` (daemon/src/link.rs) does to each request on its way
/// to a module, minus the pending-table insert and the channel send: decode
/// the header, give it the link's request id, the tenant prefix length and
/// the deadline, and wrap header, prefix and payload in an `OutFrame`.
/// The payload is moved, never copied; the tenant `Bytes` is shared.
fn rewrite(
    head: &[u8; HEADER_LEN],
    id: u32,
    tenant: &Bytes,
    trace: Option<TraceContext>,
    payload: Bytes,
) -> OutFrame {
    let mut out = Header::decode(head, DEFAULT_MAX_FRAME).expect("header");
    out.request_id = id;
    out.ext = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
    out.deadline_ms = u32::try_from(TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let prefix = match trace {
        None => tenant.clone(),
        Some(ctx) => {
            out.flags = Flags(out.flags.0 | Flags::TRACE);
            let mut p = BytesMut::with_capacity(tenant.len() + TRACE_LEN);
            p.extend_from_slice(tenant);
            p.extend_from_slice(&ctx.encode());
            p.freeze()
        }
    };
    OutFrame::guarded(out, prefix, payload, ())
}

fn header_rewrite(c: &mut Criterion) {
    let payload = set_payload();
    let head = Header::request(Opcode::STATE_SET, 7).encode();
    let tenant = Bytes::from_static(TENANT);
    let trace = TraceContext {
        trace_id: [0x4b; 16],
        parent_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        flags: 1,
    };
    let mut group = c.benchmark_group("header_rewrite");
    group.throughput(Throughput::Elements(1));
    for (label, trace) in [("untraced", None), ("traced", Some(trace))] {
        group.bench_function(label, |b| {
            b.iter_batched(
                // The payload handle is cloned outside the timed part because
                // the router owns it already; the frame is returned so that
                // dropping it (the writer's job) is not timed.
                || payload.clone(),
                |payload| rewrite(black_box(&head), black_box(42), &tenant, trace, payload),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn write_batch(c: &mut Criterion) {
    let rt = runtime();
    let payload = set_payload();
    let tenant = Bytes::from_static(TENANT);
    let head = Header::request(Opcode::STATE_SET, 7).encode();
    let mut group = c.benchmark_group("write_loop");
    // Zero frames first, before any throughput is set: the loop's fixed cost
    // per call (its 64 KiB BufWriter, the final flush and shutdown), which the
    // daemon pays once per connection rather than once per batch.
    for n in std::iter::once(0).chain(DEPTHS) {
        if n > 0 {
            group.throughput(Throughput::Elements(u64::from(n)));
        }
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                // The queue is filled and closed outside the timed part, so
                // the loop drains all `n` frames in one batch with one flush
                // and then ends, as a connection's writer does after a burst.
                || {
                    let (tx, rx) = mpsc::channel(n.max(1) as usize);
                    for id in 0..n {
                        let frame = rewrite(&head, id, &tenant, None, payload.clone());
                        tx.try_send(frame).expect("queue has room");
                    }
                    rx
                },
                |rx| {
                    rt.block_on(write_loop(tokio::io::sink(), rx))
                        .expect("sink")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = overhead, frame_reader, header_rewrite, write_batch
}
criterion_main!(benches);
