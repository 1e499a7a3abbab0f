//! Peer links between the invoke modules of different nodes: TCP, mutual TLS
//! when configured, and the mecha-to-mecha frames of SPEC §7.8.6 (the same
//! 24-byte header; PEER_HELLO, PEER_ANNOUNCE, PEER_INVOKE).
//!
//! Each node dials every peer it discovers and uses that *outbound* link for
//! its own calls and its announcements; it serves calls and records
//! announcements on the links it *accepts*. So every pair of nodes has two
//! links, one per direction, and neither side has to multiplex requests of
//! both directions on one link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{InvokeCall, PeerAnnounce, PeerHello};
use mecha_abi::{Header, Opcode, Status, MAX_FRAME_CAP};
use mecha_wire::{write_loop, FrameReader, OutFrame};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::call::{error, serve_local, Answer};
use crate::settings::Discovery;
use crate::tls::{self, Tls};
use crate::Core;

/// Version of the peer protocol carried in PEER_HELLO.
const PEER_VERSION: u8 = 1;
/// Frames queued for one peer link's writer.
const LINK_QUEUE: usize = 1024;
/// Calls one accepted link may have in flight; more wait (backpressure).
const MAX_SERVED: usize = 1024;
/// Time for connecting, the TLS handshake and PEER_HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Redial pauses double from the first to the last.
const REDIAL: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A byte stream a peer link runs over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// This node's peer links.
pub struct Mesh {
    core: Arc<Core>,
    tls: Option<Tls>,
    /// Outbound links by the node name their peer proved.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    next_link: AtomicU64,
    /// Signalled when an outbound link comes up (calls waiting for one).
    link_up: Notify,
    /// Signalled when a peer dials us: our diallers retry at once rather
    /// than after their backoff, since the peer is evidently up.
    kick: Notify,
}

/// One outbound link: calls in flight on it.
struct Client {
    id: u64,
    tx: mpsc::Sender<OutFrame>,
    next: AtomicU32,
    waiting: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
}

/// Starts listening and discovery when peer links are configured.
pub fn start(core: &Arc<Core>) -> Result<(), String> {
    let s = &core.settings;
    if s.listen.is_none() && s.discovery == Discovery::None {
        return Ok(());
    }
    let tls = s.tls.as_ref().map(tls::load).transpose()?;
    let mesh = Arc::new(Mesh {
        core: Arc::clone(core),
        tls,
        clients: Mutex::default(),
        next_link: AtomicU64::new(1),
        link_up: Notify::new(),
        kick: Notify::new(),
    });
    let _ = core.mesh.set(Arc::clone(&mesh));
    if let Some(addr) = s.listen.clone() {
        tokio::spawn(Arc::clone(&mesh).listen(addr));
    }
    tokio::spawn(mesh.discover());
    Ok(())
}

impl Mesh {
    /// Sends one call to `node` and waits for its answer.
    /// A node that announced itself (over its link to us) but whose link
    /// from us is still being dialled is waited for, within the budget.
    pub async fn invoke(&self, node: &str, payload: Vec<u8>, budget: Duration) -> Answer {
        let until = tokio::time::Instant::now() + budget;
        let client = loop {
            let up = self.link_up.notified();
            if let Some(c) = self.clients.lock().get(node).cloned() {
                break c;
            }
            if tokio::time::timeout_at(until, up).await.is_err() {
                return error(
                    Status::Unavailable,
                    &format!("no link to node {node:?} is up"),
                );
            }
        };
        let budget = until.saturating_duration_since(tokio::time::Instant::now());
        let id = client.next.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        client.waiting.lock().insert(id, tx);
        let mut header = Header::request(Opcode::PEER_INVOKE, id);
        header.deadline_ms = u32::try_from(budget.as_millis()).unwrap_or(u32::MAX).max(1);
        if client
            .tx
            .send(OutFrame::new(header, Bytes::from(payload)))
            .await
            .is_err()
        {
            client.waiting.lock().remove(&id);
            return error(
                Status::Unavailable,
                &format!("the link to node {node:?} closed"),
            );
        }
        match tokio::time::timeout(budget, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => error(
                Status::Unavailable,
                &format!("the link to node {node:?} closed during the call"),
            ),
            Err(_) => {
                client.waiting.lock().remove(&id);
                error(
                    Status::DeadlineExceeded,
                    &format!("node {node:?} did not answer before the deadline"),
                )
            }
        }
    }

