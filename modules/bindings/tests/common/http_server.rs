//! A loopback HTTP/1.1 server for `bindings.http` tests, std only, so the
//! daemon's tests include it too (by path).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A loopback HTTP/1.1 server for `bindings.http`, one thread per
/// connection. Paths: `/echo…` answers 200 with the request line, headers
/// and body as text and an `X-Echo: yes` header; `/status/<n>` answers n;
/// `/big` announces and streams 64 MiB; `/chunked-big` streams endless
/// chunks; `/slow` waits 30 s before answering.
pub fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push(line.trim_end().to_owned());
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let target = head
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let _ = if target.starts_with("/echo") {
        let mut text = head.join("\n");
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&body));
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nX-Echo: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
    } else if let Some(code) = target.strip_prefix("/status/") {
        write!(
            stream,
            "HTTP/1.1 {code} Whatever\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfail"
        )
    } else if target == "/big" {
        let total = 64usize << 20;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        );
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..total / chunk.len() {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        Ok(())
    } else if target == "/chunked-big" {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let chunk = vec![b'x'; 1 << 16];
        loop {
            let ok = write!(stream, "{:x}\r\n", chunk.len()).is_ok()
                && stream.write_all(&chunk).is_ok()
                && stream.write_all(b"\r\n").is_ok();
            if !ok {
                break;
            }
        }
        Ok(())
    } else if target == "/slow" {
        std::thread::sleep(Duration::from_secs(30));
        write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    } else {
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        )
    };
}
