//! [`Outbox`]: a socket's queue of outgoing frames, written by the task that
//! queues them whenever the socket takes the bytes at once, and by a
//! background writer task only when it does not.
//!
//! Why not a channel and a writer task: handing every frame to another task
//! costs a wake-up, often on another CPU, per frame in each direction; on a
//! router that is most of the cost of a request (see BENCHMARKS.md, "Profile").
//! Here the reading task that produced an answer writes it itself with a
//! non-blocking `try_write`. Frames queued while another party is writing are
//! picked up by that party, so a burst still leaves in few system calls, and a
//! caller that knows more frames follow (a pipelined read) queues them all with
//! [`Outbox::push`] and writes once with [`Outbox::flush`].
//!
//! Frames may be queued in *lanes* (the daemon uses one per tenant on a module
//! link). When the socket does not keep up and frames of several lanes wait,
//! each write takes them round-robin, one frame per lane in turn, in small
//! batches: a lane with one frame waiting is not queued behind thousands of
//! another lane's (issue #5, fairness). With one lane, frames leave in the
//! order they were queued, in batches of up to [`BATCH_BYTES`].
//!
//! The writer task ([`Outbox::new`] returns it as a future) only takes over
//! when the socket's buffer is full, waits for it to drain, and writes the rest;
//! it also ends the stream once every [`Outbox`] handle is gone and the queue
//! is empty, like the end of a channel.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::sock::WriteHalf;

use crate::OutFrame;

/// Payloads at least this long are queued by reference instead of being
/// copied into the coalescing buffer, so a large frame is never copied.
const COPY_LIMIT: usize = 4096;
/// Bytes one write takes from a single lane.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes one write takes when several lanes wait: small, because whatever
/// has been taken is ahead of every frame queued after it, whatever its lane.
const FAIR_BATCH_BYTES: usize = 4 * 1024;
/// Batches a flushing caller writes before it leaves the rest to the writer
/// task: a task that flushes a busy socket must not end up writing everyone
/// else's frames for as long as they keep coming, instead of its own work.
const INLINE_BATCHES: usize = 4;
/// Slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// A frame that could not be queued because the socket is gone.
#[derive(Debug)]
pub struct Closed<G>(pub OutFrame<G>);

/// Bytes taken off the queue by the party that writes them, with the guards
/// of their frames until the write begins.
struct Batch<G> {
    segments: VecDeque<Bytes>,
    guards: Vec<G>,
}

impl<G> Batch<G> {
    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.segments.pop_front();
            } else {
                bytes::Buf::advance(front, n);
                n = 0;
            }
        }
    }
}

/// The frames of one lane, in order.
struct Lane<G> {
    key: Bytes,
    frames: VecDeque<OutFrame<G>>,
}

struct State<G> {
    /// Lanes with frames waiting; a lane is dropped once empty.
    lanes: Vec<Lane<G>>,
    /// The lane the next batch starts with (round robin).
    next_lane: usize,
    /// Frames waiting, over all lanes.
    queued: usize,
    /// Small frames are copied into this buffer for one write; reused.
    coalesce: BytesMut,
    /// Someone (a flushing caller or the writer task) is writing.
    writing: bool,
    /// What a caller could not finish writing; the writer task takes it.
    leftover: Option<Batch<G>>,
    /// The socket failed: nothing more will be written.
    failed: bool,
}

