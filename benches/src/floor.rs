//! The physical floors: the same frames over one Unix-socket hop (floor1) and
//! over two hops through a relay (floor2), with blocking I/O, a thread per
//! connection and no framework, so anything mecha adds on top of them is its
//! own cost. Both serve any number of connections with any number of
//! requests in flight on each.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use mecha_abi::{Header, Opcode, HEADER_LEN, MAX_FRAME_CAP};

use crate::report::{new_histogram, Outcome};
use crate::sweep::Load;
use crate::Plan;

type Task = JoinHandle<anyhow::Result<()>>;

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
/// burst of frames while writes go straight to the socket.
fn reader(stream: &UnixStream) -> anyhow::Result<BufReader<UnixStream>> {
    let clone = stream.try_clone().context("cloning a socket for reading")?;
    Ok(BufReader::with_capacity(64 * 1024, clone))
}

/// Copies frames from `from` to `to` one at a time until `from` ends, then
/// shuts down `to`'s write side so the end propagates down the chain.
fn forward(from: UnixStream, mut to: UnixStream, what: &str) -> anyhow::Result<()> {
    let mut rd = BufReader::with_capacity(64 * 1024, from);
    let mut buf = Vec::new();
    while read_frame(&mut rd, &mut buf)? {
        to.write_all(&buf)
            .with_context(|| format!("{what}: writing"))?;
    }
    // The peer may be gone already; that is the normal end, not an error.
    let _ = to.shutdown(Shutdown::Write);
    Ok(())
}

/// A listener whose accept loop runs on its own thread and starts `serve` on
/// a new thread for every connection, until [`Server::stop`].
struct Server {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    fn start(
        dir: &Path,
        name: &str,
        serve: impl Fn(UnixStream) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let path = dir.join(name);
        // A previous sweep point's socket file is in the way of bind.
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let flag = Arc::clone(&stopping);
        let acceptor = std::thread::spawn(move || {
            let mut served: Vec<Task> = Vec::new();
            for stream in listener.incoming() {
                let stream = stream.context("accepting")?;
                if flag.load(Ordering::Acquire) {
                    break;
                }
                let serve = Arc::clone(&serve);
                served.push(std::thread::spawn(move || serve(stream)));
            }
            served.into_iter().try_for_each(|t| join(t, "connection"))
        });
        Ok(Self {
            path,
            stopping,
            acceptor,
        })
    }

    /// Ends the accept loop (woken by one last connection) and waits for every
    /// connection thread, which end when their clients have closed.
    fn stop(self) -> anyhow::Result<()> {
        self.stopping.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        join(self.acceptor, "acceptor")
    }
}

/// Every frame is written back as is.
fn echo(stream: UnixStream) -> anyhow::Result<()> {
    let back = stream.try_clone().context("echo: cloning")?;
    forward(stream, back, "echo")
}

/// Every frame is forwarded to the echo server at `upstream`, and every answer
/// back, on two threads so that pipelined requests stay pipelined.
fn relay(down: UnixStream, upstream: &Path) -> anyhow::Result<()> {
    let up = UnixStream::connect(upstream).context("relay: connecting upstream")?;
    let (up_rd, down_wr) = (up.try_clone(), down.try_clone());
    let (up_rd, down_wr) = (
        up_rd.context("relay: cloning")?,
        down_wr.context("relay: cloning")?,
    );
    let answers = std::thread::spawn(move || forward(up_rd, down_wr, "relay answers"));
    forward(down, up, "relay requests")?;
    join(answers, "relay answers")
}

