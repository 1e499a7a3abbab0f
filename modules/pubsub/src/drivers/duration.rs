//! Durations in component metadata, written as Dapr accepts them: a Go
//! duration string (`"500ms"`, `"15s"`, `"1m30s"`) or a plain whole number
//! of milliseconds (`"15000"`).

use std::time::Duration;

use mecha_module::metadata::{Metadata, MetadataError};

/// Field `name` as a duration, if given.
pub fn field(metadata: &Metadata<'_>, name: &str) -> Result<Option<Duration>, MetadataError> {
    let Some(value) = metadata.get(name) else {
        return Ok(None);
    };
    parse(value.trim()).map(Some).ok_or_else(|| {
        metadata.error(format!(
            "metadata field {name:?} must be a duration such as \"500ms\", \"15s\" or \"1m\", \
             or a whole number of milliseconds, not {value:?}"
        ))
    })
}

/// Parses a Go duration string or a number of milliseconds.
pub fn parse(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Some(Duration::from_millis(ms));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let nanos = number * nanos_per;
        if !nanos.is_finite() || nanos > 1e18 {
            return None;
        }
        total = total.checked_add(Duration::from_nanos(nanos as u64))?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_milliseconds_parse() {
        assert_eq!(parse("15000"), Some(Duration::from_secs(15)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "1s2"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
