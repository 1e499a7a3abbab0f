//! `bindings.cron` (input): an event at every tick of the `schedule` (six
//! cron fields with seconds first, the five-field form, `@daily`-style
//! descriptors, or `@every 15s`), with the tick's time, RFC 3339 in UTC, as
//! its metadata entry `time` and an empty body.
//!
//! Each tick is fanned out through the ledger (see `input::ledger`), whose
//! cursor is the last tick fired. On start, a tick that fell due while the
//! module was down is fired once, late: the newest one only (older ones are
//! skipped and logged, as a cron with a starting deadline does), and never
//! a tick at or before the last one fired.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mecha_module::metadata::Metadata;

use crate::error::BindingError;
use crate::input::Input;
use crate::schedule::{rfc3339, Schedule};

/// The fields of `bindings.cron` beyond the shared ones.
pub const FIELDS: [&str; 1] = ["schedule"];

/// The metadata entry of each event that holds the tick's time.
pub const TIME: &str = "time";

/// How long the ticker waits before trying again after its ledger or broker
/// failed (a full disk, or the previous instance still holding the files).
const RETRY: Duration = Duration::from_secs(1);

/// The component's `schedule`.
pub fn schedule(metadata: &Metadata<'_>) -> Result<Schedule, BindingError> {
    let text = metadata.required("schedule")?;
    Schedule::parse(text).map_err(|e| {
        metadata
            .error(format!("metadata field \"schedule\" {text:?}: {e}"))
            .into()
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fires the binding's ticks for as long as the module runs.
pub async fn run(input: Arc<Input>, schedule: Schedule) {
    let last = loop {
        match input.ready().await {
            Ok(last) => break last,
            Err(e) => {
                tracing::warn!(binding = input.name(), "cron binding cannot start yet: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let now = now_secs();
    // `@every` counts from the last tick fired, or from now on a first start.
    let anchor = last.unwrap_or(now);
    let mut last = match last {
        Some(last) => catch_up(&input, &schedule, last, anchor, now).await,
        None => now,
    };
    loop {
        let Some(tick) = schedule.next_after(last, anchor) else {
            tracing::warn!(
                binding = input.name(),
                "the cron schedule has no tick in the next five years; the binding stays idle"
            );
            return;
        };
        wait_until(tick).await;
        fire(&input, tick).await;
        last = tick;
    }
}

/// On a restart: fires the newest tick that fell due while the module was
/// down (after `last`, at or before `now`), if any, and answers the tick the
/// schedule continues from.
async fn catch_up(input: &Input, schedule: &Schedule, last: u64, anchor: u64, now: u64) -> u64 {
    let mut newest = None;
    let mut skipped = 0u64;
    let mut t = last;
    while let Some(next) = schedule.next_after(t, anchor).filter(|n| *n <= now) {
        if newest.is_some() {
            skipped += 1;
        }
        newest = Some(next);
        // An `@every` schedule jumps straight to its newest missed tick.
        if let Schedule::Every(period) = schedule {
            let period = period.as_secs().max(1);
            let newest_tick = anchor + (now - anchor) / period * period;
            skipped += (newest_tick - next) / period;
            newest = Some(newest_tick);
            break;
        }
        t = next;
    }
    let Some(tick) = newest else {
        return last;
    };
    if skipped > 0 {
        tracing::warn!(
            binding = input.name(),
            skipped,
            "cron ticks fell due while the module was down; only the newest is fired"
        );
    }
    fire(input, tick).await;
    tick
}

/// Sleeps until the wall clock reaches `tick` (seconds since the epoch).
async fn wait_until(tick: u64) {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let due = Duration::from_secs(tick);
        if now >= due {
            return;
        }
        tokio::time::sleep(due - now).await;
    }
}

/// Fans tick `tick` out, retrying while the ledger cannot be written: a
/// tick whose fan-out did not even begin is not lost to a passing failure.
async fn fire(input: &Input, tick: u64) {
    let metadata = vec![(TIME.to_owned(), rfc3339(tick))];
    let mut tries = 0;
    while let Err(e) = input.fire(tick, Vec::new(), metadata.clone()).await {
        tries += 1;
        tracing::warn!(
            binding = input.name(),
            tick,
            tries,
            "cron tick not fired: {e}"
        );
        if tries >= 5 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
