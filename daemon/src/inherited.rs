//! Listening sockets handed over by the daemon this one took over from
//! (`handover`), each claimed once by whatever would otherwise bind it: the
//! application sockets, a personality's sockets, the HTTP endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
use parking_lot::Mutex;

/// What a listening socket listens on: the key it is claimed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Address {
    /// A Unix socket's path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// The address `fd` is bound to, if it is a Unix socket with a path or a
/// TCP socket.
pub fn address_of(fd: &impl AsFd) -> Option<Address> {
    use std::os::fd::AsRawFd;
    let addr: SockaddrStorage = getsockname(fd.as_fd().as_raw_fd()).ok()?;
    if let Some(unix) = addr.as_unix_addr() {
        return unix.path().map(|p| Address::Unix(p.to_path_buf()));
    }
    match addr.family()? {
        AddressFamily::Inet | AddressFamily::Inet6 => {
            // std reads a TCP socket's address without nix's `net` feature.
            let dup = fd.as_fd().try_clone_to_owned().ok()?;
            std::net::TcpListener::from(dup)
                .local_addr()
                .ok()
                .map(Address::Tcp)
        }
        _ => None,
    }
}

fn sockets() -> &'static Mutex<HashMap<Address, OwnedFd>> {
    static SOCKETS: OnceLock<Mutex<HashMap<Address, OwnedFd>>> = OnceLock::new();
    SOCKETS.get_or_init(Default::default)
}

/// Keeps `fd`, listening on `address`, for whoever binds that address next.
pub fn keep(address: Address, fd: OwnedFd) {
    sockets().lock().insert(address, fd);
}

/// The inherited listening socket on Unix path `path`, once.
pub fn take_unix(path: &Path) -> Option<OwnedFd> {
    claim(Address::Unix(path.to_path_buf()))
}

/// The inherited listening socket on TCP address `addr`, once.
pub fn take_tcp(addr: SocketAddr) -> Option<OwnedFd> {
    claim(Address::Tcp(addr))
}

fn claimed_list() -> &'static Mutex<Vec<Address>> {
    static CLAIMED: OnceLock<Mutex<Vec<Address>>> = OnceLock::new();
    CLAIMED.get_or_init(Default::default)
}

fn claim(address: Address) -> Option<OwnedFd> {
    let fd = sockets().lock().remove(&address)?;
    claimed_list().lock().push(address);
    Some(fd)
}

/// The inherited sockets this daemon serves on: the old daemon stops
/// accepting on those (it has nothing left to serve there), and keeps the
/// others (its own pod's probes, say).
pub fn claimed() -> Vec<Address> {
    claimed_list().lock().clone()
}

/// Closes every inherited socket nobody claimed: the configuration of this
/// daemon no longer names it.
pub fn close_unclaimed() {
    let left: Vec<Address> = sockets().lock().drain().map(|(a, _)| a).collect();
    for address in left {
        tracing::info!(%address, "closing an inherited socket this configuration does not use");
    }
}

fn own_sockets() -> &'static Mutex<Vec<OwnedFd>> {
    static OWN: OnceLock<Mutex<Vec<OwnedFd>>> = OnceLock::new();
    OWN.get_or_init(Default::default)
}

/// Records a listening socket this daemon serves, to hand over to the
/// daemon that may take over from it (a duplicate is kept).
pub fn own(fd: &impl AsFd) {
    match fd.as_fd().try_clone_to_owned() {
        Ok(dup) => own_sockets().lock().push(dup),
        Err(e) => tracing::warn!("cannot keep a listening socket for a hand-over: {e}"),
    }
}

/// Duplicates of this daemon's listening sockets, with their addresses.
pub fn owned() -> Vec<(Address, OwnedFd)> {
    own_sockets()
        .lock()
        .iter()
        .filter_map(|fd| Some((address_of(fd)?, fd.try_clone().ok()?)))
        .collect()
}
