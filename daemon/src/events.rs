//! The node's recent supervisor and security events (module starts, crashes,
//! backoff, restarts, refused connections, quota refusals), newest last, for
//! the dashboard's event list (`dashboard`).
//!
//! The list is one per process, like the log it summarises, so that the
//! supervisor and the connection paths can record an event without being
//! handed a reference to it. It is bounded twice over, because tenants can
//! cause most of these events: it holds at most [`CAPACITY`] entries, and an
//! event of the same kind about the same subject as one of the last
//! [`COALESCE_SCAN`] entries, within [`COALESCE_WINDOW`], is counted on that
//! entry instead of pushing a new one. A tenant hammering a quota therefore
//! becomes one line with a count, and cannot push the module crashes an
//! operator is looking for out of the list.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Events kept.
pub const CAPACITY: usize = 500;
/// How many of the newest entries an event may be folded into.
const COALESCE_SCAN: usize = 16;
/// How old an entry may be and still take a repeat of its event.
const COALESCE_WINDOW: Duration = Duration::from_secs(10);
/// The longest message kept; longer ones are cut at a character boundary.
const MAX_MESSAGE: usize = 512;

/// What kind of event it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A module instance started and serves.
    ModuleStarted,
    /// A module instance exited or was killed, and will be started again.
    ModuleExited,
    /// A module crash-loops: its next start is delayed.
    ModuleBackoff,
    /// A module failed to start.
    ModuleStartFailed,
    /// An admin hot-restarted (or upgraded) a module.
    ModuleRestarted,
    /// A module was stopped (removed by a reload, or its restart policy).
    ModuleStopped,
    /// A connection was refused (no tenant, or a connection quota).
    ConnectionRefused,
    /// A request was refused by a tenant's quota.
    QuotaRefused,
    /// A request was refused because of the crashes it or its tenant caused.
    CrashRefused,
    /// An admin operation was refused to someone who is not an admin.
    AdminRefused,
}

/// One entry of the list.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// A number that grows by one per entry, so a reader can tell new ones.
    pub seq: u64,
    /// Wall-clock time of the latest occurrence, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The kind of event.
    pub kind: Kind,
    /// What it is about: a module or a tenant name.
    pub subject: String,
    /// The latest occurrence's message.
    pub message: String,
    /// How many occurrences the entry stands for.
    pub count: u64,
    /// When the entry last took an occurrence (not serialised).
    #[serde(skip)]
    last: Instant,
}

/// A bounded list of events; the process has one ([`record`], [`newest`]).
#[derive(Default)]
pub struct Events(Mutex<Ring>);

#[derive(Default)]
struct Ring {
    entries: VecDeque<Event>,
    next_seq: u64,
}

static EVENTS: LazyLock<Events> = LazyLock::new(Events::default);

/// Records one event in the process's list.
pub fn record(kind: Kind, subject: &str, message: &str) {
    EVENTS.record(kind, subject, message);
}

/// Up to `limit` of the newest events of the process's list, newest first.
pub fn newest(limit: usize) -> Vec<Event> {
    EVENTS.newest(limit)
}

impl Events {
    /// Records one event.
    pub fn record(&self, kind: Kind, subject: &str, message: &str) {
        let now = Instant::now();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut ring = self.0.lock();
        let repeat = ring.entries.iter_mut().rev().take(COALESCE_SCAN).find(|e| {
            e.kind == kind && e.subject == subject && now.duration_since(e.last) < COALESCE_WINDOW
        });
        if let Some(entry) = repeat {
            entry.count = entry.count.saturating_add(1);
            entry.at_ms = at_ms;
            entry.last = now;
            if entry.message != message {
                entry.message = clip(message);
            }
            return;
        }
        ring.next_seq += 1;
        let seq = ring.next_seq;
        if ring.entries.len() >= CAPACITY {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Event {
            seq,
            at_ms,
            kind,
            subject: clip(subject),
            message: clip(message),
            count: 1,
            last: now,
        });
    }

    /// Up to `limit` of the newest events, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Event> {
        self.0
            .lock()
            .entries
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }
}

/// `text`, cut to at most [`MAX_MESSAGE`] bytes at a character boundary.
fn clip(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(events: &Events, subject: &str) -> Vec<Event> {
        events
            .newest(CAPACITY)
            .into_iter()
            .filter(|e| e.subject == subject)
            .collect()
    }

    #[test]
    fn repeats_are_counted_not_pushed() {
        let events = Events::default();
        for i in 0..1000 {
            events.record(Kind::QuotaRefused, "t-repeat", &format!("refusal {i}"));
        }
        events.record(Kind::ModuleExited, "t-repeat", "exited");
        let seen = of(&events, "t-repeat");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].kind, Kind::ModuleExited);
        assert_eq!(seen[1].count, 1000);
        assert_eq!(seen[1].message, "refusal 999");
    }

    #[test]
    fn the_list_is_bounded_and_messages_are_clipped() {
        let events = Events::default();
        for i in 0..CAPACITY + 50 {
            events.record(Kind::ConnectionRefused, &format!("t-bound-{i}"), "no");
        }
        assert_eq!(events.newest(usize::MAX).len(), CAPACITY);
        assert!(
            of(&events, "t-bound-0").is_empty(),
            "the oldest entries were dropped"
        );
        assert_eq!(of(&events, "t-bound-549").len(), 1);
        events.record(Kind::AdminRefused, "t-long", &"é".repeat(MAX_MESSAGE));
        let long = &of(&events, "t-long")[0].message;
        assert!(long.len() <= MAX_MESSAGE + '…'.len_utf8());
    }
}
