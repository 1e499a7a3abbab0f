//! Event-loop floors for many connections: the same two shapes as floor.rs
//! (client → echo, client → relay → echo), but the client, the relay and the
//! echo each run one thread with one epoll loop (mio) for all connections,
//! as mechad, a module and a tokio client do. The threaded floors stop being
//! a lower bound once hundreds of threads share two CPUs; these do not.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mecha_abi::{Header, Opcode, HEADER_LEN, MAX_FRAME_CAP};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::floor::share;
use crate::report::{new_histogram, Outcome};
use crate::sweep::Load;
use crate::Plan;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection `i` is registered as token `i + FIRST`.
const FIRST: usize = 2;
/// Bytes read per read call.
const CHUNK: usize = 64 * 1024;

/// One socket with the bytes still to be written to it.
struct Conn {
    stream: UnixStream,
    out: Vec<u8>,
    /// The connection whose bytes this one's reads go to: itself for the
    /// echo, the other side for the relay.
    to: usize,
}

/// Reads everything available from `stream` into `into`; `false` on EOF.
fn read_all(stream: &mut UnixStream, into: &mut Vec<u8>, buf: &mut [u8]) -> anyhow::Result<bool> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            // Edge-triggered: read until the socket is empty.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading"),
        }
    }
}

/// Writes as much of `out` as the socket takes; the rest waits for WRITABLE.
fn flush(stream: &mut UnixStream, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match stream.write(&out[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("writing"),
        }
    }
    out.drain(..done);
    Ok(())
}

/// An echo (no upstream) or relay (to `upstream`) on one epoll thread; bytes
/// pass through unparsed, which is all a floor needs to do with them.
struct Server {
    path: PathBuf,
    waker: Arc<Waker>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    fn start(dir: &Path, name: &str, upstream: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let poll = Poll::new().context("creating an epoll instance")?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .context("registering the listener")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating a waker")?);
        let thread = std::thread::spawn(move || serve(poll, listener, upstream));
        Ok(Self {
            path,
            waker,
            thread,
        })
    }

    /// Wakes the loop, which ends, and surfaces its error, if any.
    fn stop(self) -> anyhow::Result<()> {
        self.waker.wake().context("waking a floor server")?;
        match self.thread.join() {
            Ok(result) => result.context("event-loop floor server"),
            Err(_) => bail!("an event-loop floor server panicked"),
        }
    }
}

/// Registers `stream` for reads and writes as connection `conns.len()`.
fn register(
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    mut stream: UnixStream,
    to: usize,
) -> anyhow::Result<()> {
    let token = Token(conns.len() + FIRST);
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        .context("registering a connection")?;
    conns.push(Some(Conn {
        stream,
        out: Vec::new(),
        to,
    }));
    Ok(())
}

/// A blocking connect made non-blocking afterwards: a non-blocking connect
/// to a Unix socket fails with EAGAIN when the listener's backlog is full,
/// which is normal while hundreds of connections arrive at once.
fn connect(path: &Path) -> anyhow::Result<UnixStream> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    stream
        .set_nonblocking(true)
        .context("making a socket non-blocking")?;
    Ok(UnixStream::from_std(stream))
}

/// epoll_wait, retried when a signal interrupts it.
fn wait(poll: &mut Poll, events: &mut Events) -> anyhow::Result<()> {
    match poll.poll(events, None) {
        Err(e) if e.kind() != ErrorKind::Interrupted => Err(e).context("epoll_wait"),
        _ => Ok(()),
    }
}

fn serve(mut poll: Poll, listener: UnixListener, upstream: Option<PathBuf>) -> anyhow::Result<()> {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; CHUNK];
    loop {
        wait(&mut poll, &mut events)?;
        for event in &events {
            match event.token() {
                WAKER => return Ok(()),
                LISTENER => loop {
                    let down = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("accepting"),
                    };
                    let i = conns.len();
                    match &upstream {
                        None => register(&poll, &mut conns, down, i)?,
                        Some(path) => {
                            let up = connect(path)?;
                            register(&poll, &mut conns, down, i + 1)?;
                            register(&poll, &mut conns, up, i)?;
                        }
                    }
                },
                Token(t) => {
                    let i = t - FIRST;
                    let Some(to) = conns[i].as_ref().map(|c| c.to) else {
                        continue; // closed earlier in this batch
                    };
                    let mut open = true;
                    if event.is_readable() {
                        let mut incoming = Vec::new();
                        if let Some(c) = conns[i].as_mut() {
                            open = read_all(&mut c.stream, &mut incoming, &mut buf)?;
                        }
                        if let Some(target) = conns[to].as_mut() {
                            target.out.extend_from_slice(&incoming);
                            flush(&mut target.stream, &mut target.out)?;
                        }
                    }
                    if let Some(c) = conns[i].as_mut() {
                        flush(&mut c.stream, &mut c.out)?;
                    }
                    if !open {
                        // The client is done: close both sides of a relay
                        // pair, which ends the echo's connection in turn.
                        conns[i] = None;
                        conns[to] = None;
                    }
                }
            }
        }
    }
}

