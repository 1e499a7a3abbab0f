//! Configuration calls of the Rust client (async and blocking), including
//! watches that survive module restarts by subscribing again transparently.

use std::collections::BTreeMap;
use std::time::Duration;

use mecha_abi::msg::{
    ConfigGetReply, ConfigGetRequest, ConfigItem, ConfigSetItem, ConfigSetReply, ConfigSetRequest,
    ConfigSubscribeRequest, ConfigUpdate,
};
use mecha_abi::{Opcode, Status};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::request::Request;
use crate::retry::{is_retryable, Backoff, JitterSeed};
use crate::{Client, Error, Subscription};

/// How long a watch keeps trying to subscribe again after its stream was
/// reset, before it gives up and reports the last error. Long enough to ride
/// out a module's crash restarts (whose backoff grows to 5 s), short enough
/// that a module marked failed is reported rather than waited for forever.
pub const RESUBSCRIBE_WINDOW: Duration = Duration::from_secs(30);

impl Request for ConfigGetRequest {
    const OPCODE: Opcode = Opcode::CONFIG_GET;
    type Reply = ConfigGetReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

// A repeated CONFIG_SET writes the same values again, but under a new version,
// and every watcher hears of it twice; like other unconditional writes it is
// retried only when the caller opts in.
impl Request for ConfigSetRequest {
    const OPCODE: Opcode = Opcode::CONFIG_SET;
    type Reply = ConfigSetReply;
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Client {
    /// Reads configuration items of `store` ("" = the default store): the
    /// items of `keys` in request order, or every item when `keys` is empty.
    /// Missing keys are simply absent from the answer.
    pub async fn get_config(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<Vec<ConfigItem>, Error> {
        let req = ConfigGetRequest {
            store: store.into(),
            keys,
        };
        Ok(self.call(&req).await?.items)
    }

    /// Admin: writes `items` and deletes `delete` in a writable store ("" =
    /// the default), atomically; returns each item's new version, in order.
    /// Non-admins get PERMISSION_DENIED, read-only (file) stores
    /// INVALID_ARGUMENT.
    pub async fn set_config(
        &self,
        store: &str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        let req = ConfigSetRequest {
            store: store.into(),
            items,
            delete,
        };
        Ok(self.call(&req).await?.versions)
    }

    /// Admin: writes one item without metadata; returns its new version.
    pub async fn set_config_value(
        &self,
        store: &str,
        key: &str,
        value: &str,
    ) -> Result<String, Error> {
        let item = ConfigSetItem {
            key: key.into(),
            value: value.into(),
            metadata: Vec::new(),
        };
        let mut versions = self.set_config(store, vec![item], Vec::new()).await?;
        versions
            .pop()
            .ok_or_else(|| Error::Protocol("CONFIG_SET answered no version".into()))
    }

    /// Admin: deletes `keys` from a writable store; missing keys are fine.
    pub async fn delete_config(&self, store: &str, keys: Vec<String>) -> Result<(), Error> {
        self.set_config(store, Vec::new(), keys).await.map(|_| ())
    }

    /// Watches `keys` of `store` (every key when empty): the watch starts
    /// with the current items ([`ConfigWatch::snapshot`]) and then yields one
    /// [`ConfigUpdate`] per change. See [`ConfigWatch`] for what happens when
    /// the module restarts or the caller falls behind.
    pub async fn watch_config(&self, store: &str, keys: Vec<String>) -> Result<ConfigWatch, Error> {
        let (items, sub) =
            subscribe(self.clone(), store.to_owned(), keys.clone(), self.timeout()).await?;
        Ok(ConfigWatch::new(
            self.clone(),
            store.to_owned(),
            keys,
            items,
            sub,
        ))
    }
}

/// Opens a CONFIG_SUBSCRIBE stream, retrying retryable failures (the module
/// is restarting or unavailable, the attempt timed out) with jittered backoff
/// for up to `window`.
async fn subscribe(
    client: Client,
    store: String,
    keys: Vec<String>,
    window: Duration,
) -> Result<(Vec<ConfigItem>, Subscription), Error> {
    let payload = mecha_abi::encode(&ConfigSubscribeRequest { store, keys })
        .map_err(|e| Error::Protocol(e.to_string()))?;
    let deadline = Instant::now() + window;
    let mut backoff = Backoff::new(&client.retry_policy(), JitterSeed::from_clock().next());
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Each attempt gets only the time left, so the whole loop fits the window.
        let attempt = client
            .with_timeout(remaining.max(Duration::from_millis(1)))
            .open_stream(Opcode::CONFIG_SUBSCRIBE, payload.clone())
            .await;
        let err = match attempt {
            Ok((body, sub)) => {
                let reply: ConfigGetReply = mecha_abi::decode(&body).map_err(|e| {
                    Error::Protocol(format!("undecodable CONFIG_SUBSCRIBE answer: {e}"))
                })?;
                return Ok((reply.items, sub));
            }
            Err(e) => e,
        };
        let transient = is_retryable(&err) || err.status() == Some(Status::DeadlineExceeded);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let pause = backoff.next_pause(remaining);
        if !transient || remaining.saturating_sub(pause).is_zero() {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Whether a stream that ended with `err` should be subscribed again: it was
/// reset by a module restart (UNAVAILABLE) or ended because the caller fell
/// behind and pushes were dropped (RESOURCE_EXHAUSTED).
fn resubscribable(err: &Error) -> bool {
    matches!(
        err.status(),
        Some(Status::Unavailable | Status::ResourceExhausted)
    )
}

/// Where a watch gets its next event from.
enum Source {
    /// The open stream.
    Open(Subscription),
    /// A task subscribing again. Running it as a task keeps
    /// [`ConfigWatch::next`] cancel-safe: a caller that stops waiting (a
    /// timeout) does not abandon a half-made subscription.
    Reopening(JoinHandle<Result<(Vec<ConfigItem>, Subscription), Error>>),
    /// The watch is over.
    Ended,
}

/// A watch of configuration items: an unbroken sequence of
/// [`ConfigUpdate`]s, one per change, after the items of
/// [`snapshot`](Self::snapshot).
///
/// The watch repairs its stream by itself. When the stream is reset because
/// the config module restarted, or ended because the caller fell behind and
/// pushes were dropped (or a gap shows in the pushes' `seq`), the watch
/// subscribes again — retrying for up to [`RESUBSCRIBE_WINDOW`] — and turns
/// the fresh snapshot into one update holding every item whose value or
/// metadata differs from what the caller has seen and every key that
/// disappeared. So a caller never misses the latest state, though a slow one
/// may see several changes of a key merged into one (its latest value).
/// Only a change of version alone, with the same value and metadata, made
/// while the stream was being repaired, goes unreported.
///
/// The `seq` of the updates counts the updates this watch has delivered,
/// from 1. [`next`](Self::next) is cancel-safe: it may be wrapped in a
/// timeout and called again.
pub struct ConfigWatch {
    client: Client,
    store: String,
    keys: Vec<String>,
    source: Source,
    snapshot: Vec<ConfigItem>,
    tracker: Tracker,
    /// The `seq` the next push on the current stream must carry.
    next_push: u64,
    cancelled: bool,
}

impl ConfigWatch {
    fn new(
        client: Client,
        store: String,
        keys: Vec<String>,
        items: Vec<ConfigItem>,
        sub: Subscription,
    ) -> Self {
        Self {
            client,
            store,
            keys,
            source: Source::Open(sub),
            tracker: Tracker::new(&items),
            snapshot: items,
            next_push: 1,
            cancelled: false,
        }
    }

    /// The items as they were when the watch opened.
    pub fn snapshot(&self) -> &[ConfigItem] {
        &self.snapshot
    }

    /// The items as the caller knows them now: the snapshot with every
    /// delivered update applied, sorted by key.
    pub fn current(&self) -> impl Iterator<Item = &ConfigItem> {
        self.tracker.known.values()
    }

    /// The next change. `None` once the watch is over: cancelled, or ended
    /// by the module. An error also ends the watch: the stream failed in a
    /// way subscribing again cannot fix, or could not be re-established
    /// within [`RESUBSCRIBE_WINDOW`].
    pub async fn next(&mut self) -> Option<Result<ConfigUpdate, Error>> {
        loop {
            match &mut self.source {
                Source::Ended => return None,
                Source::Reopening(task) => {
                    let result = match task.await {
                        Ok(result) => result,
                        Err(e) => Err(Error::Closed(format!("the resubscribe task failed: {e}"))),
                    };
                    match result {
                        Ok((items, sub)) => {
                            self.source = Source::Open(sub);
                            self.next_push = 1;
                            if let Some(update) = self.tracker.resync(items) {
                                return Some(Ok(update));
                            }
                        }
                        Err(e) => {
                            self.source = Source::Ended;
                            return Some(Err(e));
                        }
                    }
                }
                Source::Open(sub) => {
                    let event = sub.next().await;
                    if self.cancelled {
                        // Whatever still arrives after a cancel is dropped;
                        // the stream's end (or error) finishes the watch.
                        if !matches!(event, Some(Ok(_))) {
                            self.source = Source::Ended;
                        }
                        continue;
                    }
                    match event {
                        Some(Ok(bytes)) => {
                            let update: ConfigUpdate = match mecha_abi::decode(&bytes) {
                                Ok(update) => update,
                                Err(e) => {
                                    self.source = Source::Ended;
                                    return Some(Err(Error::Protocol(format!(
                                        "undecodable configuration update: {e}"
                                    ))));
                                }
                            };
                            if update.seq != self.next_push {
                                // Pushes were lost on the way: this update
                                // cannot be applied on top of what the caller
                                // has seen. Start over from a snapshot.
                                self.reopen();
                                continue;
                            }
                            self.next_push += 1;
                            if let Some(update) = self.tracker.apply(update) {
                                return Some(Ok(update));
                            }
                        }
                        Some(Err(e)) if resubscribable(&e) => self.reopen(),
                        Some(Err(e)) => {
                            self.source = Source::Ended;
                            return Some(Err(e));
                        }
                        None => {
                            self.source = Source::Ended;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Cancels the watch; [`next`](Self::next) then returns `None` once the
    /// daemon confirmed the end of the stream.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        self.cancelled = true;
        match &self.source {
            Source::Open(sub) => sub.cancel().await,
            Source::Reopening(task) => {
                task.abort();
                self.source = Source::Ended;
                Ok(())
            }
            Source::Ended => Ok(()),
        }
    }

    /// Replaces the stream by a new subscription, made by a task. Dropping
    /// the old subscription cancels it if it is still open.
    fn reopen(&mut self) {
        let task = tokio::spawn(subscribe(
            self.client.clone(),
            self.store.clone(),
            self.keys.clone(),
            RESUBSCRIBE_WINDOW,
        ));
        self.source = Source::Reopening(task);
    }
}

/// What the caller of a watch has been told, and the numbering of the
/// updates it gets.
#[derive(Debug)]
struct Tracker {
    /// The snapshot plus every delivered update, by key.
    known: BTreeMap<String, ConfigItem>,
    /// Updates delivered to the caller.
    delivered: u64,
}

impl Tracker {
    fn new(items: &[ConfigItem]) -> Self {
        Self {
            known: items.iter().map(|i| (i.key.clone(), i.clone())).collect(),
            delivered: 0,
        }
    }

    /// Applies a push to what the caller knows and renumbers it.
    fn apply(&mut self, update: ConfigUpdate) -> Option<ConfigUpdate> {
        for key in &update.deleted {
            self.known.remove(key);
        }
        for item in &update.items {
            self.known.insert(item.key.clone(), item.clone());
        }
        self.emit(update.items, update.deleted)
    }

    /// Turns a fresh snapshot into the update that brings the caller from
    /// what it knows to the snapshot.
    fn resync(&mut self, items: Vec<ConfigItem>) -> Option<ConfigUpdate> {
        let fresh: BTreeMap<String, ConfigItem> =
            items.into_iter().map(|i| (i.key.clone(), i)).collect();
        let deleted: Vec<String> = self
            .known
            .keys()
            .filter(|key| !fresh.contains_key(*key))
            .cloned()
            .collect();
        // Versions are compared loosely on purpose: a restarted module may
        // number unchanged items anew, which is no news to the caller.
        let changed: Vec<ConfigItem> = fresh
            .values()
            .filter(|item| match self.known.get(&item.key) {
                Some(old) => old.value != item.value || old.metadata != item.metadata,
                None => true,
            })
            .cloned()
            .collect();
        self.known = fresh;
        self.emit(changed, deleted)
    }

    fn emit(&mut self, items: Vec<ConfigItem>, deleted: Vec<String>) -> Option<ConfigUpdate> {
        if items.is_empty() && deleted.is_empty() {
            return None;
        }
        self.delivered += 1;
        Some(ConfigUpdate {
            seq: self.delivered,
            items,
            deleted,
        })
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        // The subscription, if any, cancels itself when dropped; a task still
        // subscribing is stopped so it does not open a stream nobody reads.
        if let Source::Reopening(task) = &self.source {
            task.abort();
        }
    }
}

impl crate::blocking::Client {
    blocking_calls! {
        /// Reads items of `store` ("" = default): those of `keys` in order,
        /// or every item when `keys` is empty; missing keys are absent.
        fn get_config(store: &str, keys: Vec<String>) -> Vec<ConfigItem>;
        /// Admin: writes `items` and deletes `delete` atomically; the new
        /// version of each item, in order.
        fn set_config(store: &str, items: Vec<ConfigSetItem>, delete: Vec<String>) -> Vec<String>;
        /// Admin: writes one item without metadata; its new version.
        fn set_config_value(store: &str, key: &str, value: &str) -> String;
        /// Admin: deletes `keys`; missing keys are fine.
        fn delete_config(store: &str, keys: Vec<String>) -> ();
    }

    /// Watches `keys` of `store` (every key when empty); see [`ConfigWatch`].
    pub fn watch_config(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<BlockingConfigWatch<'_>, Error> {
        let watch = self.rt.block_on(self.inner.watch_config(store, keys))?;
        Ok(BlockingConfigWatch {
            client: self,
            watch,
        })
    }
}

/// A [`ConfigWatch`] for code without a runtime: each call runs on the
/// blocking client's runtime. The daemon's pushes are read only while a call
/// runs, so a watch left unread for long may end up resubscribing (which it
/// does by itself) rather than replaying every change.
pub struct BlockingConfigWatch<'a> {
    client: &'a crate::blocking::Client,
    watch: ConfigWatch,
}

impl BlockingConfigWatch<'_> {
    /// The items as they were when the watch opened.
    pub fn snapshot(&self) -> &[ConfigItem] {
        self.watch.snapshot()
    }

    /// The items as the caller knows them now, sorted by key.
    pub fn current(&self) -> impl Iterator<Item = &ConfigItem> {
        self.watch.current()
    }

    /// The next change, waiting as long as it takes; `None` once the watch
    /// is over. See [`ConfigWatch::next`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<ConfigUpdate, Error>> {
        self.client.rt.block_on(self.watch.next())
    }

    /// The next change, waiting at most `timeout`. `Some(Err(Error::Timeout))`
    /// means nothing changed in time; the watch goes on and may be asked
    /// again. Any other error, or `None`, ends it as for [`next`](Self::next).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<ConfigUpdate, Error>> {
        let watch = &mut self.watch;
        self.client
            .rt
            .block_on(async { tokio::time::timeout(timeout, watch.next()).await })
            .unwrap_or(Some(Err(Error::Timeout(timeout))))
    }

    /// Cancels the watch; [`next`](Self::next) then returns `None`.
    pub fn cancel(&mut self) -> Result<(), Error> {
        self.client.rt.block_on(self.watch.cancel())
    }
}

impl Drop for BlockingConfigWatch<'_> {
    fn drop(&mut self) {
        // Outside the runtime the subscription could not cancel its stream
        // itself, which would leave the module pushing until the connection
        // closes; so the cancel is sent here, on the client's runtime.
        if !self.watch.cancelled && !matches!(self.watch.source, Source::Ended) {
            let _ = self.client.rt.block_on(self.watch.cancel());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str, version: &str) -> ConfigItem {
        ConfigItem {
            key: key.into(),
            value: value.into(),
            version: version.into(),
            metadata: Vec::new(),
        }
    }

    #[test]
    fn get_is_retried_and_set_is_not() {
        let get = ConfigGetRequest {
            store: String::new(),
            keys: vec!["a".into()],
        };
        assert!(get.is_idempotent());
        assert_eq!(ConfigGetRequest::OPCODE, Opcode::CONFIG_GET);
        let set = ConfigSetRequest {
            store: String::new(),
            items: Vec::new(),
            delete: vec!["a".into()],
        };
        assert!(!set.is_idempotent());
        assert_eq!(ConfigSetRequest::OPCODE, Opcode::CONFIG_SET);
    }

    #[test]
    fn resets_and_overflows_resubscribe_other_errors_do_not() {
        let status = |status| Error::Status {
            status,
            message: String::new(),
        };
        assert!(resubscribable(&status(Status::Unavailable)));
        assert!(resubscribable(&status(Status::ResourceExhausted)));
        assert!(!resubscribable(&status(Status::PermissionDenied)));
        assert!(!resubscribable(&status(Status::InvalidArgument)));
        assert!(!resubscribable(&Error::Closed("gone".into())));
    }

    #[test]
    fn resync_reports_value_changes_and_disappearances_only() {
        let mut tracker = Tracker::new(&[
            item("a", "1", "10"),
            item("b", "2", "10"),
            item("c", "3", "10"),
        ]);
        // `a` is renumbered only, `b` changed, `c` vanished, `d` is new.
        let update = tracker
            .resync(vec![
                item("a", "1", "20"),
                item("b", "two", "21"),
                item("d", "4", "22"),
            ])
            .expect("something changed");
        assert_eq!(update.seq, 1);
        assert_eq!(
            update.items,
            vec![item("b", "two", "21"), item("d", "4", "22")]
        );
        assert_eq!(update.deleted, vec!["c".to_string()]);
        let versions: Vec<&str> = tracker.known.values().map(|i| i.version.as_str()).collect();
        assert_eq!(versions, vec!["20", "21", "22"], "versions are adopted");
        // The same snapshot again is no news.
        assert_eq!(
            tracker.resync(vec![
                item("a", "1", "20"),
                item("b", "two", "21"),
                item("d", "4", "22")
            ]),
            None
        );
    }

    #[test]
    fn pushes_update_what_the_caller_knows_and_are_renumbered() {
        let mut tracker = Tracker::new(&[item("a", "1", "10")]);
        tracker.resync(vec![item("a", "2", "11")]);
        let update = tracker
            .apply(ConfigUpdate {
                seq: 1,
                items: vec![item("b", "1", "12")],
                deleted: vec!["a".into()],
            })
            .expect("an update");
        assert_eq!(update.seq, 2, "seq counts delivered updates");
        let keys: Vec<&str> = tracker.known.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["b"]);
        let empty = ConfigUpdate {
            seq: 2,
            items: Vec::new(),
            deleted: Vec::new(),
        };
        assert_eq!(tracker.apply(empty), None, "an empty push is no update");
    }
}