/// One client connection's timed work: keeps `depth` requests of
/// `payload` bytes in flight until `ops` are answered; the latencies in ns.
fn client(
    stream: &mut UnixStream,
    depth: usize,
    ops: usize,
    payload: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut rd = reader(stream)?;
    let mut frame = vec![0u8; HEADER_LEN + payload];
    let mut answer = Vec::new();
    let mut in_flight = VecDeque::with_capacity(depth);
    let mut latencies = Vec::with_capacity(ops);
    let mut sent = 0usize;
    let mut send = |stream: &mut UnixStream, sent: &mut usize, in_flight: &mut VecDeque<_>| {
        // Ids only pair a request with its answer; they wrap harmlessly
        // (skipping 0, as a real client does).
        let id = u32::try_from(*sent % (u32::MAX as usize)).unwrap_or(0) + 1;
        let mut header = Header::request(Opcode::STATE_GET, id);
        header.payload_len = u32::try_from(payload).context("payload too large")?;
        frame[..HEADER_LEN].copy_from_slice(&header.encode());
        in_flight.push_back((id, Instant::now()));
        stream.write_all(&frame).context("floor client: writing")?;
        *sent += 1;
        anyhow::Ok(())
    };
    while sent < ops.min(depth) {
        send(stream, &mut sent, &mut in_flight)?;
    }
    while latencies.len() < ops {
        if !read_frame(&mut rd, &mut answer)? {
            bail!("floor client: the server closed the connection");
        }
        // The echo answers in order, so the oldest request is the one answered.
        let Some((id, t)) = in_flight.pop_front() else {
            bail!("floor client: an answer nobody asked for");
        };
        latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if answer[8..12] != id.to_le_bytes() {
            bail!("floor client: answer for the wrong request");
        }
        if sent < ops {
            send(stream, &mut sent, &mut in_flight)?;
        }
    }
    Ok(latencies)
}

/// Drives `load` against `socket`: one thread per connection, each warming up
/// first; the clock runs from when all are warm to when the last is done.
fn drive(name: &str, socket: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    // Every connection first: a failure here returns before any thread waits
    // at the barrier for clients that will never come.
    let streams = (0..load.connections)
        .map(|_| UnixStream::connect(socket).with_context(|| format!("{name}: connecting")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Arc::new(Barrier::new(load.connections + 1));
    let mut threads = Vec::with_capacity(load.connections);
    for (c, mut stream) in streams.into_iter().enumerate() {
        let (start, plan) = (Arc::clone(&start), *plan);
        let ops = share(plan.ops, load.connections, c);
        let warmup = share(plan.warmup, load.connections, c).max(1);
        threads.push(std::thread::spawn(move || {
            let warm = client(&mut stream, load.depth, warmup, plan.payload);
            // Wait at the barrier even after an error, or the others hang.
            start.wait();
            warm?;
            client(&mut stream, load.depth, ops, plan.payload)
        }));
    }
    start.wait();
    let started = Instant::now();
    let mut hist = new_histogram()?;
    let mut first_error = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(latencies)) => latencies
                .into_iter()
                .for_each(|ns| hist.saturating_record(ns)),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => {
                first_error = first_error.or(Some(anyhow::anyhow!("{name}: a client panicked")))
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(Outcome::new(name, &hist, plan.ops, elapsed))
}

/// Bytes the blocking client may have in flight on one connection: it
/// writes all `depth` requests before reading, so they must fit in the
/// sockets' buffers (about 200 KiB each on Linux) or client and server
/// would both block writing. A quarter of that leaves a wide margin.
const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024;

/// Whether the floors can run `load` with `payload`-byte frames; see
/// [`MAX_IN_FLIGHT_BYTES`].
pub fn fits(load: Load, payload: usize) -> bool {
    load.depth.saturating_mul(HEADER_LEN + payload) <= MAX_IN_FLIGHT_BYTES
}

/// Worker `i`'s share of `total` operations split over `n` workers.
pub fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

/// Waits for a thread and surfaces its error, if any.
fn join(handle: Task, what: &str) -> anyhow::Result<()> {
    match handle.join() {
        Ok(result) => result.with_context(|| format!("{what} thread failed")),
        Err(_) => bail!("{what} thread panicked"),
    }
}

/// floor1: client → echo, one Unix-socket hop.
pub fn one_hop(dir: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    let echo = Server::start(dir, "floor1-echo.sock", echo)?;
    let outcome = drive("floor1", &echo.path, load, plan);
    // The clients' sockets closed when `drive` returned, which ends the echo
    // threads; stop even after a failure so no thread is left behind.
    echo.stop()?;
    outcome
}

/// floor2: client → relay → echo, two Unix-socket hops, like app → mechad → module.
pub fn two_hops(dir: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    let echo = Server::start(dir, "floor2-echo.sock", echo)?;
    let upstream = echo.path.clone();
    let relay = Server::start(dir, "floor2-relay.sock", move |down| relay(down, &upstream))?;
    let outcome = drive("floor2", &relay.path, load, plan);
    relay.stop()?;
    echo.stop()?;
    outcome
}
