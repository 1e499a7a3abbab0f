//! A Unix-socket caller's HTTP/2 `:authority`, made acceptable to the gRPC
//! server. gRPC's C core (the Python, Ruby, PHP and C++ SDKs) and grpc-java
//! send a Unix socket's path, percent-encoded, as the authority of every
//! request; that is not a valid URI authority, and the HTTP/2 layer under
//! tonic refuses such a request with a stream reset. grpc-go and others send
//! `localhost`. So the bytes a Unix-socket caller sends pass through this
//! reader, which decodes each header block (HPACK, with the caller's dynamic
//! table), replaces an authority that is not a valid host with `localhost`,
//! and encodes the block again for the server (HPACK, with a table of its
//! own on the server's side). Every other frame passes through untouched.
//! The authority means nothing here: a Unix socket has one host.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size the server accepts (HTTP/2's default, which tonic keeps):
/// re-encoded blocks are cut into frames no larger.
const MAX_FRAME: usize = 16_384;
/// The largest frame this reader holds whole; the server refuses larger ones
/// anyway.
const MAX_BUFFERED_FRAME: usize = 1 << 20;
/// The largest header block (all its frames) this reader decodes; the
/// server's own limit on a decoded header list is smaller.
const MAX_BLOCK: usize = 64 * 1024;
/// The dynamic table size both sides use (HTTP/2's default; the server does
/// not announce another).
const TABLE_SIZE: usize = 4096;

/// A stream whose incoming HTTP/2 header blocks get a valid authority.
pub struct FixAuthority<S> {
    inner: S,
    /// Off for a TCP caller, whose authority is its address: bytes pass
    /// straight through.
    enabled: bool,
    /// Bytes read from `inner`, not yet processed.
    raw: BytesMut,
    /// Processed bytes, for the server to read.
    ready: BytesMut,
    preface_done: bool,
    eof: bool,
    /// The header block being collected: its stream, its HEADERS flags, and
    /// its fragments so far.
    block: Option<(u32, u8, Vec<u8>)>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl<S> FixAuthority<S> {
    /// Passes a TCP caller's bytes through untouched.
    pub fn passthrough(inner: S) -> Self {
        Self {
            enabled: false,
            ..Self::new(inner)
        }
    }

    /// Wraps a freshly accepted Unix-socket connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            enabled: true,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_done: false,
            eof: false,
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }

