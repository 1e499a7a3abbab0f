//! Cron schedules as Dapr's cron binding reads them: six fields with
//! seconds first (`*/5 * * * * *`), the five-field form without seconds,
//! the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly`, and `@every <duration>` (`@every 15s`). Times
//! are whole seconds since the Unix epoch, in UTC.
//!
//! Written here rather than taken from a crate: the cron crates bring a
//! calendar library (chrono) for what is a few dozen lines of UTC date
//! arithmetic, and this module needs only "the next tick after t".

use std::time::Duration;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// A tick every `period`, counted from a start time.
    Every(Duration),
    /// Calendar fields: the ticks are the seconds every field matches.
    Fields(Box<Fields>),
}

/// Which values each calendar field allows, as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Days of the month, bit 1 to 31.
    days: u32,
    /// Months, bit 1 to 12.
    months: u16,
    /// Days of the week, bit 0 (Sunday) to 6.
    weekdays: u8,
    /// Whether the day-of-month field was `*` (or `?`): cron then matches
    /// on the weekday alone, and the other way round; when both are
    /// restricted, a day matching either one matches.
    any_day: bool,
    any_weekday: bool,
}

/// How far ahead the next tick of calendar fields is looked for: a schedule
/// such as `0 0 0 30 2 *` (30 February) never fires, and the search must end.
const SEARCH_YEARS: u64 = 5;

impl Schedule {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("@every") {
            let period = mecha_module::metadata::parse_duration(rest.trim())
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    format!(
                        "\"@every\" needs a duration of at least one second, such as \"15s\" \
                         or \"1m30s\", not {:?}",
                        rest.trim()
                    )
                })?;
            return Ok(Self::Every(period));
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unknown descriptor {other:?}"));
            }
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let parts: Vec<&str> = match parts.len() {
            6 => parts,
            // The five-field form has no seconds: it fires at second 0.
            5 => std::iter::once("0").chain(parts).collect(),
            n => {
                return Err(format!(
                    "a cron schedule has six fields (seconds first) or five, not {n}"
                ))
            }
        };
        let field = |i: usize, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(parts[i], min, max, names).map_err(|e| format!("{name} field: {e}"))
        };
        let months = [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        let weekdays = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        let day_text = parts[3];
        let weekday_text = parts[5];
        // Weekday 7 is Sunday too, as in most crons.
        let weekday_bits = field(5, "day-of-week", 0, 7, &weekdays)?;
        let weekday_bits = (weekday_bits | (weekday_bits >> 7)) & 0x7f;
        Ok(Self::Fields(Box::new(Fields {
            seconds: field(0, "seconds", 0, 59, &[])?,
            minutes: field(1, "minutes", 0, 59, &[])?,
            hours: bits32(field(2, "hours", 0, 23, &[])?),
            days: bits32(field(3, "day-of-month", 1, 31, &[])?),
            months: u16::try_from(field(4, "month", 1, 12, &months)?).unwrap_or(0),
            weekdays: u8::try_from(weekday_bits).unwrap_or(0),
            any_day: matches!(day_text, "*" | "?"),
            any_weekday: matches!(weekday_text, "*" | "?"),
        })))
    }

    /// The first tick strictly after `after` (seconds since the epoch), for
    /// an `@every` schedule counted from `start`; `None` when a calendar
    /// schedule has no tick in the next five years.
    pub fn next_after(&self, after: u64, start: u64) -> Option<u64> {
        match self {
            Self::Every(period) => {
                let period = period.as_secs().max(1);
                if after < start {
                    return Some(start);
                }
                let steps = (after - start) / period + 1;
                start.checked_add(steps.checked_mul(period)?)
            }
            Self::Fields(fields) => fields.next_after(after),
        }
    }
}

fn bits32(bits: u64) -> u32 {
    u32::try_from(bits & u64::from(u32::MAX)).unwrap_or(0)
}

