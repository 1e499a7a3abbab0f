//! The physical floors: the same frames over one Unix-socket hop (floor1) and
//! over two hops through a relay (floor2), with blocking I/O and no framework,
//! so anything mecha adds on top of them is its own cost.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use mecha_abi::{Header, Opcode, HEADER_LEN, MAX_FRAME_CAP};

use crate::report::{new_histogram, record, Outcome};
use crate::Plan;

/// Reads one whole frame into `buf`; `false` on a clean EOF before a frame.
fn read_frame(r: &mut impl BufRead, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    // An empty buffer after fill_buf is EOF at a frame boundary: the peer is done.
    if r.fill_buf().context("reading a frame")?.is_empty() {
        return Ok(false);
    }
    buf.resize(HEADER_LEN, 0);
    r.read_exact(buf).context("reading a frame header")?;
    let head: &[u8; HEADER_LEN] = buf[..HEADER_LEN]
        .try_into()
        .context("slicing the frame header")?;
    // The length is checked against the cap before the payload is allocated.
    let header = Header::decode(head, MAX_FRAME_CAP).context("decoding a frame header")?;
    buf.resize(HEADER_LEN + header.payload_len as usize, 0);
    r.read_exact(&mut buf[HEADER_LEN..])
        .context("reading a frame payload")?;
    Ok(true)
}

/// A buffered reader over a clone of `stream`, so reads take one syscall per
/// frame while writes go straight to the socket.
fn reader(stream: &UnixStream) -> anyhow::Result<BufReader<UnixStream>> {
    let clone = stream.try_clone().context("cloning a socket for reading")?;
    Ok(BufReader::with_capacity(64 * 1024, clone))
}

/// Serves one connection from `listener`: every frame is written back as is.
fn spawn_echo(listener: UnixListener) -> JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().context("echo: accepting")?;
        let mut rd = reader(&stream)?;
        let mut buf = Vec::new();
        while read_frame(&mut rd, &mut buf)? {
            stream.write_all(&buf).context("echo: writing back")?;
        }
        Ok(())
    })
}

/// Serves one connection from `listener` by forwarding every frame to the
/// echo server at `upstream` and its answer back — one request at a time,
/// which is all concurrency 1 needs.
fn spawn_relay(listener: UnixListener, upstream: &Path) -> JoinHandle<anyhow::Result<()>> {
    let upstream = upstream.to_path_buf();
    std::thread::spawn(move || {
        let (mut down, _) = listener.accept().context("relay: accepting")?;
        let mut up = UnixStream::connect(&upstream).context("relay: connecting upstream")?;
        let (mut down_rd, mut up_rd) = (reader(&down)?, reader(&up)?);
        let mut buf = Vec::new();
        while read_frame(&mut down_rd, &mut buf)? {
            up.write_all(&buf).context("relay: forwarding")?;
            if !read_frame(&mut up_rd, &mut buf)? {
                bail!("relay: the echo server closed mid-request");
            }
            down.write_all(&buf).context("relay: answering")?;
        }
        Ok(())
    })
}

/// Binds a listener at `dir/name`.
fn bind(dir: &Path, name: &str) -> anyhow::Result<(UnixListener, std::path::PathBuf)> {
    let path = dir.join(name);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    Ok((listener, path))
}

/// Sends frames of `plan.payload` bytes one at a time to `socket`, timing each
/// round trip after the warm-up.
fn drive(name: &str, socket: &Path, plan: &Plan) -> anyhow::Result<Outcome> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("{name}: connecting"))?;
    let mut rd = reader(&stream)?;
    let mut frame = vec![0u8; HEADER_LEN + plan.payload];
    let mut answer = Vec::new();
    let mut hist = new_histogram()?;
    let mut started = Instant::now();
    let mut id = 0u32;
    for i in 0..plan.warmup + plan.ops {
        if i == plan.warmup {
            started = Instant::now();
        }
        // Request ids wrap harmlessly (skipping 0, as a real client does);
        // they only pair a request with its answer.
        id = id.wrapping_add(1).max(1);
        let mut header = Header::request(Opcode::STATE_GET, id);
        header.payload_len = u32::try_from(plan.payload).context("payload too large")?;
        frame[..HEADER_LEN].copy_from_slice(&header.encode());
        let t = Instant::now();
        stream
            .write_all(&frame)
            .with_context(|| format!("{name}: writing"))?;
        if !read_frame(&mut rd, &mut answer)? {
            bail!("{name}: the server closed the connection");
        }
        let took = t.elapsed();
        if answer[8..12] != id.to_le_bytes() {
            bail!("{name}: answer for the wrong request");
        }
        if i >= plan.warmup {
            record(&mut hist, took);
        }
    }
    let elapsed = started.elapsed();
    Ok(Outcome::new(name, &hist, plan.ops, elapsed))
}

/// Waits for a server thread and surfaces its error, if any.
fn join(handle: JoinHandle<anyhow::Result<()>>, what: &str) -> anyhow::Result<()> {
    match handle.join() {
        Ok(result) => result.with_context(|| format!("{what} thread failed")),
        Err(_) => bail!("{what} thread panicked"),
    }
}

/// floor1: client → echo, one Unix-socket hop.
pub fn one_hop(dir: &Path, plan: &Plan) -> anyhow::Result<Outcome> {
    let (listener, path) = bind(dir, "floor1-echo.sock")?;
    let echo = spawn_echo(listener);
    let outcome = drive("floor1", &path, plan)?;
    // The client's socket closed when `drive` returned, which ends the echo thread.
    join(echo, "echo")?;
    Ok(outcome)
}

/// floor2: client → relay → echo, two Unix-socket hops, like app → mechad → module.
pub fn two_hops(dir: &Path, plan: &Plan) -> anyhow::Result<Outcome> {
    let (echo_listener, echo_path) = bind(dir, "floor2-echo.sock")?;
    let (relay_listener, relay_path) = bind(dir, "floor2-relay.sock")?;
    let echo = spawn_echo(echo_listener);
    let relay = spawn_relay(relay_listener, &echo_path);
    let outcome = drive("floor2", &relay_path, plan)?;
    join(relay, "relay")?;
    join(echo, "echo")?;
    Ok(outcome)
}
