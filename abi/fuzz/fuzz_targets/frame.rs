//! Fuzz target `frame`: arbitrary bytes as a connection's byte stream, parsed
//! two ways — by a model built on `mecha_abi::parse_frame` + `Header::decode`,
//! and by the real `mecha_wire::FrameReader` fed in small chunks — which must
//! agree frame for frame and on how the stream ends.
//!
//! The first input byte picks the length limit (low 3 bits) and the read chunk
//! size (high 5 bits); the rest is the stream. Properties: nothing panics; every
//! frame that parses re-encodes (`Header::encode`, `encode_frame`) to exactly
//! its bytes; a rejected header is rejected for the reason it names; and the
//! reader never allocates for a length over the limit (libFuzzer's malloc limit
//! would catch a 4 GiB reservation).
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mecha_abi::{
    encode_frame, parse_frame, Header, HeaderError, DEFAULT_MAX_FRAME, HEADER_LEN, MAGIC,
    MAX_FRAME_CAP,
};
use mecha_wire::{FrameReader, ReadError};
use tokio::io::{AsyncRead, ReadBuf};

/// Length limits worth telling apart: none at all, tiny, and the real ones
/// (the daemon's default and the cap a client reads with).
const LIMITS: [u32; 5] = [0, 16, 4096, DEFAULT_MAX_FRAME, MAX_FRAME_CAP];

/// How a stream of bytes ends, as both parsers must report it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// EOF at a frame boundary.
    Clean,
    /// EOF inside a frame, with this many bytes of it buffered.
    Truncated(usize),
    /// A header failed `Header::decode`.
    Header(HeaderError),
}

type Frames = Vec<(Header, Vec<u8>)>;

/// The reference: repeatedly `parse_frame` over the whole input.
fn model(mut buf: &[u8], max: u32) -> (Frames, End) {
    let mut frames = Vec::new();
    loop {
        match parse_frame(buf, max) {
            Ok(Some(header)) => {
                let total = HEADER_LEN + header.payload_len as usize;
                let (frame, rest) = buf.split_at(total);
                let head = frame.first_chunk::<HEADER_LEN>().expect("a whole header");
                assert_eq!(Header::decode(head, max), Ok(header));
                // Every header byte has a field: the header encoding is canonical.
                assert_eq!(&header.encode(), head);
                let payload = &frame[HEADER_LEN..];
                assert_eq!(encode_frame(header, payload).expect("encodes"), frame);
                frames.push((header, payload.to_vec()));
                buf = rest;
            }
            Ok(None) => {
                // Incomplete: either less than a header, or a header (which
                // passed its checks) whose payload has not fully arrived.
                if let Some(head) = buf.first_chunk::<HEADER_LEN>() {
                    let header = Header::decode(head, max).expect("parse_frame accepted it");
                    assert!(buf.len() < HEADER_LEN + header.payload_len as usize);
                }
                let end = match buf.len() {
                    0 => End::Clean,
                    n => End::Truncated(n),
                };
                return (frames, end);
            }
            Err(e) => {
                match &e {
                    HeaderError::BadMagic { found } => {
                        assert_ne!(*found, MAGIC);
                        assert_eq!(found[..], buf[..4]);
                    }
                    HeaderError::TooLarge {
                        len,
                        max: limit,
                        request_id,
                    } => {
                        assert_eq!(*limit, max);
                        assert!(*len > u64::from(max));
                        assert_eq!(buf[..4], MAGIC);
                        assert_eq!(request_id.to_le_bytes()[..], buf[8..12]);
                    }
                }
                return (frames, End::Header(e));
            }
        }
    }
}

/// An in-memory stream that hands out at most `chunk` bytes per read, so the
/// reader sees headers and payloads split at every possible place.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// The real reader over the same bytes. It never waits (the source is in
/// memory), so one poll with a no-op waker completes each `next()`.
fn through_reader(data: &[u8], max: u32, chunk: usize) -> (Frames, End) {
    let mut reader = FrameReader::new(Chunked { data, chunk }, max);
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = Vec::new();
    loop {
        let Poll::Ready(next) = pin!(reader.next()).as_mut().poll(&mut cx) else {
            panic!("FrameReader waited on a source that never blocks");
        };
        let end = match next {
            Ok(Some((header, payload))) => {
                assert_eq!(payload.len(), header.payload_len as usize);
                frames.push((header, payload.to_vec()));
                continue;
            }
            Ok(None) => End::Clean,
            Err(ReadError::Truncated { buffered }) => End::Truncated(buffered),
            Err(ReadError::Header(e)) => End::Header(e),
            Err(ReadError::Io(e)) => panic!("an in-memory read failed: {e}"),
        };
        return (frames, end);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = LIMITS[usize::from(pick & 7) % LIMITS.len()];
    let chunk = usize::from(pick >> 3) + 1;
    let expected = model(stream, max);
    let actual = through_reader(stream, max, chunk);
    assert!(
        expected == actual,
        "FrameReader disagrees with parse_frame (limit {max}, chunk {chunk}):\n\
         model:  {expected:?}\nreader: {actual:?}"
    );
});
