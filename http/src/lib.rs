//! mecha's one HTTP/1.1 layer: strict, bounded parsing and encoding of heads
//! and bodies, shared by mechad's probe endpoint and span exporter, the
//! module SDK's etcd client and `mechactl top`.
//!
//! Everything here is attack surface: the daemon's endpoint is reachable from
//! the network, and the clients read answers from servers a tenant may point
//! them at. So every read is bounded by a limit its caller names (head size,
//! body size, header count, chunk-size line), parsing is strict (httparse's
//! defaults: no obsolete line folding, no spaces in odd places, only
//! HTTP/1.0 and 1.1), and a framing that is ambiguous (two different
//! `Content-Length`s, a malformed one) is refused rather than guessed at.
//! Timeouts are the callers' business: each wraps its exchange in its own.
//!
//! The parsing functions here do no I/O, so the async connection ([`Conn`],
//! feature `tokio`) and the blocking GET ([`blocking::get`]) share them.

pub mod blocking;
#[cfg(feature = "tokio")]
mod conn;

#[cfg(feature = "tokio")]
pub use conn::Conn;

/// Header fields accepted in one head; a head with more is refused as too
/// large. The daemon's probes and the servers we call send a handful.
pub const MAX_HEADERS: usize = 64;

/// The longest chunk-size line (size and extensions) accepted, and the
/// longest trailer section.
pub const MAX_CHUNK_LINE: usize = 16 << 10;

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the connection before sending a byte of a message.
    #[error("the connection closed before a message began")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("the message was cut short")]
    Truncated,
    /// A part of the message is over its limit; the string names the part.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// The message is not well-formed HTTP/1.1.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    fn malformed(what: impl std::fmt::Display) -> Self {
        Self::Malformed(what.to_string())
    }
}

/// The parts of a request head the daemon routes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, such as `GET`.
    pub method: String,
    /// The request target as sent, such as `/metrics?x`.
    pub target: String,
    /// The header fields in order, names as sent; a value that is not UTF-8
    /// is kept with its bad bytes replaced. At most [`MAX_HEADERS`].
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of the first header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, as sent (not percent-decoded).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// The parts of a response head a client needs to read the body and decide
/// whether the connection can be used again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// The body's length when the head gives one (`Some(0)` for statuses
    /// that have no body).
    pub length: Option<usize>,
    /// The body is chunked.
    pub chunked: bool,
    /// The connection cannot carry another exchange: the server said
    /// `Connection: close`, answered with HTTP/1.0 without keep-alive, or
    /// framed the body so that only the end of the connection ends it.
    pub close: bool,
    /// Every header field as received, in order (names as the server wrote
    /// them), for clients that hand them on, such as the HTTP binding.
    pub headers: Vec<(String, String)>,
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and its length in bytes. A head longer than
/// `limit`, or with more than [`MAX_HEADERS`] fields, is
/// [`Error::TooLarge`].
pub fn parse_request(buf: &[u8], limit: usize) -> Result<Option<(RequestHead, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limit => Ok(Some((
            RequestHead {
                method: request.method.unwrap_or_default().to_owned(),
                target: request.path.unwrap_or_default().to_owned(),
                headers: request
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_owned(), value)
                    })
                    .collect(),
            },
            n,
        ))),
        Ok(httparse::Status::Partial) if buf.len() <= limit => Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(Error::TooLarge("the request head")),
        Err(e) => Err(Error::malformed(e)),
    }
}

