//! One HTTP/1.1 connection on a tokio stream, read through a buffer, for
//! servers (one request head) and clients (response heads and bodies,
//! whole or chunk by chunk, on a connection that may be kept alive).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{parse_chunk, parse_request, parse_response, Chunk, Error, RequestHead, ResponseHead};

/// How much more buffer each read asks for.
const READ_SIZE: usize = 16 << 10;

/// A stream and the bytes read from it that no message has used yet.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The stream, to set socket options.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Writes `bytes` (a whole message or part of one) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Shuts the write side down, after an answer that closes the connection.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads a request head of at most `limit` bytes.
    pub async fn request_head(&mut self, limit: usize) -> Result<RequestHead, Error> {
        self.parse(|buf| parse_request(buf, limit)).await
    }

    /// Reads a response head of at most `limit` bytes. [`Error::Closed`]
    /// means the server closed the connection before answering at all, which
    /// on a kept-alive connection means it closed while idle: the request
    /// may be sent again on a new one.
    pub async fn response_head(&mut self, limit: usize) -> Result<ResponseHead, Error> {
        self.parse(|buf| parse_response(buf, limit)).await
    }

    /// Reads the whole body `head` announces, at most `max` bytes.
    pub async fn body(&mut self, head: &ResponseHead, max: usize) -> Result<Vec<u8>, Error> {
        if head.chunked {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk(max - body.len()).await? {
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        match head.length {
            Some(length) if length > max => Err(Error::TooLarge("the body")),
            Some(length) => {
                while self.buf.len() < length {
                    if self.fill().await? == 0 {
                        return Err(Error::Truncated);
                    }
                }
                Ok(self.buf.drain(..length).collect())
            }
            // No framing: the body is whatever comes before the close.
            None => loop {
                if self.buf.len() > max {
                    return Err(Error::TooLarge("the body"));
                }
                if self.fill().await? == 0 {
                    return Ok(std::mem::take(&mut self.buf));
                }
            },
        }
    }

    /// The next chunk's data of a chunked body, at most `max` bytes;
    /// `Ok(None)` once the last chunk and trailers are read.
    pub async fn chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        loop {
            match parse_chunk(&self.buf, max)? {
                Chunk::Data {
                    start,
                    end,
                    consumed,
                } => {
                    let data = self.buf[start..end].to_vec();
                    self.buf.drain(..consumed);
                    return Ok(Some(data));
                }
                Chunk::Last { consumed } => {
                    self.buf.drain(..consumed);
                    return Ok(None);
                }
                Chunk::Partial => {
                    if self.fill().await? == 0 {
                        return Err(Error::Truncated);
                    }
                }
            }
        }
    }

    /// Reads until `parse` finds a complete head, which it then takes off the
    /// buffer.
    async fn parse<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, Error>,
    ) -> Result<T, Error> {
        loop {
            if let Some((head, n)) = parse(&self.buf)? {
                self.buf.drain(..n);
                return Ok(head);
            }
            if self.fill().await? == 0 {
                return Err(if self.buf.is_empty() {
                    Error::Closed
                } else {
                    Error::Truncated
                });
            }
        }
    }

    /// Reads what the stream has, up to [`READ_SIZE`] bytes; 0 at its end.
    async fn fill(&mut self) -> Result<usize, Error> {
        self.buf.reserve(READ_SIZE);
        let mut limited = (&mut self.stream).take(READ_SIZE as u64);
        Ok(limited.read_buf(&mut self.buf).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn answered(bytes: &'static [u8]) -> Conn<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // Dribbled in small writes, to cross every buffer boundary.
            for part in bytes.chunks(3) {
                if server.write_all(part).await.is_err() {
                    return;
                }
            }
        });
        Conn::new(client)
    }

    #[tokio::test]
    async fn reads_heads_bodies_and_chunks() {
        let mut conn = answered(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n2\r\n[]\r\n0\r\n\r\n",
        )
        .await;
        let head = conn.response_head(1024).await.unwrap();
        assert_eq!(conn.body(&head, 10).await.unwrap(), b"ok");
        let head = conn.response_head(1024).await.unwrap();
        assert_eq!(conn.chunk(10).await.unwrap().unwrap(), b"{}\n");
        assert_eq!(conn.body(&head, 10).await.unwrap(), b"[]");
        assert!(matches!(conn.response_head(1024).await, Err(Error::Closed)));
    }

    /// Reads one response, head and body, from `bytes`.
    async fn read(bytes: &'static [u8], max: usize) -> Result<Vec<u8>, Error> {
        let mut conn = answered(bytes).await;
        let head = conn.response_head(1024).await?;
        conn.body(&head, max).await
    }

    #[tokio::test]
    async fn limits_and_truncation() {
        let too_large = |r: Result<Vec<u8>, Error>| matches!(r, Err(Error::TooLarge(_)));
        let truncated = |r: Result<Vec<u8>, Error>| matches!(r, Err(Error::Truncated));
        let long = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort";
        assert!(too_large(read(long, 10).await));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nshort";
        assert!(truncated(read(short, 10).await));
        assert!(truncated(read(b"HTTP/1.1 200 OK\r\n", 10).await));
        // Without framing the body ends at the close, still within its limit.
        assert!(too_large(
            read(b"HTTP/1.0 200 OK\r\n\r\n0123456789abc", 10).await
        ));
        let mut conn = answered(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(conn.request_head(1024).await.unwrap().path(), "/healthz");
    }
}
