//! Who is behind a TCP connection from the loopback interface: the kernel's
//! socket table (`/proc/net/tcp`, `/proc/net/tcp6`) names the uid that owns
//! the peer's end, the way SO_PEERCRED names the peer of a Unix socket.
//!
//! Only a connection whose both ends are in this network namespace has its
//! peer's socket in our table, which is exactly the loopback case. The table
//! is read when an admin action is asked for, not on every page load.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The owner of a peer's socket: its uid and the socket's inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The effective uid that created the peer's socket.
    pub uid: u32,
    /// The socket's inode, to find the process holding it.
    pub inode: u64,
}

/// The owner of the socket at `peer` connected to our `local` address.
pub fn owner(peer: SocketAddr, local: SocketAddr) -> Option<Owner> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| find(&text, peer, local))
}

/// The line of `table` whose local end is `peer` and remote end is `local`.
fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<Owner> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (ours, theirs) = (fields.get(1)?, fields.get(2)?);
        if !same(parse(ours)?, peer) || !same(parse(theirs)?, local) {
            return None;
        }
        Some(Owner {
            uid: fields.get(7)?.parse().ok()?,
            inode: fields.get(9)?.parse().ok()?,
        })
    })
}

/// Equal addresses, an IPv4 address and its IPv6-mapped form included (a
/// dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`).
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// An address as the kernel prints it: `0100007F:1F90`, the address as the
/// hex of each 32-bit word in host byte order, then the port in hex.
fn parse(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The process that holds the socket with `inode`, found by reading every
/// process's descriptor table. That costs one directory read per process,
/// so it is done only for an admin action by root, whose mount namespace
/// decides whether it is an admin (`Daemon::is_admin`).
pub fn holder(inode: u64) -> Option<i32> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let fds = Path::new("/proc").join(pid.to_string()).join("fd");
            std::fs::read_dir(fds).is_ok_and(|dir| {
                dir.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == wanted.as_str())
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_parse() {
        let v4 = format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!(parse(&v4), Some("127.0.0.1:8080".parse().unwrap()));
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        let v6 = format!("{:08X}{:08X}{:08X}{one:08X}:0050", 0, 0, 0);
        assert_eq!(parse(&v6), Some("[::1]:80".parse().unwrap()));
        assert_eq!(parse("zz:1"), None);
        assert!(same(
            "[::ffff:127.0.0.1]:5".parse().unwrap(),
            "127.0.0.1:5".parse().unwrap()
        ));
    }

    #[test]
    fn finds_the_owner_of_a_real_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let found = owner(peer, local).expect("the peer's socket is in the table");
        assert_eq!(found.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(holder(found.inode), Some(std::process::id() as i32));
        // Our own end is not mistaken for the peer's.
        assert_eq!(
            owner(local, peer).map(|o| o.inode == found.inode),
            Some(false)
        );
    }
}
