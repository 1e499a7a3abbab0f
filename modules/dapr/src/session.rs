//! Callers and their native sessions: every connection the personality
//! accepts is a [`Caller`], served through a mecha session that mechad opened
//! for it after identifying it from its socket (the session broker, fd 4).
//! The personality never names a tenant itself.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use mecha_abi::Status;
use mecha_client::Client;
use mecha_wire::session::{self, Broker};

use crate::ops::configuration::Watches;

/// The gRPC metadata key and HTTP header of Dapr's API token.
pub const TOKEN_HEADER: &str = "dapr-api-token";

/// How many sessions one connection may ask for, one per API token it
/// presents, whether granted or not. More are refused, so one connection
/// cannot make the daemon open sessions, or try tokens, without bound.
pub const MAX_TOKENS_PER_CONNECTION: usize = 4;

/// Why a caller is not served: the status and message mechad (or the
/// personality) gave. Translated into gRPC and HTTP errors by the servers.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The native status.
    pub status: Status,
    /// What to tell the caller.
    pub message: String,
}

impl Refused {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The module's end of the session broker. Requests are one at a time: the
/// daemon answers each in order, and identifying a caller is quick.
pub struct Sessions {
    broker: Broker,
    turn: tokio::sync::Mutex<()>,
}

impl Sessions {
    /// The broker mechad passed on [`session::SESSION_FD`].
    pub fn inherited() -> std::io::Result<Self> {
        let fd: i32 = std::env::var(session::SESSION_FD_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is not set; the Dapr personality is started by mechad",
                    session::SESSION_FD_ENV
                ))
            })?;
        Self::new(crate::listen::take_fd(fd))
    }

    /// Wraps the module's end of a broker socketpair.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        Ok(Self {
            broker: Broker::new(fd)?,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks mechad for a session for the caller behind `client`, presenting
    /// `token` if the caller gave one, and says HELLO on it.
    pub async fn open(&self, client: &impl AsFd, token: Option<&str>) -> Result<Client, Refused> {
        let request = session::Request::Caller {
            token: token.map(str::to_owned),
        };
        self.ask(&request, Some(client.as_fd())).await
    }

    /// Asks mechad for a session as the tenant that owns `app_id` in its
    /// configuration, for serving calls to a Dapr app the personality
    /// reaches on that tenant's behalf. mechad grants it only for the app
    /// ids the personality's component lists in `appCallbacks`.
    pub async fn open_app(&self, app_id: &str) -> Result<Client, Refused> {
        let request = session::Request::App {
            app_id: app_id.to_owned(),
        };
        self.ask(&request, None).await
    }

    async fn ask(
        &self,
        request: &session::Request,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Client, Refused> {
        let unavailable = |e: std::io::Error| {
            Refused::new(Status::Unavailable, format!("mechad's session broker: {e}"))
        };
        let (body, fd) = {
            let _turn = self.turn.lock().await;
            self.broker
                .send(&request.encode(), fd)
                .await
                .map_err(unavailable)?;
            self.broker
                .recv()
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    Refused::new(Status::Unavailable, "mechad closed the session broker")
                })?
        };
        let (code, message) =
            session::decode_answer(&body).map_err(|e| Refused::new(Status::Internal, e))?;
        let status = Status::from_code(code);
        if status != Status::Ok {
            return Err(Refused::new(status, message));
        }
        let fd = fd.ok_or_else(|| Refused::new(Status::Internal, "mechad sent no session"))?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        Client::from_stream(stream, Path::new("mechad session"))
            .await
            .map_err(|e| Refused::new(e.status().unwrap_or(Status::Unavailable), e.to_string()))
    }
}

/// One accepted connection: its socket (a duplicate, kept for identifying
/// it) and the sessions opened for it, one per API token it presented.
/// Dropping it (the connection closed) ends those sessions, and with them
/// the caller's streams and registrations in mechad.
pub struct Caller {
    socket: OwnedFd,
    sessions: Arc<Sessions>,
    state: tokio::sync::Mutex<CallerState>,
    /// Why a caller mechad cannot identify by the kernel (a remote TCP
    /// peer) is refused without a token; such a caller is served only
    /// with a token, and holds one of the few places for such callers.
    anonymous: parking_lot::Mutex<Option<(Refused, tokio::sync::OwnedSemaphorePermit)>>,
    watches: Watches,
}

#[derive(Default)]
struct CallerState {
    clients: Vec<(Option<String>, Client)>,
    /// Sessions asked for, granted or not: each costs the broker a turn.
    asked: usize,
}

impl Caller {
    /// A caller on `socket` (any descriptor of the accepted connection).
    pub fn new(socket: OwnedFd, sessions: Arc<Sessions>) -> Self {
        Self {
            socket,
            sessions,
            state: tokio::sync::Mutex::new(CallerState::default()),
            anonymous: parking_lot::Mutex::new(None),
            watches: Watches::default(),
        }
    }

    /// The configuration subscriptions this connection holds.
    pub fn watches(&self) -> &Watches {
        &self.watches
    }

    /// Marks a caller that mechad could not identify by the kernel: its
    /// requests without a token get `refused` (without asking mechad
    /// again), and `place` is held for as long as the caller lives.
    pub fn set_anonymous(&self, refused: Refused, place: tokio::sync::OwnedSemaphorePermit) {
        *self.anonymous.lock() = Some((refused, place));
    }

    /// Whether a session serves this caller yet.
    pub async fn is_served(&self) -> bool {
        !self.state.lock().await.clients.is_empty()
    }

    /// Ends the connection (both directions), whoever serves it: the
    /// server sees it close and lets go of it.
    pub fn close(&self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.socket),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// The native client serving this caller's requests made with `token`
    /// (Dapr's `dapr-api-token`), opened at the first such request.
    pub async fn client(&self, token: Option<&str>) -> Result<Client, Refused> {
        let mut state = self.state.lock().await;
        if let Some((_, client)) = state.clients.iter().find(|(t, _)| t.as_deref() == token) {
            return Ok(client.clone());
        }
        if token.is_none() {
            if let Some((refused, _)) = self.anonymous.lock().as_ref() {
                return Err(refused.clone());
            }
        }
        if state.asked >= MAX_TOKENS_PER_CONNECTION {
            return Err(Refused::new(
                Status::ResourceExhausted,
                format!(
                    "one connection may ask for at most {MAX_TOKENS_PER_CONNECTION} sessions (one per API token)"
                ),
            ));
        }
        state.asked += 1;
        let client = self.sessions.open(&self.socket, token).await?;
        state
            .clients
            .push((token.map(str::to_owned), client.clone()));
        Ok(client)
    }
}