/// One client connection's state.
struct Client {
    stream: UnixStream,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Send times of the requests in flight, oldest first: the echo answers
    /// in order, so the oldest is the one each answer belongs to.
    in_flight: VecDeque<Instant>,
    to_send: usize,
    to_answer: usize,
    latencies: Vec<u64>,
}

impl Client {
    fn send(&mut self, frame: &[u8]) {
        self.out.extend_from_slice(frame);
        self.in_flight.push_back(Instant::now());
        self.to_send -= 1;
    }

    /// Takes every complete answer out of `input`, recording its latency and
    /// sending the next request; the number of answers.
    fn answers(&mut self, frame: &[u8]) -> anyhow::Result<usize> {
        let (mut at, mut count) = (0, 0);
        while self.input.len() - at >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = self.input[at..at + HEADER_LEN]
                .try_into()
                .context("slicing a frame header")?;
            let header = Header::decode(head, MAX_FRAME_CAP).context("decoding a frame header")?;
            let end = at + HEADER_LEN + header.payload_len as usize;
            if self.input.len() < end {
                break;
            }
            at = end;
            let sent = self
                .in_flight
                .pop_front()
                .context("an answer nobody asked for")?;
            self.latencies
                .push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
            self.to_answer = self.to_answer.saturating_sub(1);
            count += 1;
            if self.to_send > 0 {
                self.send(frame);
            }
        }
        self.input.drain(..at);
        Ok(count)
    }
}

/// `ops` requests over all `clients`, `depth` in flight on each, from this
/// one thread; the wall time.
fn phase(
    poll: &mut Poll,
    clients: &mut [Client],
    depth: usize,
    ops: usize,
    frame: &[u8],
) -> anyhow::Result<Duration> {
    let n = clients.len();
    let started = Instant::now();
    let mut unanswered = ops;
    for (i, c) in clients.iter_mut().enumerate() {
        c.to_send = share(ops, n, i);
        c.to_answer = c.to_send;
        c.latencies.clear();
        for _ in 0..depth.min(c.to_send) {
            c.send(frame);
        }
        flush(&mut c.stream, &mut c.out)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; CHUNK];
    while unanswered > 0 {
        wait(poll, &mut events)?;
        for event in &events {
            let c = &mut clients[event.token().0 - FIRST];
            if event.is_readable() {
                let open = read_all(&mut c.stream, &mut c.input, &mut buf)?;
                unanswered = unanswered.saturating_sub(c.answers(frame)?);
                if !open && c.to_answer > 0 {
                    bail!("the floor server closed a connection");
                }
            }
            flush(&mut c.stream, &mut c.out)?;
        }
    }
    Ok(started.elapsed())
}

/// Drives `load` against `socket` from one thread: a warm-up phase, then the
/// timed one.
fn drive(name: &str, socket: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    let mut poll = Poll::new().context("creating an epoll instance")?;
    let mut clients = Vec::with_capacity(load.connections);
    for i in 0..load.connections {
        let mut stream = connect(socket)?;
        poll.registry()
            .register(
                &mut stream,
                Token(i + FIRST),
                Interest::READABLE | Interest::WRITABLE,
            )
            .context("registering a client")?;
        clients.push(Client {
            stream,
            out: Vec::new(),
            input: Vec::new(),
            in_flight: VecDeque::with_capacity(load.depth),
            to_send: 0,
            to_answer: 0,
            latencies: Vec::new(),
        });
    }
    // Every request is the same frame: answers are matched by order.
    let mut frame = vec![0u8; HEADER_LEN + plan.payload];
    let mut header = Header::request(Opcode::STATE_GET, 1);
    header.payload_len = u32::try_from(plan.payload).context("payload too large")?;
    frame[..HEADER_LEN].copy_from_slice(&header.encode());
    phase(&mut poll, &mut clients, load.depth, plan.warmup, &frame)
        .with_context(|| format!("{name}: warm-up"))?;
    let elapsed = phase(&mut poll, &mut clients, load.depth, plan.ops, &frame)
        .with_context(|| name.to_string())?;
    let mut hist = new_histogram()?;
    for ns in clients.iter().flat_map(|c| &c.latencies) {
        hist.saturating_record(*ns);
    }
    Ok(Outcome::new(name, &hist, plan.ops, elapsed))
}

/// floor1 on event loops: client → echo.
pub fn one_hop(dir: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    let echo = Server::start(dir, "loop1-echo.sock", None)?;
    let outcome = drive("floor1 epoll", &echo.path, load, plan);
    echo.stop()?;
    outcome
}

/// floor2 on event loops: client → relay → echo.
pub fn two_hops(dir: &Path, load: Load, plan: &Plan) -> anyhow::Result<Outcome> {
    let echo = Server::start(dir, "loop2-echo.sock", None)?;
    let relay = Server::start(dir, "loop2-relay.sock", Some(echo.path.clone()))?;
    let outcome = drive("floor2 epoll", &relay.path, load, plan);
    relay.stop()?;
    echo.stop()?;
    outcome
}
