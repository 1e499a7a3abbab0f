//! Who owns which run-time app id, kept in the module's data directory so that
//! ownership outlives the module process. A restart (a crash, a `kill -9`, a
//! hot restart) ends every registration; without this record, whichever
//! tenant registered an app id first afterwards would take it, and with it the
//! calls meant for its owner.
//!
//! The record is a journal of JSON lines, one per change of ownership: an app
//! id becoming held by a tenant (its first instance registered) or released
//! (its last instance went away, at a wall-clock time). Appends go straight to
//! the file with no fsync: they survive the module process dying, which is
//! what the journal is for; a machine crash restarts every application too.
//! On load the journal is replayed into reservations and rewritten compactly.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The journal's file name in the data directory.
const FILE: &str = "app-owners.jsonl";
/// A journal larger than this is not replayed: it cannot be one this module
/// wrote under its registration limits, and reading it must stay bounded.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading the journal at start failed.
    #[error("cannot read the app-id ownership journal {path}: {source}")]
    Read {
        /// The journal's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Rewriting or appending to the journal failed.
    #[error("cannot write the app-id ownership journal {path}: {source}")]
    Write {
        /// The journal's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The journal is larger than any this module writes.
    #[error("the app-id ownership journal {path} is {size} bytes, more than {MAX_JOURNAL_BYTES}; not replayed")]
    TooLarge {
        /// The journal's path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    app: String,
    tenant: String,
    /// True: the tenant holds the app id from now on. False: released at `at`.
    held: bool,
    /// Milliseconds since the Unix epoch of the change.
    at: u64,
}

/// An app id reserved for a tenant until a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The app id.
    pub app_id: String,
    /// Its owner.
    pub tenant: String,
    /// When the reservation lapses.
    pub until: Instant,
}

/// The journal file, open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Lines appended since the last rewrite, to decide when to compact.
    appended: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Journal {
    /// Replays the journal in `dir` into the reservations still running: an
    /// app id held when the previous instance stopped is reserved for `grace`
    /// from now; one released earlier, for what is left of `grace` after its
    /// release. Then rewrites the journal to hold just those.
    pub fn open(dir: &Path, grace: Duration) -> Result<(Self, Vec<Reservation>), JournalError> {
        let path = dir.join(FILE);
        let read_err = |source| JournalError::Read {
            path: path.clone(),
            source,
        };
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_JOURNAL_BYTES => {
                return Err(JournalError::TooLarge {
                    path,
                    size: m.len(),
                })
            }
            Ok(_) => std::fs::read_to_string(&path).map_err(read_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(read_err(e)),
        };
        let mut last: HashMap<String, Record> = HashMap::new();
        // A line cut short by a crash mid-append is skipped: it is the last
        // line, and the change it recorded was never acknowledged.
        for r in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        {
            last.insert(r.app.clone(), r);
        }
        let (wall, now) = (now_ms(), Instant::now());
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut live: Vec<Reservation> = last
            .into_values()
            .filter_map(|r| {
                let left_ms = if r.held {
                    grace_ms
                } else {
                    r.at.saturating_add(grace_ms).checked_sub(wall)?
                };
                (left_ms > 0).then(|| Reservation {
                    app_id: r.app,
                    tenant: r.tenant,
                    until: now + Duration::from_millis(left_ms),
                })
            })
            .collect();
        live.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        let journal = Self::rewrite(path, &[], &live)?;
        Ok((journal, live))
    }

    /// Replaces the journal with one holding `held` (app id, tenant) and the
    /// reservations `reserved`, written to a temporary file and renamed over
    /// the old one so a crash leaves one or the other whole.
    fn rewrite(
        path: PathBuf,
        held: &[(String, String)],
        reserved: &[Reservation],
    ) -> Result<Self, JournalError> {
        let write_err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let (wall, now) = (now_ms(), Instant::now());
        let mut text = String::new();
        let lines = held
            .iter()
            .map(|(app, tenant)| Record {
                app: app.clone(),
                tenant: tenant.clone(),
                held: true,
                at: wall,
            })
            .chain(reserved.iter().map(|r| {
                // Stored as a release whose grace ends when the reservation
                // does, so replaying it gives back the same deadline.
                let left = r.until.saturating_duration_since(now);
                let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                Record {
                    app: r.app_id.clone(),
                    tenant: r.tenant.clone(),
                    held: false,
                    at: wall.saturating_add(left_ms),
                }
            }));
        for r in lines {
            if let Ok(line) = serde_json::to_string(&r) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(write_err)?;
        Ok(Self {
            path,
            file,
            appended: 0,
        })
    }

    /// Records that `tenant` now holds `app_id` (`held`) or released it.
    pub fn record(&mut self, app_id: &str, tenant: &str, held: bool) -> Result<(), JournalError> {
        let r = Record {
            app: app_id.to_string(),
            tenant: tenant.to_string(),
            held,
            at: now_ms(),
        };
        let mut line = serde_json::to_string(&r).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.appended += 1;
        Ok(())
    }

    /// True once enough lines were appended that rewriting the journal from
    /// `live` entries makes it substantially smaller.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.appended > 1024 && self.appended > live.saturating_mul(4)
    }

    /// Rewrites the journal from the current state.
    pub fn compact(
        &mut self,
        held: &[(String, String)],
        reserved: &[Reservation],
    ) -> Result<(), JournalError> {
        *self = Self::rewrite(self.path.clone(), held, reserved)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("invoke-owners-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn held_ids_come_back_reserved_and_lapsed_releases_do_not() {
        let d = dir("replay");
        let grace = Duration::from_secs(30);
        let (mut j, live) = Journal::open(&d, grace).unwrap();
        assert!(live.is_empty());
        j.record("checkout", "alice", true).unwrap();
        j.record("cart", "bob", true).unwrap();
        j.record("cart", "bob", false).unwrap();
        // A release long ago has lapsed; a torn last line is ignored.
        let old = Record {
            app: "old".into(),
            tenant: "carol".into(),
            held: false,
            at: 1,
        };
        let mut f = OpenOptions::new().append(true).open(d.join(FILE)).unwrap();
        writeln!(f, "{}", serde_json::to_string(&old).unwrap()).unwrap();
        write!(f, "{{\"app\":\"torn").unwrap();
        drop((j, f));
        let (_, live) = Journal::open(&d, grace).unwrap();
        let ids: Vec<(&str, &str)> = live
            .iter()
            .map(|r| (r.app_id.as_str(), r.tenant.as_str()))
            .collect();
        assert_eq!(ids, vec![("cart", "bob"), ("checkout", "alice")]);
        assert!(live.iter().all(|r| r.until > Instant::now()));
        // The rewritten journal replays to the same reservations.
        let (_, again) = Journal::open(&d, grace).unwrap();
        assert_eq!(again.len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
