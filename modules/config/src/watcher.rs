//! The background watcher of the server-backed stores (`configuration.redis`,
//! `configuration.etcd`): one task per store that keeps a change feed open
//! (keyspace notifications, an etcd watch), reconnects with backoff, and when
//! it loses the feed ends every stream of the store with UNAVAILABLE — changes
//! may have been missed, and a client's resubscription gets a fresh snapshot
//! instead of silently missing them.

use std::sync::Arc;
use std::time::Duration;

use mecha_module::remote::{Backoff, Origin};
use mecha_module::DriverError;
use tokio::sync::watch;

use crate::drivers::{BoxFuture, ConfigError, Hub};

/// How long a subscribe waits for the feed to be up (at module start, or
/// while it reconnects) before answering UNAVAILABLE.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Whether the store's change feed is up.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Link {
    /// Not yet connected since start.
    Starting,
    /// Subscribed: changes are being delivered.
    Up,
    /// Lost or refused, with the reason; the watcher retries with backoff.
    Down(String),
}

/// Handed to one connection's life, which calls [`Connected::up`] once its
/// feed is established.
pub(crate) struct Connected<'a> {
    link: &'a watch::Sender<Link>,
    backoff: &'a mut Backoff,
}

impl Connected<'_> {
    /// The feed is up: subscribers may register, and the next loss starts
    /// again from the shortest pause.
    pub(crate) fn up(&mut self) {
        self.link.send_replace(Link::Up);
        self.backoff.reset();
    }
}

/// A store's watcher task and what it says about its feed. Dropping it stops
/// the task.
pub(crate) struct Watcher {
    link: watch::Receiver<Link>,
    task: tokio::task::JoinHandle<()>,
    origin: Origin,
    /// Why the feed is not up before it first connects, for messages.
    starting: &'static str,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts the watcher: `once` runs one connection's life (connect, call
    /// [`Connected::up`], publish changes to `hub`), answering `Ok` when the
    /// server closed the feed (reported as `closed`) and the error otherwise.
    /// Must be called inside a Tokio runtime.
    pub(crate) fn spawn<S, F>(
        shared: Arc<S>,
        origin: &Origin,
        hub: Arc<Hub>,
        starting: &'static str,
        closed: &'static str,
        once: F,
    ) -> Self
    where
        S: Send + Sync + 'static,
        F: for<'a> Fn(&'a S, Connected<'a>) -> BoxFuture<'a, Result<(), ConfigError>>
            + Send
            + 'static,
    {
        let (tx, link) = watch::channel(Link::Starting);
        let origin = origin.clone();
        let task_origin = origin.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let connected = Connected {
                    link: &tx,
                    backoff: &mut backoff,
                };
                let why = match once(&shared, connected).await {
                    Ok(()) => task_origin.unavailable(closed).to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("{why}; configuration streams are reset and the watcher reconnects");
                tx.send_replace(Link::Down(why.clone()));
                hub.end_all(&format!("{why}; subscribe again"));
                tokio::time::sleep(backoff.next_pause()).await;
            }
        });
        Self {
            link,
            task,
            origin,
            starting,
        }
    }

    /// Whether the feed is up now.
    pub(crate) fn is_up(&self) -> bool {
        *self.link.borrow() == Link::Up
    }

    /// Why the feed is not up: the last loss, or that it has not connected
    /// since start.
    pub(crate) fn down_reason(&self) -> String {
        match &*self.link.borrow() {
            Link::Down(why) => why.clone(),
            _ => self.origin.unavailable(self.starting).to_string(),
        }
    }

    /// Waits a little for the feed, answering why it is not up if it does
    /// not come.
    pub(crate) async fn wait_up(&self) -> Result<(), ConfigError> {
        let mut link = self.link.clone();
        let up = tokio::time::timeout(SUBSCRIBE_WAIT, link.wait_for(|l| *l == Link::Up)).await;
        if matches!(up, Ok(Ok(_))) {
            return Ok(());
        }
        Err(ConfigError::Driver(DriverError::Unavailable(
            self.down_reason(),
        )))
    }
}
