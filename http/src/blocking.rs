//! A blocking GET on a fresh connection, for command-line tools that have no
//! async runtime of their own (`mechactl top` scraping `/metrics`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::{parse_chunk, parse_response, request, Chunk, Error, ResponseHead};

/// The largest response head read.
const MAX_HEAD: usize = 16 << 10;

/// GETs `path` from `addr` (`host:port`) with `Connection: close`: connecting,
/// and each read and write, are bounded by `timeout`, and the answer by
/// `max_body` bytes of body. Answers the head and the body, whatever the
/// status; the caller decides which statuses it takes.
pub fn get(
    addr: &str,
    path: &str,
    user_agent: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(ResponseHead, Vec<u8>), Error> {
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })?;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let headers = [("User-Agent", user_agent), ("Connection", "close")];
    stream.write_all(&request("GET", path, addr, &headers, b"")?)?;
    // The server closes after its answer, so the answer is everything up to
    // the end of the stream, read at most one byte past the limit.
    let limit = MAX_HEAD + max_body;
    let mut raw = Vec::new();
    stream
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut raw)?;
    if raw.len() > limit {
        return Err(Error::TooLarge("the answer"));
    }
    decode(&raw, max_body)
}

/// Splits a complete answer into its head and its (de-chunked) body.
fn decode(raw: &[u8], max_body: usize) -> Result<(ResponseHead, Vec<u8>), Error> {
    let (head, n) = match parse_response(raw, MAX_HEAD)? {
        Some(found) => found,
        None if raw.is_empty() => return Err(Error::Closed),
        None => return Err(Error::Truncated),
    };
    let rest = &raw[n..];
    let body = if head.chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            match parse_chunk(&rest[at..], max_body - body.len())? {
                Chunk::Data {
                    start,
                    end,
                    consumed,
                } => {
                    body.extend_from_slice(&rest[at + start..at + end]);
                    at += consumed;
                }
                Chunk::Last { .. } => break body,
                Chunk::Partial => return Err(Error::Truncated),
            }
        }
    } else {
        match head.length {
            Some(length) if length > max_body => return Err(Error::TooLarge("the body")),
            Some(length) => rest.get(..length).ok_or(Error::Truncated)?.to_vec(),
            None if rest.len() > max_body => return Err(Error::TooLarge("the body")),
            None => rest.to_vec(),
        }
    };
    Ok((head, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_answers() {
        let (head, body) = decode(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 10).unwrap();
        assert_eq!((head.status, body.as_slice()), (200, &b"ok"[..]));
        let (_, body) = decode(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(body, b"ok!");
        assert!(matches!(
            decode(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", 10),
            Err(Error::Truncated)
        ));
        assert!(matches!(
            decode(b"HTTP/1.1 200 OK\r\n\r\n0123456789abc", 10),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(decode(b"", 10), Err(Error::Closed)));
    }

    #[test]
    fn gets_from_a_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let (head, body) = get(&addr, "/metrics", "test", Duration::from_secs(5), 100).unwrap();
        assert_eq!((head.status, body.as_slice()), (200, &b"hi\n"[..]));
        let sent = server.join().unwrap();
        assert!(
            sent.starts_with("GET /metrics HTTP/1.1\r\nHost: "),
            "{sent}"
        );
    }
}