/// Parses a response head at the start of `buf`, as [`parse_request`] does a
/// request head, and works out how its body is framed (RFC 9112 §6.3).
pub fn parse_response(buf: &[u8], limit: usize) -> Result<Option<(ResponseHead, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let n = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limit => n,
        Ok(httparse::Status::Partial) if buf.len() <= limit => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::TooLarge("the response head"))
        }
        Err(e) => return Err(Error::malformed(e)),
    };
    let status = response.code.unwrap_or_default();
    let mut head = ResponseHead {
        status,
        reason: response.reason.unwrap_or_default().to_owned(),
        length: None,
        chunked: false,
        // HTTP/1.0 closes unless it says otherwise.
        close: response.version == Some(0),
        headers: Vec::with_capacity(response.headers.len()),
    };
    let mut encoded = false;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| Error::malformed("a header value is not UTF-8"))?
            .trim();
        head.headers
            .push((header.name.to_owned(), value.to_owned()));
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = content_length(value)?;
            if head.length.is_some_and(|l| l != length) {
                return Err(Error::malformed("two different Content-Length fields"));
            }
            head.length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            head.chunked = last.eq_ignore_ascii_case("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    head.close = false;
                }
            }
        }
    }
    if matches!(status, 100..=199 | 204 | 304) {
        head.length = Some(0);
        head.chunked = false;
    } else if encoded {
        // Transfer-Encoding overrides Content-Length; a body sent with both
        // may have been smuggled past something, so the connection is not
        // used again. A coding other than chunked lasts until the close.
        if head.length.take().is_some() || !head.chunked {
            head.close = true;
        }
    } else if head.length.is_none() {
        head.close = true;
    }
    Ok(Some((head, n)))
}

/// A `Content-Length` value: decimal digits only, no sign, no list.
fn content_length(value: &str) -> Result<usize, Error> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::malformed(format!("Content-Length {value:?}")));
    }
    value
        .parse()
        .map_err(|_| Error::TooLarge("the Content-Length"))
}

/// One step of reading a chunked body: what [`parse_chunk`] found at the
/// start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// More bytes are needed.
    Partial,
    /// A chunk's data is `buf[start..end]`; the chunk (size line, data and
    /// CRLF) takes `consumed` bytes.
    Data {
        /// Where the data starts.
        start: usize,
        /// Where the data ends.
        end: usize,
        /// The chunk's length on the wire.
        consumed: usize,
    },
    /// The last chunk and the trailer section, `consumed` bytes in all: the
    /// body is complete.
    Last {
        /// Their length on the wire.
        consumed: usize,
    },
}

/// Parses the chunk at the start of `buf`. A chunk whose data is over `max`
/// bytes is [`Error::TooLarge`] as soon as its size line is read, so a
/// caller never buffers more than `max` plus [`MAX_CHUNK_LINE`].
pub fn parse_chunk(buf: &[u8], max: usize) -> Result<Chunk, Error> {
    let (line, size) = match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => return Ok(Chunk::Partial),
        Ok(httparse::Status::Partial) => return Err(Error::TooLarge("a chunk-size line")),
        Err(e) => return Err(Error::malformed(e)),
    };
    if line > MAX_CHUNK_LINE {
        return Err(Error::TooLarge("a chunk-size line"));
    }
    if size == 0 {
        // The trailer section: header fields, then an empty line. Trailers
        // are read (so the connection can be used again) but not kept.
        let rest = &buf[line..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        return match httparse::parse_headers(rest, &mut headers) {
            Ok(httparse::Status::Complete((n, _))) if n <= MAX_CHUNK_LINE => {
                Ok(Chunk::Last { consumed: line + n })
            }
            Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => Ok(Chunk::Partial),
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(Error::TooLarge("the trailers")),
            Err(e) => Err(Error::malformed(e)),
        };
    }
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= max)
        .ok_or(Error::TooLarge("a chunk"))?;
    let end = line + size;
    match buf.get(end..end + 2) {
        None => Ok(Chunk::Partial),
        Some(b"\r\n") => Ok(Chunk::Data {
            start: line,
            end,
            consumed: end + 2,
        }),
        Some(_) => Err(Error::malformed("a chunk does not end with CRLF")),
    }
}