/// One field: `*`, `?`, or a comma-separated list of values, ranges `a-b`
/// and steps (`*/n`, `a-b/n`, `a/n`), values as numbers or `names` (whose
/// first entry is `min`).
fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return u32::try_from(i).map(|i| i + min).map_err(|e| e.to_string());
        }
        match v.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("{v:?} is not a value from {min} to {max}")),
        }
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(step) if step > 0 => (range, step),
                _ => return Err(format!("step {step:?} is not a whole number above 0")),
            },
            None => (item, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n` runs from a to the end of the range.
                None if item.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!("range {range:?} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Fields {
    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => by_weekday,
            (false, true) => by_day,
            (false, false) => by_day || by_weekday,
        }
    }

    /// Steps from `after + 1` forward, skipping a whole day, hour or minute
    /// at a time when its field does not match, so a search takes at most a
    /// few thousand steps per year searched.
    fn next_after(&self, after: u64) -> Option<u64> {
        let limit = after.checked_add(SEARCH_YEARS * 366 * 86_400)?;
        let mut t = after.checked_add(1)?;
        while t <= limit {
            let days = t / 86_400;
            let (_, month, day) = civil_from_days(days);
            let weekday = u32::try_from((days + 4) % 7).unwrap_or(0);
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                t = (days + 1) * 86_400;
                continue;
            }
            let in_day = t % 86_400;
            let (hour, minute, second) = (in_day / 3600, in_day % 3600 / 60, in_day % 60);
            if self.hours & (1 << hour) == 0 {
                t = t - in_day % 3600 + 3600;
                continue;
            }
            if self.minutes & (1 << minute) == 0 {
                t = t - second + 60;
                continue;
            }
            if self.seconds & (1 << second) == 0 {
                t += 1;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// The (year, month 1-12, day 1-31) of day `days` since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `secs` since the epoch as RFC 3339 in UTC, e.g. `2026-12-07T21:05:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T21:05:00Z, a Monday.
    const MONDAY: u64 = 1_796_677_500;

    fn next(text: &str, after: u64) -> u64 {
        Schedule::parse(text)
            .expect("parses")
            .next_after(after, after)
            .expect("a tick")
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(MONDAY), "2026-12-07T21:05:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn every_counts_periods_from_its_start() {
        let s = Schedule::parse("@every 15s").expect("parses");
        assert_eq!(s.next_after(100, 100), Some(115));
        assert_eq!(s.next_after(114, 100), Some(115));
        assert_eq!(s.next_after(115, 100), Some(130));
        assert_eq!(s.next_after(50, 100), Some(100));
        assert!(Schedule::parse("@every 0s").is_err());
        assert!(Schedule::parse("@every soon").is_err());
    }

    #[test]
    fn six_fields_put_seconds_first() {
        assert_eq!(next("*/5 * * * * *", MONDAY), MONDAY + 5);
        assert_eq!(next("* * * * * *", MONDAY), MONDAY + 1);
        assert_eq!(next("30 * * * * *", MONDAY), MONDAY + 30);
        // Five fields: minutes first, at second 0.
        assert_eq!(next("*/10 * * * *", MONDAY), MONDAY + 5 * 60);
        assert_eq!(rfc3339(next("@hourly", MONDAY)), "2026-12-07T22:00:00Z");
        assert_eq!(rfc3339(next("@daily", MONDAY)), "2026-12-08T00:00:00Z");
        assert_eq!(rfc3339(next("@weekly", MONDAY)), "2026-12-13T00:00:00Z");
        assert_eq!(rfc3339(next("@monthly", MONDAY)), "2027-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(next("0 15 10 * * MON-FRI", MONDAY)),
            "2026-12-08T10:15:00Z"
        );
        assert_eq!(
            rfc3339(next("0 0 12 29 FEB ?", MONDAY)),
            "2028-02-29T12:00:00Z"
        );
        assert_eq!(rfc3339(next("0 0 0 * * 7", MONDAY)), "2026-12-13T00:00:00Z");
    }

    #[test]
    fn impossible_or_malformed_schedules() {
        let never = Schedule::parse("0 0 0 30 2 *").expect("parses");
        assert_eq!(never.next_after(MONDAY, MONDAY), None);
        for bad in [
            "",
            "* * * *",
            "60 * * * * *",
            "* * 24 * * *",
            "*/0 * * * * *",
            "5-1 * * * * *",
            "* * * * FOO *",
            "@fortnightly",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} is refused");
        }
    }
}