impl<G> State<G> {
    /// The lane for `key`, created on first use.
    fn lane(&mut self, key: &Bytes) -> &mut Lane<G> {
        let index = match self.lanes.iter().position(|l| l.key == *key) {
            Some(i) => i,
            None => {
                self.lanes.push(Lane {
                    key: key.clone(),
                    frames: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[index]
    }
}

struct Shared<G> {
    sock: WriteHalf,
    state: Mutex<State<G>>,
    /// Open [`Outbox`] handles; the writer ends the stream when none are left.
    senders: AtomicUsize,
    /// Wakes the writer task: a leftover to finish, or the last handle gone.
    wake: Notify,
    /// Wakes callers waiting for room ([`Outbox::send_wait`]).
    room: Notify,
    /// Frames queued in one lane beyond which [`Outbox::push_wait`] waits.
    bound: usize,
}

/// A handle for queueing frames on one socket. Cloning makes another handle;
/// when the last one is dropped the writer finishes the queue and ends.
pub struct Outbox<G = ()> {
    shared: Arc<Shared<G>>,
}

/// A handle that does not keep the outbox open: when every [`Outbox`] is
/// gone, [`WeakOutbox::upgrade`] fails and the writer ends the stream. For a
/// reader task that answers on the same socket but must not keep it open.
///
/// It holds the shared state weakly too: once the writer task has ended,
/// the socket's write half is dropped (which shuts it down) even while weak
/// handles remain.
pub struct WeakOutbox<G = ()> {
    shared: std::sync::Weak<Shared<G>>,
}

impl<G> Clone for WeakOutbox<G> {
    fn clone(&self) -> Self {
        Self {
            shared: std::sync::Weak::clone(&self.shared),
        }
    }
}

impl<G> WeakOutbox<G> {
    /// An [`Outbox`] handle, unless every one was dropped already.
    pub fn upgrade(&self) -> Option<Outbox<G>> {
        let shared = self.shared.upgrade()?;
        let mut n = shared.senders.load(Ordering::Acquire);
        loop {
            if n == 0 {
                return None;
            }
            match shared.senders.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Outbox { shared }),
                Err(now) => n = now,
            }
        }
    }
}

impl<G> Clone for Outbox<G> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<G> Drop for Outbox<G> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

/// How one attempt to write a batch ended.
enum Wrote {
    All,
    WouldBlock,
    Failed,
}

impl<G: Send + 'static> Outbox<G> {
    /// Wraps a socket's write half. `bound` is how many queued frames make
    /// [`Outbox::send_wait`] wait. The returned future is the writer task;
    /// spawn it. It ends when the socket fails, or when every handle is gone
    /// and everything queued is written; dropping it then closes the write
    /// side of the socket.
    pub fn new(
        sock: WriteHalf,
        bound: usize,
    ) -> (Self, impl Future<Output = io::Result<()>> + Send + 'static) {
        let shared: Arc<Shared<G>> = Arc::new(Shared {
            sock,
            state: Mutex::new(State {
                lanes: Vec::new(),
                next_lane: 0,
                queued: 0,
                coalesce: BytesMut::new(),
                writing: false,
                leftover: None,
                failed: false,
            }),
            senders: AtomicUsize::new(1),
            wake: Notify::new(),
            room: Notify::new(),
            bound: bound.max(1),
        });
        let writer = writer_task(Arc::clone(&shared));
        (Self { shared }, writer)
    }

    /// Queues a frame without writing it; the caller calls [`Outbox::flush`]
    /// once it has queued what it has. Never waits: callers bound what they
    /// queue themselves (the daemon with in-flight permits).
    pub fn push(&self, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        self.push_lane(&Bytes::new(), frame)
    }

    /// [`Outbox::push`] into lane `lane`.
    pub fn push_lane(&self, lane: &Bytes, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        let mut st = self.shared.state.lock();
        if st.failed {
            return Err(Closed(frame));
        }
        st.lane(lane).frames.push_back(frame);
        st.queued += 1;
        Ok(())
    }

    /// Queues a frame and writes the queue.
    pub fn send(&self, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        self.push(frame)?;
        self.flush();
        Ok(())
    }

    /// Like [`Outbox::push_lane`], but first waits while the lane holds the
    /// bound of frames unwritten: backpressure for producers that are not
    /// otherwise bounded, lane by lane, so a full lane does not stop the
    /// others. Before waiting it writes what is queued, so a caller that
    /// defers its flush cannot wait on its own frames.
    pub async fn push_wait_lane(&self, lane: &Bytes, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        loop {
            let room = self.shared.room.notified();
            {
                // Checking for room and queueing under one lock: this is the
                // router's per-request path.
                let mut st = self.shared.state.lock();
                if st.failed {
                    return Err(Closed(frame));
                }
                let queue = st.lane(lane);
                if queue.frames.len() < self.shared.bound {
                    queue.frames.push_back(frame);
                    st.queued += 1;
                    return Ok(());
                }
            }
            self.flush();
            room.await;
        }
    }

    /// [`Outbox::push_wait_lane`] into the default lane.
    pub async fn push_wait(&self, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        self.push_wait_lane(&Bytes::new(), frame).await
    }

    /// [`Outbox::push_wait`], then [`Outbox::flush`].
    pub async fn send_wait(&self, frame: OutFrame<G>) -> Result<(), Closed<G>> {
        self.push_wait(frame).await?;
        self.flush();
        Ok(())
    }

    /// Shuts the socket down (see [`WriteHalf::shutdown`]): the writer then
    /// fails, dropping what is queued with its guards, and the connection's
    /// reader sees EOF. For a peer that must be cut off, such as one that
    /// lets its queue grow past its budget.
    pub fn shutdown(&self) {
        self.shared.sock.shutdown();
    }

    /// Resolves once nothing is queued or being written (or the socket
    /// failed): everything pushed so far has reached the socket.
    pub async fn drained(&self) {
        loop {
            let room = self.shared.room.notified();
            {
                let st = self.shared.state.lock();
                if st.failed || (st.queued == 0 && !st.writing && st.leftover.is_none()) {
                    return;
                }
            }
            self.flush();
            room.await;
        }
    }

    /// Keeps the socket open when the writer ends (see
    /// [`WriteHalf::keep_open`]): it was handed to another process.
    pub fn keep_socket_open(&self) {
        self.shared.sock.keep_open();
    }

    /// True when the peer has shut the connection down, even before a reader
    /// has reached its end (see [`WriteHalf::peer_closed`]).
    pub fn peer_closed(&self) -> bool {
        self.shared.sock.peer_closed()
    }

    /// True once the socket failed; frames queued from now on are refused.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().failed
    }

