//! A personality's configuration on the daemon's side (DESIGN.md §8;
//! ARCHITECTURE.md, "Personalities"): where it listens, the sockets mechad
//! binds for it once and passes to every instance, and the queue that hands
//! each instance's session broker to `sessions.rs`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::OnceLock;

use mecha_abi::msg::ComponentSpec;
use tokio::sync::mpsc;

/// The component type of Dapr's personality.
pub const DAPR_TYPE: &str = "personality.dapr";

/// Where the personality listens, from its component's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// gRPC on this Unix socket path, if any.
    pub grpc_socket: Option<PathBuf>,
    /// gRPC on this TCP address, if any.
    pub grpc_tcp: Option<SocketAddr>,
    /// HTTP on this TCP address, if any.
    pub http_tcp: Option<SocketAddr>,
    /// The app ids whose Dapr apps the personality may serve calls for.
    pub apps: Vec<String>,
    /// Dapr API tokens and the tenants they stand for.
    pub tokens: ApiTokens,
}

/// The metadata field of the API tokens; mechad keeps it from the module.
pub const TOKENS_FIELD: &str = "apiTokens";

/// Dapr API tokens (`dapr-api-token`) and the tenant each stands for, from
/// `apiTokens: tenant=token,…` (a `secretKeyRef` keeps them out of the
/// file). Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiTokens(Vec<(String, String)>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.0.len())
    }
}

impl ApiTokens {
    /// Whether any token is configured: then a token a caller presents
    /// must be one of them.
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// The tenant `token` stands for. Every token is compared, each in time
    /// that does not depend on where it differs, so the answer's timing
    /// tells a caller nothing about the tokens.
    pub fn tenant(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (tenant, known) in &self.0 {
            if same_bytes(known.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Listen {
    /// Reads `grpcSocket` (default `dapr.sock` beside mecha's socket),
    /// `grpcAddress` (default Dapr's `127.0.0.1:50001`) and `httpAddress`
    /// (default `127.0.0.1:3500`); an empty value turns that socket off.
    /// `appCallbacks` is `appId=url` pairs, comma separated.
    pub fn from_component(spec: &ComponentSpec, socket_dir: &Path) -> Result<Self, String> {
        let field = |name: &str| {
            spec.metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let addr = |name: &str, default: &str| -> Result<Option<SocketAddr>, String> {
            let value = field(name).unwrap_or_else(|| default.to_owned());
            if value.is_empty() {
                return Ok(None);
            }
            value.parse().map(Some).map_err(|_| {
                format!(
                    "component {:?}: {name} {value:?} is not an IP address and port, such as 127.0.0.1:3500",
                    spec.name
                )
            })
        };
        let grpc_socket = match field("grpcSocket") {
            Some(path) if path.is_empty() => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(socket_dir.join("dapr.sock")),
        };
        let mut tokens = Vec::new();
        for pair in field(TOKENS_FIELD).unwrap_or_default().split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            match pair.split_once('=') {
                Some((tenant, token)) if !tenant.trim().is_empty() && token.trim().len() >= 16 => {
                    tokens.push((tenant.trim().to_owned(), token.trim().to_owned()));
                }
                // The token itself is never quoted back.
                _ => {
                    return Err(format!(
                        "component {:?}: {TOKENS_FIELD} takes tenant=token pairs separated by commas, each token at least 16 characters",
                        spec.name
                    ))
                }
            }
        }
        let apps = field("appCallbacks")
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(app, _)| app.trim().to_owned())
            .filter(|app| !app.is_empty())
            .collect();
        Ok(Self {
            grpc_socket,
            grpc_tcp: addr("grpcAddress", "127.0.0.1:50001")?,
            http_tcp: addr("httpAddress", "127.0.0.1:3500")?,
            apps,
            tokens: ApiTokens(tokens),
        })
    }
}

/// The sockets bound for a personality, kept by its module slot for the
/// daemon's life so that every instance accepts on the same ones.
pub struct Bound {
    /// `(name in MECHA_LISTEN, listening socket)`.
    pub sockets: Vec<(&'static str, OwnedFd)>,
    /// The Unix socket's path, which names it in tenant rules (`sockets`).
    pub unix_path: Arc<Path>,
}

impl Bound {
    /// Binds what `listen` asks for. A socket that cannot be bound (a port
    /// in use) is logged and left out: the personality serves the others,
    /// and mecha's own socket is never held up by a foreign API's.
    pub fn bind(listen: &Listen) -> Self {
        let mut sockets = Vec::new();
        let mut unix_path: Arc<Path> = Arc::from(Path::new("dapr"));
        if let Some(path) = &listen.grpc_socket {
            match crate::unix_socket::bind(path, 0o666, None).and_then(|l| {
                l.into_std()
                    .map_err(|source| crate::unix_socket::ListenError::Io {
                        path: path.clone(),
                        source,
                    })
            }) {
                Ok(l) => {
                    sockets.push((GRPC_UNIX, OwnedFd::from(l)));
                    unix_path = Arc::from(path.as_path());
                    tracing::info!(socket = %path.display(), "Dapr gRPC API on a Unix socket");
                }
                Err(e) => tracing::warn!("the Dapr personality's gRPC socket: {e}"),
            }
        }
        for (name, addr) in [(GRPC_TCP, listen.grpc_tcp), (HTTP_TCP, listen.http_tcp)] {
            let Some(addr) = addr else { continue };
            let bound = match crate::inherited::take_tcp(addr) {
                Some(fd) => Ok(std::net::TcpListener::from(fd)),
                None => std::net::TcpListener::bind(addr),
            };
            match bound {
                Ok(l) => {
                    crate::inherited::own(&l);
                    let shown = l.local_addr().map_or(addr, |a| a);
                    tracing::info!(address = %shown, "Dapr {name} API");
                    sockets.push((name, OwnedFd::from(l)));
                }
                Err(e) => {
                    tracing::warn!("the Dapr personality cannot listen on {addr} ({name}): {e}")
                }
            }
        }
        Self { sockets, unix_path }
    }
}

/// The names the module knows the sockets by (`mecha-mod-dapr`'s listen.rs).
const GRPC_UNIX: &str = "grpc-unix";
const GRPC_TCP: &str = "grpc-tcp";
const HTTP_TCP: &str = "http-tcp";

/// Wakes an idle (lazy) personality when a caller connects to any of its
/// sockets, as systemd's socket activation does: mechad holds the sockets,
/// so the caller waits in the backlog while the module starts and then
/// accepts it. Each socket is watched through a duplicate, for readiness
/// only; nothing is accepted here.
pub fn wake_on_caller(bound: &Bound, slot: Arc<dyn Wake>) {
    for (name, fd) in &bound.sockets {
        let name: &'static str = name;
        let watched = fd
            .try_clone()
            .and_then(|fd| mecha_wire::sock::register(fd, tokio::io::Interest::READABLE));
        let slot = Arc::clone(&slot);
        match watched {
            Ok(watched) => {
                tokio::spawn(async move {
                    if watched.readable().await.is_ok() {
                        tracing::info!(
                            socket = name,
                            "a caller connected: starting the personality"
                        );
                        slot.wake();
                    }
                });
            }
            Err(e) => tracing::warn!("cannot watch the personality's {name} socket: {e}"),
        }
    }
}

/// What a caller's arrival wakes (a module slot).
pub trait Wake: Send + Sync + 'static {
    /// Starts the module if it is idle.
    fn wake(&self);
}

/// A personality instance's end of its session broker, on its way from the
/// supervisor that started the instance to `sessions.rs`, which serves it.
/// (A queue rather than a call keeps the supervisor from depending on the
/// connection code, which depends on it.)
pub struct BrokerEnd {
    /// The daemon's end of the broker socketpair.
    pub fd: OwnedFd,
    /// The personality's configuration.
    pub listen: Arc<Listen>,
    /// Its sockets.
    pub bound: Arc<Bound>,
    /// The module's name, for logs.
    pub module: String,
}

/// Instances started before the daemon serves wait in this queue; a
/// personality restarts rarely, and one that outran this bound would only
/// find its broker closed and be restarted again.
const QUEUED_BROKERS: usize = 64;

type Queue = (
    mpsc::Sender<BrokerEnd>,
    parking_lot::Mutex<Option<mpsc::Receiver<BrokerEnd>>>,
);

fn queue() -> &'static Queue {
    static QUEUE: OnceLock<Queue> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel(QUEUED_BROKERS);
        (tx, parking_lot::Mutex::new(Some(rx)))
    })
}