    /// Accepts peer links. Binding is retried: during a hot restart the old
    /// instance holds the port until it has drained.
    async fn listen(self: Arc<Self>, addr: String) {
        let listener = loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(%addr, "cannot listen for peers yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        tracing::info!(%addr, tls = self.tls.is_some(), "listening for peer links");
        loop {
            match listener.accept().await {
                Ok((tcp, from)) => {
                    let mesh = Arc::clone(&self);
                    tokio::spawn(async move {
                        // Anyone who can reach the port can end up here, so
                        // the warning is rate-limited.
                        if let Err(e) = Arc::clone(&mesh).serve_inbound(tcp).await {
                            mesh.core.warnings.warn(
                                "peer_link",
                                &format!("peer link from {from} refused or ended: {e}"),
                            );
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a peer link failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one accepted link: PEER_HELLO, then announcements and calls.
    async fn serve_inbound(self: Arc<Self>, tcp: TcpStream) -> Result<(), String> {
        let _ = tcp.set_nodelay(true);
        let (io, certs): (Box<dyn Io>, _) = match &self.tls {
            Some(t) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&t.server));
                let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                let certs = s.get_ref().1.peer_certificates().map(<[_]>::to_vec);
                (Box::new(s), Some(certs))
            }
            None => (Box::new(tcp), None),
        };
        let (rd, wr) = tokio::io::split(io);
        let mut reader = FrameReader::new(rd, MAX_FRAME_CAP);
        let (tx, rx) = mpsc::channel::<OutFrame>(LINK_QUEUE);
        tokio::spawn(write_loop(wr, rx));
        let (h, p) = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
            .await
            .map_err(|_| "no PEER_HELLO in time".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("closed before PEER_HELLO")?;
        if h.opcode != Opcode::PEER_HELLO || h.flags.is_response() {
            return Err(format!("expected PEER_HELLO, got {}", h.opcode));
        }
        let hello: PeerHello = mecha_abi::decode(&p).map_err(|e| e.to_string())?;
        if let Some(certs) = &certs {
            tls::check_name(certs.as_deref(), &hello.node)?;
        }
        let node = hello.node;
        let me = PeerHello {
            version: PEER_VERSION,
            node: self.core.settings.node.clone(),
        };
        let body = mecha_abi::encode(&me).map_err(|e| e.to_string())?;
        let _ = tx.send(OutFrame::new(h.response(Status::Ok), body)).await;
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%node, "peer link accepted");
        self.kick.notify_waiters();
        let served = Arc::new(Semaphore::new(MAX_SERVED));
        let result = loop {
            let (h, p) = match reader.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            };
            match h.opcode {
                Opcode::PEER_ANNOUNCE => match mecha_abi::decode::<PeerAnnounce>(&p) {
                    // The authenticated node name wins over the payload's.
                    Ok(a) => self.core.registry.set_remote(&node, link, a.apps),
                    Err(e) => self.core.warnings.warn(
                        "peer_announce",
                        &format!("bad PEER_ANNOUNCE from {node}: {e}"),
                    ),
                },
                Opcode::PEER_INVOKE => {
                    let Ok(permit) = Arc::clone(&served).acquire_owned().await else {
                        break Ok(());
                    };
                    let (core, tx, node) = (Arc::clone(&self.core), tx.clone(), node.clone());
                    tokio::spawn(async move {
                        let (status, body) = serve_peer_call(&core, &node, &h, &p).await;
                        let _ = tx.send(OutFrame::new(h.response(status), body)).await;
                        drop(permit);
                    });
                }
                other => {
                    let (status, body) = error(
                        Status::UnknownOpcode,
                        &format!("peer links do not serve {other}"),
                    );
                    let _ = tx.send(OutFrame::new(h.response(status), body)).await;
                }
            }
        };
        self.core.registry.drop_remote(&node, link);
        tracing::info!(%node, "peer link closed");
        result
    }

    /// Finds peers and keeps one dialler per address. A resolver whose
    /// answer can change (DNS) is asked again every announce interval, so
    /// nodes that join later are found.
    async fn discover(self: Arc<Self>) {
        let settings = &self.core.settings;
        let Some(resolver) = crate::resolve::from_settings(&settings.discovery, &settings.node)
        else {
            return;
        };
        let mut dialled: HashSet<String> = HashSet::new();
        loop {
            for t in resolver.resolve().await {
                if dialled.insert(t.addr.clone()) {
                    tokio::spawn(Arc::clone(&self).dial_loop(t.addr, t.server_name));
                }
            }
            if !resolver.changes() {
                return;
            }
            tokio::time::sleep(settings.announce_interval).await;
        }
    }

    /// Keeps an outbound link to `addr` up, redialling with backoff. Stops
    /// for good when the address turns out to be this node.
    async fn dial_loop(self: Arc<Self>, addr: String, server_name: String) {
        let mut pause = REDIAL.0;
        loop {
            match self.dial(&addr, &server_name).await {
                Ok(Dialled::Myself) => return,
                Ok(Dialled::Closed) => pause = REDIAL.0,
                Err(e) => tracing::debug!(%addr, "peer link failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.kick.notified() => {}
            }
            pause = (pause * 2).min(REDIAL.1);
        }
    }

    /// One outbound link: handshake, then announcements and call answers
    /// until it closes.
    async fn dial(&self, addr: &str, server_name: &str) -> Result<Dialled, String> {
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (io, certs): (Box<dyn Io>, _) = match &self.tls {
            Some(t) => {
                let name = ServerName::try_from(server_name.to_string())
                    .map_err(|e| format!("server name {server_name:?}: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&t.client));
                let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                let certs = s.get_ref().1.peer_certificates().map(<[_]>::to_vec);
                (Box::new(s), Some(certs))
            }
            None => (Box::new(tcp), None),
        };
        let (rd, wr) = tokio::io::split(io);
        let mut reader = FrameReader::new(rd, MAX_FRAME_CAP);
        let (tx, rx) = mpsc::channel::<OutFrame>(LINK_QUEUE);
        tokio::spawn(write_loop(wr, rx));
        let me = PeerHello {
            version: PEER_VERSION,
            node: self.core.settings.node.clone(),
        };
        let body = mecha_abi::encode(&me).map_err(|e| e.to_string())?;
        tx.send(OutFrame::new(Header::request(Opcode::PEER_HELLO, 0), body))
            .await
            .map_err(|_| "the link closed".to_string())?;
        let (h, p) = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
            .await
            .map_err(|_| "no PEER_HELLO answer in time".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("closed during PEER_HELLO (refused?)")?;
        if h.opcode != Opcode::PEER_HELLO || Status::from_code(h.status) != Status::Ok {
            return Err(format!("PEER_HELLO refused: {}", h.opcode));
        }
        let them: PeerHello = mecha_abi::decode(&p).map_err(|e| e.to_string())?;
        if them.node == self.core.settings.node {
            return Ok(Dialled::Myself);
        }
        if let Some(certs) = &certs {
            tls::check_name(certs.as_deref(), &them.node)?;
        }
        let node = them.node;
        let client = Arc::new(Client {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            tx: tx.clone(),
            next: AtomicU32::new(1),
            waiting: Mutex::default(),
        });
        self.clients
            .lock()
            .insert(node.clone(), Arc::clone(&client));
        tracing::info!(%node, %addr, "peer link up");
        self.link_up.notify_waiters();
        let reading = async {
            loop {
                match reader.next().await {
                    Ok(Some((h, p))) if h.flags.is_response() => {
                        let waiter = client.waiting.lock().remove(&h.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send((Status::from_code(h.status), p.to_vec()));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::select! {
            _ = reading => {}
            _ = self.announce(&tx) => {}
        }
        {
            let mut clients = self.clients.lock();
            if clients.get(&node).is_some_and(|c| c.id == client.id) {
                clients.remove(&node);
            }
        }
        client.waiting.lock().clear();
        tracing::info!(%node, "peer link down");
        Ok(Dialled::Closed)
    }

    /// Announces the local app ids at once, on every change, and every
    /// announce interval (so a lost or reordered announcement heals).
    async fn announce(&self, tx: &mpsc::Sender<OutFrame>) {
        let mut changes = self.core.registry.subscribe();
        let mut tick = tokio::time::interval(self.core.settings.announce_interval);
        loop {
            let a = PeerAnnounce {
                node: self.core.settings.node.clone(),
                apps: self.core.registry.local_apps(),
            };
            let Ok(body) = mecha_abi::encode(&a) else {
                return;
            };
            if tx
                .send(OutFrame::new(
                    Header::request(Opcode::PEER_ANNOUNCE, 0),
                    body,
                ))
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
}

/// How an outbound link ended.
enum Dialled {
    /// The address is this node.
    Myself,
    /// The link was up and closed.
    Closed,
}

/// Serves a PEER_INVOKE with a local instance; the caller's node is the one
/// the link authenticated, whatever the payload says.
async fn serve_peer_call(core: &Arc<Core>, node: &str, h: &Header, p: &Bytes) -> Answer {
    let mut call: InvokeCall = match mecha_abi::decode(p) {
        Ok(c) => c,
        Err(e) => return error(Status::InvalidArgument, &e.to_string()),
    };
    call.caller_node = node.to_string();
    call.trace_parent = crate::trace::ensure(&call.trace_parent);
    let budget = match h.deadline_ms {
        0 => Duration::from_secs(5),
        ms => Duration::from_millis(u64::from(ms)),
    };
    let payload = match mecha_abi::encode(&call) {
        Ok(p) => p,
        Err(e) => return error(Status::Internal, &e.to_string()),
    };
    serve_local(core, &call, &payload, budget, None).await
}
