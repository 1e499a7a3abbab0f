//! The Dapr personality (DESIGN.md §8): a module that speaks Dapr's gRPC and
//! HTTP APIs and translates them into mecha's native ABI, so an unchanged
//! Dapr application (through the official Dapr SDKs, or any HTTP client) runs
//! on mecha. It serves no native opcode: applications reach it on the
//! sockets mechad bound for it (`listen.rs`), and every caller is served
//! through a native session that mechad opened for that caller after
//! identifying it (`session.rs`), so quotas, allow lists and isolation are
//! the native ones.

pub mod accept;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod ops;
pub mod session;

use std::sync::Arc;

use mecha_abi::msg::LinkHello;
use mecha_abi::Status;
use mecha_module::{Ctx, DaemonLink, InitError, Module, Reply};
use parking_lot::Mutex;

use crate::listen::Listeners;
use crate::session::Sessions;

/// The personality module: its listeners until it starts serving them, and
/// the session broker.
pub struct DaprModule {
    listeners: Mutex<Option<Listeners>>,
    sessions: Arc<Sessions>,
    /// The Dapr-style apps the personality serves calls to (`appCallbacks`).
    callees: Vec<ops::callee::Callee>,
}

impl Module for DaprModule {
    const NAME: &'static str = "dapr";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        if let Some(other) = hello
            .components
            .iter()
            .find(|c| !c.kind.eq_ignore_ascii_case("personality.dapr"))
        {
            return Err(InitError(format!(
                "component {:?}: type {:?} is not served by the Dapr personality (personality.dapr)",
                other.name, other.kind
            )));
        }
        let mut callees = Vec::new();
        for component in &hello.components {
            for (name, value) in &component.metadata {
                if name == "appCallbacks" {
                    callees.extend(
                        ops::callee::parse(value).map_err(|e| {
                            InitError(format!("component {:?}: {e}", component.name))
                        })?,
                    );
                }
            }
        }
        raise_open_files();
        if let Some((_, catalog)) = hello.components.first().and_then(|c| {
            c.metadata
                .iter()
                .find(|(k, _)| k == mecha_metadata::PERSONALITY_CATALOG)
        }) {
            ops::metadata::set_catalog(catalog);
        }
        let listeners =
            Listeners::inherited().map_err(|e| InitError(format!("listening sockets: {e}")))?;
        let sessions = Sessions::inherited().map_err(|e| InitError(e.to_string()))?;
        Ok(Self {
            listeners: Mutex::new(Some(listeners)),
            sessions: Arc::new(sessions),
            callees,
        })
    }

    fn attach(&self, _daemon: DaemonLink) {
        let Some(listeners) = self.listeners.lock().take() else {
            return;
        };
        let tokio_unix = listeners
            .grpc_unix
            .and_then(|l| tokio::net::UnixListener::from_std(l).ok());
        let tokio_tcp = |l: Option<std::net::TcpListener>| {
            l.and_then(|l| tokio::net::TcpListener::from_std(l).ok())
        };
        let grpc_tcp = tokio_tcp(listeners.grpc_tcp);
        let http_tcp = tokio_tcp(listeners.http_tcp);
        if tokio_unix.is_some() || grpc_tcp.is_some() {
            tokio::spawn(grpc::serve(
                tokio_unix,
                grpc_tcp,
                Arc::clone(&self.sessions),
            ));
        }
        if let Some(l) = http_tcp {
            tokio::spawn(http::serve(l, Arc::clone(&self.sessions)));
        }
        if !self.callees.is_empty() {
            tokio::spawn(ops::callee::serve_all(
                self.callees.clone(),
                Arc::clone(&self.sessions),
            ));
        }
    }

    async fn handle(&self, ctx: Ctx, _payload: &[u8]) -> Reply {
        Reply::error(
            Status::Unsupported,
            format!(
                "the Dapr personality serves no native opcode ({})",
                ctx.opcode
            ),
        )
    }
}

/// Raises this process's soft limit of open descriptors to its hard limit:
/// each caller costs the personality three (its connection, the duplicate
/// kept to identify it, and its session), and what bounds them is each
/// tenant's connection quota in mechad, not a limit of this process. An
/// operator's `openFiles` for the module is its hard limit, and stays.
#[allow(unsafe_code)]
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the `rlimit` whose
    // address they get, which lives on this stack frame for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("cannot raise the open-file limit");
            }
        }
    }
}
