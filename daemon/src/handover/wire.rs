//! The hand-over protocol between two daemons (ARCHITECTURE.md, "Daemon
//! hand-over"): its version, its messages, and one blocking channel that
//! carries them with their descriptors.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use mecha_wire::fdstream::FdStream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::inherited::Address;

/// The hand-over protocol version this daemon speaks best. A build with
/// the `handover-next` feature speaks one more, to test that a newer daemon
/// takes over from an older one.
pub const VERSION: u32 = if cfg!(feature = "handover-next") {
    2
} else {
    1
};
/// The oldest version this daemon still speaks. Versions 1 and 2 have the
/// same messages; a version that changes them raises this.
pub const MIN_VERSION: u32 = 1;

/// From the new daemon to the old one.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToOld {
    /// The first message: the versions the new daemon speaks.
    Offer {
        min_version: u32,
        max_version: u32,
        pid: u32,
        daemon_version: String,
        /// Its network namespace (`netns`).
        netns: u64,
    },
    /// Its modules are started and checked: the old daemon may hand over.
    Ready,
    /// It cannot go on (a module failed to start, ...); it exits.
    Abort { reason: String },
    /// It has every connection and serves: the old daemon may go. It
    /// serves on these of the old daemon's listening sockets.
    Taken { claimed: Vec<Address> },
}

/// From the old daemon to the new one.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToNew {
    /// The version both speak, with the old daemon's listening sockets as
    /// descriptors in the order of `listeners`. TCP sockets are only sent
    /// when both daemons share a network namespace (`netns`).
    Accept {
        version: u32,
        pid: u32,
        listeners: Vec<Address>,
    },
    /// No hand-over: the reason.
    Refuse { reason: String },
    /// One live connection, its socket as the descriptor.
    Conn(ConnState),
    /// Every connection has been sent.
    ConnsDone,
    /// The old daemon's module instances have exited: the new ones may
    /// open what they hold exclusively (database files).
    Released,
    /// The hand-over failed after `Ready`; the old daemon serves on.
    Failed { reason: String },
}

/// What the new daemon needs to go on serving a connection. Who the peer is
/// does not travel: the new daemon asks the kernel again, from the socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnState {
    /// The listening socket it connected to (tenant rules may name it).
    pub socket: PathBuf,
    /// The negotiated ABI version; `None` before HELLO.
    pub version: Option<u8>,
    /// Its open streams, to open again on the new daemon's modules.
    pub streams: Vec<StreamState>,
    /// Bytes read from the socket and not yet served, in order: requests
    /// held while the hand-over waited, then any partial frame.
    pub unread: Vec<u8>,
}

/// One open stream of a connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamState {
    /// The id the application knows.
    pub stream_id: u32,
    /// The opcode that opened it.
    pub opcode: u16,
    /// The opening request's payload; `None`: the stream can only be reset.
    pub opening: Option<Vec<u8>>,
}

/// The error of a hand-over step.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the hand-over channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the other daemon closed the hand-over channel")]
    Closed,
    #[error("a hand-over message could not be decoded: {0}")]
    Decode(String),
}

/// One end of a hand-over channel.
pub struct Channel(FdStream);

impl Channel {
    /// Wraps a connected socket; reads wait at most `timeout`.
    pub fn new(stream: UnixStream, timeout: Duration) -> std::io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self(FdStream::new(stream)))
    }

    /// Changes how long reads wait.
    pub fn set_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.0.socket().set_read_timeout(Some(timeout))
    }

    /// Sends `msg` with `fds`.
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let body = mecha_abi::encode(msg).map_err(|e| WireError::Decode(e.to_string()))?;
        Ok(self.0.send(&body, fds)?)
    }

    /// Receives a message and its descriptors.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), WireError> {
        let (body, fds) = self.0.recv()?.ok_or(WireError::Closed)?;
        let msg = mecha_abi::decode(&body).map_err(|e| WireError::Decode(e.to_string()))?;
        Ok((msg, fds))
    }
}

/// Runs `f` with the channel on a blocking thread and gives both back.
pub async fn blocking<R: Send + 'static>(
    mut channel: Channel,
    f: impl FnOnce(&mut Channel) -> R + Send + 'static,
) -> (Channel, R) {
    let joined = tokio::task::spawn_blocking(move || {
        let r = f(&mut channel);
        (channel, r)
    })
    .await;
    match joined {
        Ok(both) => both,
        // Only a panic in `f` gets here, and `f` is this module's own code.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The hand-over socket of the daemon serving `socket`.
pub fn socket_path(socket: &std::path::Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".handover");
    PathBuf::from(name)
}

/// This process's network namespace, to tell whether the two daemons can
/// share TCP listeners.
pub fn netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}
