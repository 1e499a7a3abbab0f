//! Tokio framing shared by `mechad`, the module SDK and the Rust client.
//!
//! [`FrameReader`] owns its read buffer and yields whole frames, checking the
//! length against the limit before buffering a payload. [`Outbox`] queues
//! frames for a socket and writes them from the queueing task when the socket
//! takes them at once (the router's fast path: no hand-off per frame);
//! [`write_loop`] is the simpler channel-and-task writer, which drains a
//! bounded channel onto a socket, coalescing every frame already queued into
//! one flush.
// The one exception is registering an owned descriptor with the reactor in
// `sock.rs`, each with its SAFETY argument.
#![deny(unsafe_code)]

pub mod fdstream;
mod outbox;
pub mod session;
pub mod sock;

pub use outbox::{Closed, Outbox, Unflushed, WeakOutbox};

use bytes::{Bytes, BytesMut};
use mecha_abi::{parse_frame, Header, HeaderError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Why no further frame can be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The header is invalid; the stream cannot be resynchronised.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame with {buffered} bytes of a partial frame buffered")]
    Truncated {
        /// How many bytes of the partial frame had arrived.
        buffered: usize,
    },
}

/// Reads whole frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_payload: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`, accepting payloads of at most `max_payload` bytes.
    pub fn new(inner: R, max_payload: u32) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max_payload,
        }
    }

    /// Returns the next frame, or `Ok(None)` on a clean EOF at a frame boundary.
    pub async fn next(&mut self) -> Result<Option<(Header, Bytes)>, ReadError> {
        loop {
            if let Some(header) = parse_frame(&self.buf, self.max_payload)? {
                let mut frame = self.buf.split_to(HEADER_LEN + header.payload_len as usize);
                let payload = frame.split_off(HEADER_LEN).freeze();
                return Ok(Some((header, payload)));
            }
            // The header (if present) passed the length check, so reserving room
            // for the rest of this frame is bounded by the configured maximum.
            if self.buf.len() >= HEADER_LEN {
                let want = HEADER_LEN
                    + u32::from_le_bytes([self.buf[20], self.buf[21], self.buf[22], self.buf[23]])
                        as usize;
                self.buf.reserve(want.saturating_sub(self.buf.len()));
            } else {
                self.buf.reserve(4096);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }

    /// Discards the frame whose header [`FrameReader::next`] just refused
    /// with [`HeaderError::TooLarge`] — its header and its whole declared
    /// payload, read in bounded steps and never held — so that the next frame
    /// can be read. Only for a peer trusted to frame correctly (a module
    /// link, whose oversized answer fails one request, not the link); an
    /// application's stream is closed instead, since its length may be a lie.
    pub async fn skip_frame(&mut self) -> Result<(), ReadError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(());
        }
        let len = u32::from_le_bytes([self.buf[20], self.buf[21], self.buf[22], self.buf[23]]);
        let mut remaining = HEADER_LEN as u64 + u64::from(len);
        loop {
            let take = remaining.min(self.buf.len() as u64);
            // `take` fits in usize: it is at most the buffer's length.
            bytes::Buf::advance(&mut self.buf, take as usize);
            remaining -= take;
            if remaining == 0 {
                return Ok(());
            }
            self.buf.reserve(64 * 1024);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Truncated { buffered: 0 });
            }
        }
    }

    /// True when a whole frame (or a header that will fail to parse) is
    /// already buffered, so [`FrameReader::next`] returns without reading.
    /// Callers that batch writes flush when this is false, before they wait.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < HEADER_LEN {
            return false;
        }
        match parse_frame(&self.buf, self.max_payload) {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => false,
        }
    }

    /// How many bytes have been read from the stream but not yet returned as
    /// part of a frame. 0 means the reader is at a frame boundary with nothing
    /// read ahead; anything else means a frame has begun to arrive (or, after
    /// a pipelined read, that whole frames are waiting to be returned).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying reader, mutably (reading from it directly would lose
    /// the stream's framing; this is for adjusting a wrapper's state).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Takes the bytes read ahead of the next frame (a partial frame, or
    /// whole frames not yet returned), leaving the reader at a boundary with
    /// nothing buffered. With [`FrameReader::prime`] a stream moves between
    /// readers (or processes) without losing or splitting a frame.
    pub fn take_buffered(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Puts `bytes` in front of whatever is read next, as if they had just
    /// been read from the stream: the counterpart of
    /// [`FrameReader::take_buffered`].
    pub fn prime(&mut self, bytes: &[u8]) {
        let rest = self.buf.split();
        self.buf.extend_from_slice(bytes);
        self.buf.unsplit(rest);
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Gives the underlying reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// One frame queued for a writer: header, an optional prefix (the tenant on
/// module links), the payload, and a guard dropped once the frame is handed to
/// the socket.
///
/// Keeping the parts separate lets the router forward payload bytes without
/// copying them into a new buffer; the guard lets a connection count a response
/// as outstanding until it has really left for the socket.
#[derive(Debug)]
pub struct OutFrame<G = ()> {
    /// The encoded header; its `payload_len` covers prefix and payload.
    pub header: [u8; HEADER_LEN],
    /// Bytes sent between header and payload (empty on application sockets).
    pub prefix: Bytes,
    /// The payload bytes.
    pub payload: Bytes,
    /// Dropped after the frame has been handed to the socket.
    pub guard: G,
}

impl OutFrame<()> {
    /// A frame with `header` (whose length is set from `payload`) and no guard.
    pub fn new(header: Header, payload: impl Into<Bytes>) -> Self {
        OutFrame::guarded(header, Bytes::new(), payload.into(), ())
    }
}

impl<G> OutFrame<G> {
    /// A frame with a prefix and a guard; the header's length is set from both.
    ///
    /// Lengths are bounded by the frame limits checked on the way in, so the
    /// saturating conversion only matters for a caller bug, which the peer then
    /// sees as a length mismatch rather than this process panicking.
    pub fn guarded(mut header: Header, prefix: Bytes, payload: Bytes, guard: G) -> Self {
        header.payload_len = u32::try_from(prefix.len() + payload.len()).unwrap_or(u32::MAX);
        Self {
            header: header.encode(),
            prefix,
            payload,
            guard,
        }
    }
}

/// Writes every frame received on `rx` to `w` until the channel closes or the
/// socket fails. Frames already queued are written before one flush, so many
/// pipelined responses leave in one system call.
pub async fn write_loop<W: AsyncWrite + Unpin, G>(
    w: W,
    mut rx: mpsc::Receiver<OutFrame<G>>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(frame) = rx.recv().await {
        write_one(&mut w, frame).await?;
        while let Ok(more) = rx.try_recv() {
            write_one(&mut w, more).await?;
        }
        w.flush().await?;
    }
    w.flush().await?;
    w.shutdown().await
}

async fn write_one<W: AsyncWrite + Unpin, G>(w: &mut W, frame: OutFrame<G>) -> std::io::Result<()> {
    w.write_all(&frame.header).await?;
    w.write_all(&frame.prefix).await?;
    w.write_all(&frame.payload).await?;
    drop(frame.guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mecha_abi::{encode_frame, Opcode};

    #[tokio::test]
    async fn frames_split_across_reads_reassemble() {
        let a = encode_frame(Header::request(Opcode::PING, 1), b"").unwrap();
        let b = encode_frame(Header::request(Opcode::STATUS, 2), b"hello").unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let (mut tx, rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            tx.write_all(&all).await.unwrap();
        });
        let mut r = FrameReader::new(rx, 1024);
        let (h1, p1) = r.next().await.unwrap().unwrap();
        assert_eq!((h1.opcode, p1.len()), (Opcode::PING, 0));
        let (h2, p2) = r.next().await.unwrap().unwrap();
        assert_eq!((h2.opcode, &p2[..]), (Opcode::STATUS, &b"hello"[..]));
        writer.await.unwrap();
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_can_be_skipped_to_read_the_next() {
        let big = encode_frame(Header::request(Opcode::STATUS, 1), &[7u8; 100_000]).unwrap();
        let next = encode_frame(Header::request(Opcode::PING, 2), b"ok").unwrap();
        let mut all = big;
        all.extend_from_slice(&next);
        let (mut tx, rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            tx.write_all(&all).await.unwrap();
        });
        let mut r = FrameReader::new(rx, 1024);
        assert!(matches!(
            r.next().await,
            Err(ReadError::Header(HeaderError::TooLarge {
                request_id: 1,
                ..
            }))
        ));
        r.skip_frame().await.unwrap();
        let (h, p) = r.next().await.unwrap().unwrap();
        assert_eq!((h.request_id, &p[..]), (2, &b"ok"[..]));
        writer.await.unwrap();
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_mid_frame_is_truncated_and_oversize_is_rejected_early() {
        let f = encode_frame(Header::request(Opcode::PING, 1), b"abc").unwrap();
        let mut r = FrameReader::new(&f[..f.len() - 1], 1024);
        assert!(matches!(r.next().await, Err(ReadError::Truncated { .. })));
        let mut r = FrameReader::new(&f[..HEADER_LEN], 2);
        assert!(matches!(
            r.next().await,
            Err(ReadError::Header(HeaderError::TooLarge { len: 3, .. }))
        ));
    }

    #[tokio::test]
    async fn buffered_counts_a_partial_frame_and_survives_cancellation() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let f = encode_frame(Header::request(Opcode::STATUS, 3), b"hello").unwrap();
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(rx, 1024);
        assert_eq!(r.buffered(), 0);
        tx.write_all(&f[..10]).await.unwrap();
        {
            // One poll reads what has arrived, then waits for the rest; the
            // future is then dropped, as a timeout would drop it.
            let mut next = std::pin::pin!(r.next());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(next.as_mut().poll(&mut cx), Poll::Pending));
        }
        assert_eq!(r.buffered(), 10, "the partial frame is kept");
        tx.write_all(&f[10..]).await.unwrap();
        let (h, p) = r.next().await.unwrap().unwrap();
        assert_eq!((h.request_id, &p[..]), (3, &b"hello"[..]));
        assert_eq!(r.buffered(), 0, "back at a frame boundary");
    }
}