    /// A handle that does not keep the outbox open.
    pub fn downgrade(&self) -> WeakOutbox<G> {
        WeakOutbox {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// True when both handles queue onto the same socket.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Writes what is queued, unless someone else is writing (they will write
    /// it). What the socket does not take at once is left to the writer task.
    pub fn flush(&self) {
        let shared = &*self.shared;
        let Some(mut batch) = take_batch(&mut shared.state.lock()) else {
            return;
        };
        let mut batches = 1;
        loop {
            match write_now(&shared.sock, &mut batch) {
                Wrote::All => match finish_batch(shared, batch) {
                    Some(more) if batches >= INLINE_BATCHES => {
                        shared.state.lock().leftover = Some(more);
                        shared.wake.notify_one();
                        return;
                    }
                    Some(more) => {
                        batches += 1;
                        batch = more;
                    }
                    None => return,
                },
                Wrote::WouldBlock => {
                    shared.state.lock().leftover = Some(batch);
                    shared.wake.notify_one();
                    return;
                }
                Wrote::Failed => {
                    fail(shared, batch);
                    return;
                }
            }
        }
    }
}

/// Outboxes a task has queued frames on without flushing them; it flushes
/// them all before it waits (for the next read), so a batch of pipelined
/// frames leaves in one write per socket.
pub struct Unflushed<G = ()>(Vec<Outbox<G>>);

impl<G> Default for Unflushed<G> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<G: Send + 'static> Unflushed<G> {
    /// Remembers `outbox` (once) for the next [`Unflushed::flush`].
    pub fn add(&mut self, outbox: &Outbox<G>) {
        if !self.0.iter().any(|o| o.same(outbox)) {
            self.0.push(outbox.clone());
        }
    }

    /// Flushes every remembered outbox and forgets them.
    pub fn flush(&mut self) {
        for outbox in self.0.drain(..) {
            outbox.flush();
        }
    }
}

/// Takes the next batch and the writing role, unless someone already holds
/// it or there is nothing to write. One lane: its frames in order, up to
/// [`BATCH_BYTES`]. Several: one frame of each in turn, up to
/// [`FAIR_BATCH_BYTES`].
fn take_batch<G>(st: &mut State<G>) -> Option<Batch<G>> {
    if st.writing || st.failed || st.queued == 0 {
        return None;
    }
    st.writing = true;
    let budget = if st.lanes.len() > 1 {
        FAIR_BATCH_BYTES
    } else {
        BATCH_BYTES
    };
    let mut batch = Batch {
        segments: VecDeque::new(),
        guards: Vec::new(),
    };
    let mut taken = 0;
    let mut coalesce = std::mem::take(&mut st.coalesce);
    'fill: while st.queued > 0 {
        for _ in 0..st.lanes.len() {
            let index = st.next_lane % st.lanes.len();
            st.next_lane = index + 1;
            let Some(frame) = st.lanes[index].frames.pop_front() else {
                continue;
            };
            st.queued -= 1;
            let OutFrame {
                header,
                prefix,
                payload,
                guard,
            } = frame;
            taken += header.len() + prefix.len() + payload.len();
            coalesce.extend_from_slice(&header);
            coalesce.extend_from_slice(&prefix);
            if payload.len() >= COPY_LIMIT {
                batch.segments.push_back(coalesce.split().freeze());
                batch.segments.push_back(payload);
            } else {
                coalesce.extend_from_slice(&payload);
            }
            batch.guards.push(guard);
            if taken >= budget {
                break 'fill;
            }
        }
    }
    if !coalesce.is_empty() {
        batch.segments.push_back(coalesce.split().freeze());
    }
    // `split` leaves the buffer empty; once the written segment is dropped,
    // the next batch reclaims the same allocation instead of allocating anew.
    st.coalesce = coalesce;
    st.lanes.retain(|l| !l.frames.is_empty());
    Some(batch)
}