    /// Moves what `raw` holds whole (the preface, complete frames) to
    /// `ready`, rewriting header blocks. `Ok(false)` when more bytes are
    /// needed.
    fn process(&mut self) -> std::io::Result<bool> {
        if !self.preface_done {
            if self.raw.len() < PREFACE.len() {
                return Ok(false);
            }
            self.preface_done = true;
            let preface = self.raw.split_to(PREFACE.len());
            self.ready.extend_from_slice(&preface);
            return Ok(true);
        }
        if self.raw.len() < FRAME_HEADER {
            return Ok(false);
        }
        let len = usize::from(self.raw[0]) << 16
            | usize::from(self.raw[1]) << 8
            | usize::from(self.raw[2]);
        if len > MAX_BUFFERED_FRAME {
            return Err(invalid("an HTTP/2 frame over 1 MiB"));
        }
        if self.raw.len() < FRAME_HEADER + len {
            return Ok(false);
        }
        let (kind, flags) = (self.raw[3], self.raw[4]);
        let stream =
            u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]]) & 0x7fff_ffff;
        let frame = self.raw.split_to(FRAME_HEADER + len);
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS if self.block.is_none() => {
                let fragment = headers_fragment(payload, flags)?;
                self.block = Some((stream, flags, fragment.to_vec()));
            }
            CONTINUATION if self.block.as_ref().is_some_and(|(s, _, _)| *s == stream) => {
                if let Some((_, _, block)) = &mut self.block {
                    block.extend_from_slice(payload);
                }
            }
            // Anything else (also a frame that breaks header-block rules,
            // which the server then refuses itself) passes as it came.
            _ => {
                self.ready.extend_from_slice(&frame);
                return Ok(true);
            }
        }
        if self
            .block
            .as_ref()
            .is_some_and(|(_, _, b)| b.len() > MAX_BLOCK)
        {
            return Err(invalid("an HTTP/2 header block over 64 KiB"));
        }
        if flags & END_HEADERS != 0 {
            if let Some((stream, first_flags, block)) = self.block.take() {
                self.rewrite(stream, first_flags & END_STREAM, &block)?;
            }
        }
        Ok(true)
    }

    /// Decodes one header block, fixes its authority, and queues it again
    /// as HEADERS (and CONTINUATION) frames no larger than [`MAX_FRAME`].
    fn rewrite(&mut self, stream: u32, end_stream: u8, block: &[u8]) -> std::io::Result<()> {
        let mut headers = self
            .decoder
            .decode(block)
            .map_err(|e| invalid(&format!("an HTTP/2 header block: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !valid_host(value) {
                *value = b"localhost".to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut kind = HEADERS;
        let mut flags = end_stream;
        // An empty block still needs its one HEADERS frame.
        if chunks.peek().is_none() {
            self.frame(HEADERS, end_stream | END_HEADERS, stream, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.frame(
                kind,
                flags | if last { END_HEADERS } else { 0 },
                stream,
                chunk,
            );
            kind = CONTINUATION;
            flags = 0;
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len().to_be_bytes();
        self.ready.extend_from_slice(&len[len.len() - 3..]);
        self.ready.extend_from_slice(&[kind, flags]);
        self.ready.extend_from_slice(&stream.to_be_bytes());
        self.ready.extend_from_slice(payload);
    }
}

/// The header block fragment of a HEADERS frame's payload: without its
/// padding and priority fields.
fn headers_fragment(payload: &[u8], flags: u8) -> std::io::Result<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(
            *payload
                .first()
                .ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?,
        );
        start = 1;
        end = end
            .checked_sub(pad)
            .ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload
        .get(start..end)
        .ok_or_else(|| invalid("a HEADERS frame shorter than its fields"))
}

/// Whether `value` is a host (and port) an HTTP authority may carry: what a
/// TCP caller sends. A percent-encoded path is not.
fn valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(b))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.process()? {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.raw.extend_from_slice(read.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The header blocks of `bytes` (after the preface), decoded.
    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let (mut blocks, mut block) = (Vec::new(), Vec::new());
        while rest.len() >= FRAME_HEADER {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                assert!(len <= MAX_FRAME);
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).expect("valid block"));
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_the_rest_is_kept() {
        // A client that indexes its headers: the second request refers to the
        // first one's entries in its dynamic table.
        let mut client = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/dapr.proto.runtime.v1.Dapr/GetState"),
            (b":authority", b"%2Ftmp%2Fdapr.sock"),
            (b"dapr-api-token", b"t0k"),
        ];
        let block1 = client.encode(first.iter().copied());
        let block2 = client.encode(first.iter().copied());
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        // The first block is split over HEADERS (padded, with priority) and
        // CONTINUATION.
        let (a, b) = block1.split_at(block1.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0, 0, 0, 0, 16]);
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        wire.extend(frame(0x0, END_STREAM, 1, b"payload"));
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));
        let (mut near, far) = tokio::io::duplex(1 << 20);
        near.write_all(&wire).await.expect("write");
        drop(near);
        let mut fixed = FixAuthority::new(far);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        assert!(out.starts_with(PREFACE));
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block
                .iter()
                .find(|(n, _)| n == b":authority")
                .expect("authority");
            assert_eq!(authority.1, b"localhost");
            let token = block
                .iter()
                .find(|(n, _)| n == b"dapr-api-token")
                .expect("token");
            assert_eq!(token.1, b"t0k");
            assert_eq!(block.len(), 5);
        }
        let data = frame(0x0, END_STREAM, 1, b"payload");
        assert!(
            out.windows(data.len()).any(|w| w == data.as_slice()),
            "DATA passes untouched"
        );
    }

    #[test]
    fn hosts_are_valid_and_paths_are_not() {
        assert!(valid_host(b"localhost"));
        assert!(valid_host(b"127.0.0.1:50001"));
        assert!(valid_host(b"[::1]:50001"));
        assert!(!valid_host(b"%2Ftmp%2Fdapr.sock"));
        assert!(!valid_host(b"/tmp/dapr.sock"));
        assert!(!valid_host(b""));
    }

    #[tokio::test]
    async fn an_oversized_block_ends_the_connection() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 0, 1, &[0x40; 16_000]));
        for _ in 0..5 {
            wire.extend(frame(CONTINUATION, 0, 1, &[0x40; 16_000]));
        }
        let (mut near, far) = tokio::io::duplex(1 << 20);
        near.write_all(&wire).await.expect("write");
        drop(near);
        let mut out = Vec::new();
        let err = FixAuthority::new(far)
            .read_to_end(&mut out)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