/// Hands a new instance's broker to whoever serves sessions.
pub fn hand_over(end: BrokerEnd) {
    if let Err(e) = queue().0.try_send(end) {
        tracing::warn!("a personality's session broker was dropped: {e}");
    }
}

/// The queue of brokers to serve; `None` after the first call.
pub fn brokers() -> Option<mpsc::Receiver<BrokerEnd>> {
    queue().1.lock().take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metadata: &[(&str, &str)]) -> ComponentSpec {
        ComponentSpec {
            name: "dapr".into(),
            kind: DAPR_TYPE.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn listen_defaults_to_dapr_ports_and_a_socket_beside_mechas() {
        let l = Listen::from_component(&spec(&[]), Path::new("/run/mecha")).expect("valid");
        assert_eq!(l.grpc_socket, Some(PathBuf::from("/run/mecha/dapr.sock")));
        assert_eq!(l.grpc_tcp, Some("127.0.0.1:50001".parse().expect("addr")));
        assert_eq!(l.http_tcp, Some("127.0.0.1:3500".parse().expect("addr")));
        let off = Listen::from_component(
            &spec(&[
                ("grpcSocket", ""),
                ("grpcAddress", ""),
                ("httpAddress", "127.0.0.1:9"),
                (
                    "appCallbacks",
                    "orders=grpc://127.0.0.1:1, web=http://x:2,bad",
                ),
            ]),
            Path::new("/run/mecha"),
        )
        .expect("valid");
        assert_eq!((off.grpc_socket, off.grpc_tcp), (None, None));
        assert_eq!(off.apps, vec!["orders".to_string(), "web".to_string()]);
        let tokens = Listen::from_component(
            &spec(&[(
                TOKENS_FIELD,
                "checkout=0123456789abcdef0123, billing = fedcba9876543210fedc",
            )]),
            Path::new("/"),
        )
        .expect("valid")
        .tokens;
        assert_eq!(tokens.tenant("0123456789abcdef0123"), Some("checkout"));
        assert_eq!(tokens.tenant("fedcba9876543210fedc"), Some("billing"));
        assert_eq!(tokens.tenant("0123456789abcdef0124"), None);
        assert_eq!(tokens.tenant(""), None);
        assert!(
            !format!("{tokens:?}").contains("0123"),
            "tokens are never printed"
        );
        let short = Listen::from_component(&spec(&[(TOKENS_FIELD, "a=short")]), Path::new("/"))
            .expect_err("too short");
        assert!(!short.contains("short"), "{short}");
        let err = Listen::from_component(&spec(&[("httpAddress", "localhost")]), Path::new("/"))
            .expect_err("not an address");
        assert!(err.contains("httpAddress"), "{err}");
    }
}