/// Encodes a request with a body (`Content-Length` is added). `headers`
/// come after `Host`; a line break in any part is refused, so a value taken
/// from a server or a configuration cannot add header fields.
pub fn request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let parts = [method, target, host]
        .into_iter()
        .chain(headers.iter().flat_map(|(n, v)| [*n, *v]));
    for part in parts {
        if part.contains(['\r', '\n']) {
            return Err(Error::malformed(format!(
                "{part:?} would break the request's head"
            )));
        }
    }
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    Ok(request)
}

/// Encodes a response head: the status line with its reason, then
/// `headers` in order, then the blank line. The headers are the server's own
/// constants, never input.
pub fn response_head(status: u16, headers: &[(&str, &str)]) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The reason phrase of the statuses mecha sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<ResponseHead>, Error> {
        parse_response(text.as_bytes(), 1024).map(|o| o.map(|(h, _)| h))
    }

    #[test]
    fn requests_are_parsed_strictly() {
        let (h, n) = parse_request(b"GET /metrics?x HTTP/1.1\r\nHost: a\r\n\r\nrest", 1024)
            .unwrap()
            .unwrap();
        assert_eq!((h.method.as_str(), h.path(), n), ("GET", "/metrics", 36));
        assert_eq!((h.header("host"), h.header("Accept")), (Some("a"), None));
        assert_eq!((h.query("x"), h.query("y")), (Some(""), None));
        let (h, _) = parse_request(b"GET /a?limit=5&q=uid HTTP/1.1\r\n\r\n", 64)
            .unwrap()
            .unwrap();
        assert_eq!((h.query("limit"), h.query("q")), (Some("5"), Some("uid")));
        // Bare LF line ends are accepted, as lenient HTTP/1 servers do.
        assert!(parse_request(b"GET / HTTP/1.0\n\n", 64).unwrap().is_some());
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", 64)
            .unwrap()
            .is_none());
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"\x01\x02garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, 1024), Err(Error::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_request(&[b'G'; 100], 64),
            Err(Error::TooLarge(_))
        ));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_request(many.as_bytes(), 8192),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn response_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.length, h.chunked, h.close),
            (200, Some(5), false, false)
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.length, h.chunked, h.close), (None, true, true));
        // Neither length nor chunked: the body lasts until the close.
        let h = head("HTTP/1.0 500 Oops\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.reason.as_str(), h.length, h.close), ("Oops", None, true));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.length, h.close), (Some(0), false));
        // Both framings: chunked wins and the connection is not reused.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.length, h.chunked, h.close), (None, true, true));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(Error::Malformed(_))), "{bad}");
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n", 10),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn chunks() {
        let body = b"4;ext=1\r\nRust\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(
            parse_chunk(body, 4).unwrap(),
            Chunk::Data {
                start: 9,
                end: 13,
                consumed: 15
            }
        );
        assert_eq!(
            parse_chunk(&body[15..], 4).unwrap(),
            Chunk::Last {
                consumed: body.len() - 15
            }
        );
        assert_eq!(parse_chunk(b"4\r\nRu", 4).unwrap(), Chunk::Partial);
        assert_eq!(parse_chunk(b"0\r\n", 4).unwrap(), Chunk::Partial);
        assert!(matches!(parse_chunk(b"5\r\n", 4), Err(Error::TooLarge(_))));
        assert!(matches!(
            parse_chunk(b"4\r\nRustXX", 4),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse_chunk(b"zz\r\n", 4),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse_chunk(&[b'1'; MAX_CHUNK_LINE + 1], 4),
            Err(Error::Malformed(_) | Error::TooLarge(_))
        ));
    }

    #[test]
    fn requests_refuse_line_breaks() {
        let r = request(
            "POST",
            "/v3/kv/range",
            "h:1",
            &[("Authorization", "t")],
            b"{}",
        )
        .unwrap();
        assert_eq!(
            r,
            b"POST /v3/kv/range HTTP/1.1\r\nHost: h:1\r\nAuthorization: t\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert!(request("POST", "/", "h", &[("Authorization", "t\r\nX: y")], b"").is_err());
    }
}