/// Called by the writing party after writing a whole batch: hands back the
/// next batch (more was queued meanwhile) or gives up the writing role.
fn finish_batch<G>(shared: &Shared<G>, batch: Batch<G>) -> Option<Batch<G>> {
    drop(batch);
    let next = {
        let mut st = shared.state.lock();
        st.writing = false;
        take_batch(&mut st)
    };
    shared.room.notify_waiters();
    next
}

/// Marks the socket failed and drops everything queued with it.
fn fail<G>(shared: &Shared<G>, batch: Batch<G>) {
    let dropped = {
        let mut st = shared.state.lock();
        st.failed = true;
        st.writing = false;
        st.queued = 0;
        std::mem::take(&mut st.lanes)
    };
    drop(batch);
    drop(dropped);
    shared.room.notify_waiters();
    shared.wake.notify_one();
}

/// Writes as much of `batch` as the socket takes without waiting.
///
/// The guards of its frames are released first, as the frames are handed to
/// the socket and before the peer can see them: a peer that reads an answer
/// and at once sends its next request must find the permit of the answered
/// one free. What stays bounded is what waits *unwritten*: at most one batch
/// in the writer's hands, plus frames still queued, which hold their guards.
fn write_now(sock: &WriteHalf, batch: &mut Batch<impl Sized>) -> Wrote {
    batch.guards.clear();
    while !batch.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut n = 0;
        for (slot, segment) in slices.iter_mut().zip(&batch.segments) {
            *slot = IoSlice::new(segment);
            n += 1;
        }
        match sock.try_write_vectored(&slices[..n]) {
            Ok(0) => return Wrote::Failed,
            Ok(n) => batch.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Wrote::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Wrote::Failed,
        }
    }
    Wrote::All
}

/// The writer task: finishes what callers could not write at once, and ends
/// the stream when the last handle is gone.
async fn writer_task<G: Send + 'static>(shared: Arc<Shared<G>>) -> io::Result<()> {
    loop {
        let woken = shared.wake.notified();
        // A leftover comes with the writing role; otherwise take the role
        // ourselves when frames wait and nobody writes (a caller that only
        // pushed and then dropped its handle).
        let work = {
            let mut st = shared.state.lock();
            if st.failed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the socket failed while writing",
                ));
            }
            match st.leftover.take() {
                Some(batch) => Some(batch),
                None if shared.senders.load(Ordering::Acquire) == 0 => match take_batch(&mut st) {
                    Some(batch) => Some(batch),
                    None if !st.writing => return Ok(()),
                    None => None,
                },
                None => None,
            }
        };
        let Some(mut batch) = work else {
            woken.await;
            continue;
        };
        loop {
            match write_now(&shared.sock, &mut batch) {
                Wrote::All => match finish_batch(&shared, batch) {
                    Some(more) => batch = more,
                    None => break,
                },
                Wrote::WouldBlock => {
                    if shared.sock.writable().await.is_err() {
                        fail(&shared, batch);
                        break;
                    }
                }
                Wrote::Failed => {
                    fail(&shared, batch);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameReader;
    use mecha_abi::{Header, Opcode};
    use std::sync::atomic::AtomicU32;

    /// A guard that counts how many frames have been written.
    #[derive(Debug)]
    struct Count(Arc<AtomicU32>);

    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The write half of one end of a socket pair and the read half of the
    /// other (the halves dropped here share their descriptors with these).
    fn pair() -> (crate::sock::WriteHalf, crate::sock::ReadHalf) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (_, wa) = crate::sock::split(a).unwrap();
        let (rb, _) = crate::sock::split(b).unwrap();
        (wa, rb)
    }

    fn frame(id: u32, len: usize, written: &Arc<AtomicU32>) -> OutFrame<Count> {
        OutFrame::guarded(
            Header::request(Opcode::PING, id),
            Bytes::from_static(b"tn"),
            Bytes::from(vec![id as u8; len]),
            Count(Arc::clone(written)),
        )
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_whole_and_every_guard_drops() {
        let (wa, b) = pair();
        let (out, writer) = Outbox::<Count>::new(wa, 16);
        let writer = tokio::spawn(writer);
        let written = Arc::new(AtomicU32::new(0));
        // Small frames coalesce; large ones are queued by reference; enough
        // bytes that the socket buffer fills and the writer task finishes.
        let sizes = [0usize, 10, 5000, 3, 200_000, 7, 1_000_000, 1];
        for (i, len) in sizes.iter().enumerate() {
            out.push(frame(i as u32, *len, &written)).unwrap();
            if i % 3 == 0 {
                out.flush();
            }
        }
        out.flush();
        drop(out);
        let mut reader = FrameReader::new(b, 2_000_000);
        for (i, len) in sizes.iter().enumerate() {
            let (h, p) = reader.next().await.unwrap().unwrap();
            assert_eq!(h.request_id, i as u32);
            assert_eq!(p.len(), len + 2);
            assert!(p[2..].iter().all(|b| *b == i as u8));
        }
        // The last handle is gone and the queue written: the stream ends.
        assert!(reader.next().await.unwrap().is_none());
        writer.await.unwrap().unwrap();
        assert_eq!(written.load(Ordering::SeqCst), sizes.len() as u32);
    }

    #[tokio::test]
    async fn a_lane_with_one_frame_is_not_queued_behind_a_busy_lane() {
        let (wa, b) = pair();
        let (out, writer) = Outbox::<Count>::new(wa, usize::MAX);
        let writer = tokio::spawn(writer);
        let written = Arc::new(AtomicU32::new(0));
        // Lane "busy" queues far more than the socket holds, so the rest
        // waits in the outbox; then lane "quiet" queues one frame.
        let (busy, quiet) = (Bytes::from_static(b"busy"), Bytes::from_static(b"quiet"));
        const BUSY: u32 = 20_000;
        for i in 0..BUSY {
            out.push_lane(&busy, frame(i, 100, &written)).unwrap();
        }
        out.flush();
        out.push_lane(&quiet, frame(BUSY, 100, &written)).unwrap();
        out.flush();
        drop(out);
        let mut reader = FrameReader::new(b, 1024);
        let mut position = None;
        for n in 0..=BUSY {
            let (h, _) = reader.next().await.unwrap().unwrap();
            if h.request_id == BUSY {
                position = Some(n);
            }
        }
        // Ahead of it: what the socket buffer held and the one batch already
        // taken when it was queued; not the other lane's whole backlog.
        let position = position.expect("the quiet lane's frame arrived");
        assert!(position < BUSY / 4, "arrived after {position} busy frames");
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_weak_handle_does_not_keep_the_stream_open() {
        let (wa, b) = pair();
        let (out, writer) = Outbox::<()>::new(wa, 16);
        let writer = tokio::spawn(writer);
        let weak = out.downgrade();
        let again = weak.upgrade().expect("a handle is alive");
        again
            .send(OutFrame::new(
                Header::request(Opcode::PING, 7),
                Bytes::new(),
            ))
            .unwrap();
        drop((out, again));
        let mut reader = FrameReader::new(b, 1024);
        assert_eq!(reader.next().await.unwrap().unwrap().0.request_id, 7);
        // Every strong handle is gone: the peer sees the end of the stream
        // although a weak handle remains, and the weak one cannot revive it.
        assert!(reader.next().await.unwrap().is_none());
        writer.await.unwrap().unwrap();
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn send_wait_waits_for_room_and_a_dead_peer_closes_the_outbox() {
        let (wa, b) = pair();
        let (out, writer) = Outbox::<Count>::new(wa, 2);
        let writer = tokio::spawn(writer);
        let written = Arc::new(AtomicU32::new(0));
        // Far more than the socket buffer holds: send_wait must wait for the
        // reader rather than queue without bound.
        let sender = {
            let out = out.clone();
            let written = Arc::clone(&written);
            tokio::spawn(async move {
                for i in 0..64 {
                    out.send_wait(frame(i, 64 * 1024, &written)).await.unwrap();
                }
            })
        };
        let mut reader = FrameReader::new(b, 1 << 20);
        for i in 0..64 {
            let (h, _) = reader.next().await.unwrap().unwrap();
            assert_eq!(h.request_id, i);
        }
        sender.await.unwrap();
        // The peer goes away: the next write fails and the outbox says so.
        drop(reader);
        let mut attempts = 0;
        let mut refused = false;
        while attempts < 64 && !refused {
            attempts += 1;
            refused = out.send(frame(attempts, 64 * 1024, &written)).is_err();
            tokio::task::yield_now().await;
        }
        assert!(refused, "a dead socket refuses frames");
        assert!(out.is_closed());
        assert!(writer.await.unwrap().is_err());
        // Every guard was dropped, written or not: nothing leaks.
        drop(out);
        assert_eq!(written.load(Ordering::SeqCst), 64 + attempts);
    }
}
