//! Reading a component's metadata the way Dapr does: names match ignoring
//! ASCII case, a name given twice is an error (silently picking one value
//! would hide a copy-paste slip, and for an allow list could widen access),
//! and so is a name neither the driver nor Dapr knows for the type (a
//! misspelt field must not be ignored; the closest known name is suggested).
//! A field Dapr defines that the driver does not implement is accepted with a
//! warning, so that Dapr's own component files load (`dapr.rs`). Every error
//! names the field as written and, through [`MetadataError`], the component.

use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use mecha_abi::msg::ComponentSpec;

mod dapr;
mod driver;

pub use driver::{DriverError, Worded, Wording};

/// Metadata fields that name files or directories a driver reads or writes.
/// The daemon decides by them which user a module runs as (an operator's file
/// may be readable by root alone), and the module which paths it may reach.
pub const FILE_FIELDS: [&str; 7] = [
    "path",
    "rootPath",
    "secretsFile",
    "secretsDir",
    "tlsCertFile",
    "tlsKeyFile",
    "tlsCaFile",
];

/// The metadata field in which the daemon tells a module which tenants a
/// component's Dapr `scopes` admit (a comma-separated list of tenant names,
/// possibly empty). Configuration files cannot write it: names starting with
/// `@` are refused at load. The SDK's `Components` takes it out before a
/// driver sees the metadata and refuses every other tenant.
pub const SCOPE_TENANTS: &str = "@tenants";

/// The metadata item in which mechad hands a personality the node's
/// component catalog (JSON: each component's name, type and the tenants
/// that may use it; each tenant's allow list and app ids), so it can answer
/// Dapr's GetMetadata for a caller's tenant alone.
pub const PERSONALITY_CATALOG: &str = "@catalog";

/// A component's metadata is unusable. Drivers turn it into
/// [`DriverError::Config`] (`From<MetadataError>`), which keeps both parts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("component {component:?}: {reason}")]
pub struct MetadataError {
    /// The component name.
    pub component: String,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// Takes a module-level limit out of a component's metadata: the whole
/// number of field `name` (at least 1), or `default` without it, and the
/// spec without that field, for the driver (which would refuse the field as
/// unknown). Limits such as a per-tenant cap on lock waiters belong to the
/// module, not to any one driver, so every driver of the module accepts them
/// this way.
pub fn take_limit(
    spec: &ComponentSpec,
    name: &str,
    default: usize,
) -> Result<(ComponentSpec, usize), MetadataError> {
    let metadata = Metadata::lenient(spec)?;
    let limit = metadata
        .whole(name, 1..=u64::from(u32::MAX))?
        .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut rest = spec.clone();
    rest.metadata
        .retain(|(field, _)| !field.eq_ignore_ascii_case(name));
    Ok((rest, limit))
}

/// A component's metadata fields, checked once and then read by name.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    /// The component name, for error messages.
    component: &'a str,
    /// The component type, which says which fields Dapr defines.
    kind: &'a str,
    /// (name as written, value), in spec order, names unique ignoring case.
    fields: &'a [(String, String)],
}

impl<'a> Metadata<'a> {
    /// Reads `spec`'s metadata, refusing a field given twice and any field
    /// not in `known` (the names as the driver spells them, compared
    /// ignoring case).
    pub fn parse(spec: &'a ComponentSpec, known: &[&str]) -> Result<Self, MetadataError> {
        let metadata = Self::lenient(spec)?;
        metadata.check_known(known)?;
        Ok(metadata)
    }

    /// Reads `spec`'s metadata, refusing a field given twice but accepting
    /// any name: for a reader of a few shared fields (an allow list) that
    /// runs before the driver checks the whole set with [`Self::parse`] or
    /// [`Self::check_known`].
    pub fn lenient(spec: &'a ComponentSpec) -> Result<Self, MetadataError> {
        let metadata = Self {
            component: &spec.name,
            kind: &spec.kind,
            fields: &spec.metadata,
        };
        for (i, (name, _)) in spec.metadata.iter().enumerate() {
            if spec.metadata[..i]
                .iter()
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name))
            {
                return Err(metadata.error(format!(
                    "metadata field {name:?} is given twice (names ignore case)"
                )));
            }
        }
        Ok(metadata)
    }

    /// Fails on the first field whose name is not in `known` and that Dapr
    /// does not define for the component's type either, suggesting the
    /// closest name and listing the known ones. A field Dapr defines is
    /// accepted with one warning that it has no effect, unless ignoring it
    /// would weaken what the file asks for (TLS, access control, another
    /// server topology): that is refused, saying why.
    pub fn check_known(&self, known: &[&str]) -> Result<(), MetadataError> {
        for (name, value) in self.fields {
            if known.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                continue;
            }
            match dapr::judge(self.kind, name, value) {
                dapr::Judgement::Inert => {
                    if dapr::first_warning(self.component, name) {
                        tracing::warn!(
                            component = self.component,
                            kind = self.kind,
                            "metadata field {name:?} is defined by Dapr for {} but has no effect in mecha; it is ignored",
                            self.kind
                        );
                    }
                }
                dapr::Judgement::Refused(why) => {
                    return Err(self.error(format!(
                        "metadata field {name:?} is defined by Dapr for {}, but mecha does not support it: {why}",
                        self.kind
                    )));
                }
                dapr::Judgement::Unknown => {
                    let list = if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    };
                    let mut candidates = known.to_vec();
                    candidates.extend(dapr::defined(self.kind));
                    let hint = dapr::closest(name, &candidates)
                        .map(|c| format!("; did you mean {c:?}?"))
                        .unwrap_or_default();
                    return Err(self.error(format!(
                        "unknown metadata field {name:?}{hint} (known: {list})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The component name.
    pub fn component(&self) -> &'a str {
        self.component
    }

    /// A configuration error of this component.
    pub fn error(&self, reason: impl Into<String>) -> MetadataError {
        MetadataError {
            component: self.component.to_owned(),
            reason: reason.into(),
        }
    }

    /// The field `name` as (name as written, value), if given.
    fn field(&self, name: &str) -> Option<(&'a str, &'a str)> {
        self.fields
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(field, value)| (field.as_str(), value.as_str()))
    }

    /// The raw value of field `name`, if given, empty or not.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.field(name).map(|(_, value)| value)
    }

    /// The value of field `name`, if given; given but empty is an error.
    pub fn str(&self, name: &str) -> Result<Option<&'a str>, MetadataError> {
        match self.field(name) {
            Some((written, "")) => Err(self.error(format!("metadata field {written:?} is empty"))),
            Some((_, value)) => Ok(Some(value)),
            None => Ok(None),
        }
    }

    /// The value of field `name`, which must be given and not empty.
    pub fn required(&self, name: &str) -> Result<&'a str, MetadataError> {
        self.str(name)?
            .ok_or_else(|| self.error(format!("metadata field {name:?} is required")))
    }

    /// Field `name` parsed as a `T` (surrounding white space ignored), if
    /// given. `expected` says what a valid value is, for the error: "a whole
    /// number".
    pub fn parsed<T: FromStr>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<Option<T>, MetadataError> {
        let Some((written, value)) = self.field(name) else {
            return Ok(None);
        };
        value.trim().parse().map(Some).map_err(|_| {
            self.error(format!(
                "metadata field {written:?} must be {expected}, not {value:?}"
            ))
        })
    }

    /// Field `name` as a whole number within `range`, if given.
    pub fn whole(
        &self,
        name: &str,
        range: RangeInclusive<u64>,
    ) -> Result<Option<u64>, MetadataError> {
        let expected = if *range.end() == u64::MAX {
            format!("a whole number of at least {}", range.start())
        } else {
            format!("a whole number from {} to {}", range.start(), range.end())
        };
        match self.parsed::<u64>(name, &expected)? {
            Some(n) if !range.contains(&n) => {
                let written = self.field(name).map_or(name, |(written, _)| written);
                Err(self.error(format!(
                    "metadata field {written:?} must be {expected}, not {n}"
                )))
            }
            n => Ok(n),
        }
    }

    /// The boolean field `name` (`true` or `false`, any case), if given.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, MetadataError> {
        let Some((written, value)) = self.field(name) else {
            return Ok(None);
        };
        if value.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if value.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(self.error(format!(
                "metadata field {written:?} must be true or false, not {value:?}"
            )))
        }
    }

    /// The duration field `name`, if given: a Go duration string as Dapr
    /// writes them (`500ms`, `1.5s`, `1m30s`; see [`parse_duration`]) or a
    /// bare whole number counted in units of `bare`. Dapr reads a bare number
    /// as seconds in some components' fields and as milliseconds in others,
    /// so each caller says which.
    pub fn duration(&self, name: &str, bare: Duration) -> Result<Option<Duration>, MetadataError> {
        let Some((written, value)) = self.field(name) else {
            return Ok(None);
        };
        let text = value.trim();
        let parsed = match text.parse::<u64>() {
            Ok(n) => Some(saturating_times(bare, n)),
            Err(_) => parse_duration(text),
        };
        parsed.map(Some).ok_or_else(|| {
            let unit = if bare >= Duration::from_secs(1) {
                "seconds"
            } else {
                "milliseconds"
            };
            self.error(format!(
                "metadata field {written:?} must be a duration such as \"500ms\", \"15s\" or \
                 \"1m\", or a whole number of {unit}, not {value:?}"
            ))
        })
    }

    /// The comma-separated list in field `name`, items trimmed and empty
    /// items dropped, if given. A list given but empty is an error: reading
    /// it as "no restriction" or as "nothing" could each be the opposite of
    /// what was meant.
    pub fn list(&self, name: &str) -> Result<Option<Vec<&'a str>>, MetadataError> {
        let Some((written, value)) = self.field(name) else {
            return Ok(None);
        };
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect();
        if items.is_empty() {
            return Err(self.error(format!(
                "metadata field {written:?} lists nothing; remove it to lift the restriction, \
                 or list at least one name"
            )));
        }
        Ok(Some(items))
    }
}

/// `unit` times `n`, or the longest duration if that overflows.
fn saturating_times(unit: Duration, n: u64) -> Duration {
    u32::try_from(n)
        .ok()
        .and_then(|n| unit.checked_mul(n))
        .unwrap_or(Duration::MAX)
}

/// Parses a Go duration string: one or more numbers (decimals allowed), each
/// followed by a unit (`ns`, `us` or `µs`, `ms`, `s`, `m`, `h`), as in
/// `1m30s`; a bare `0` is zero. Signs and unitless numbers are refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
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
        // The range is checked above, so the cast neither wraps nor saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let nanos = nanos as u64;
        total = total.checked_add(Duration::from_nanos(nanos))?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metadata: &[(&str, &str)]) -> ComponentSpec {
        ComponentSpec {
            name: "comp".to_owned(),
            kind: "x.y".to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn reason(e: MetadataError) -> String {
        assert_eq!(e.component, "comp");
        e.reason
    }

    #[test]
    fn an_unknown_field_names_the_closest_known_one() {
        let s = spec(&[("shedule", "@daily")]);
        let e = reason(Metadata::parse(&s, &["schedule", "route"]).unwrap_err());
        assert!(e.contains("did you mean \"schedule\"?"), "{e}");
        let s = spec(&[("colour", "red")]);
        let e = reason(Metadata::parse(&s, &["schedule", "route"]).unwrap_err());
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn names_ignore_case_and_are_checked() {
        let s = spec(&[("Path", "a"), ("SEGMENTSIZE", "7")]);
        let m = Metadata::parse(&s, &["path", "segmentSize"]).expect("known fields");
        assert_eq!(m.str("path"), Ok(Some("a")));
        assert_eq!(m.whole("segmentSize", 1..=10), Ok(Some(7)));
        assert_eq!(m.str("other"), Ok(None));

        let e = reason(Metadata::parse(&s, &["path"]).unwrap_err());
        assert!(
            e.contains("\"SEGMENTSIZE\"") && e.contains("known: path"),
            "{e}"
        );
        let e = reason(Metadata::parse(&s, &[]).unwrap_err());
        assert!(e.contains("known: none"), "{e}");

        let s = spec(&[("path", "a"), ("PATH", "b")]);
        let e = reason(Metadata::lenient(&s).unwrap_err());
        assert!(e.contains("\"PATH\" is given twice"), "{e}");
    }

    #[test]
    fn typed_getters_name_the_field() {
        let s = spec(&[
            ("path", ""),
            ("n", " 12 "),
            ("big", "99"),
            ("word", "x"),
            ("flag", "TRUE"),
            ("bad", "yes"),
            ("list", " a, b ,,"),
            ("none", " , "),
        ]);
        let m = Metadata::lenient(&s).expect("no duplicates");
        assert!(reason(m.str("path").unwrap_err()).contains("\"path\" is empty"));
        assert!(reason(m.required("absent").unwrap_err()).contains("\"absent\" is required"));
        assert_eq!(m.whole("n", 1..=u64::MAX), Ok(Some(12)));
        let e = reason(m.whole("big", 1..=10).unwrap_err());
        assert!(e.contains("from 1 to 10, not 99"), "{e}");
        let e = reason(m.whole("word", 1..=u64::MAX).unwrap_err());
        assert!(
            e.contains("\"word\" must be a whole number of at least 1"),
            "{e}"
        );
        assert_eq!(m.bool("flag"), Ok(Some(true)));
        assert!(reason(m.bool("bad").unwrap_err()).contains("true or false"));
        assert_eq!(m.list("list"), Ok(Some(vec!["a", "b"])));
        assert!(reason(m.list("none").unwrap_err()).contains("\"none\" lists nothing"));
        assert_eq!(m.parsed::<i8>("n", "a small number"), Ok(Some(12)));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        for bad in ["", "5", "s", "10x", "-1s", "1s2", "5 s", "5 parsecs"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bare_durations_take_the_callers_unit() {
        let s = spec(&[("a", "5"), ("b", "250ms"), ("c", "soon"), ("d", "-1")]);
        let m = Metadata::lenient(&s).expect("metadata");
        let secs = Duration::from_secs(1);
        let ms = Duration::from_millis(1);
        assert_eq!(m.duration("a", secs), Ok(Some(Duration::from_secs(5))));
        assert_eq!(m.duration("a", ms), Ok(Some(Duration::from_millis(5))));
        assert_eq!(m.duration("b", secs), Ok(Some(Duration::from_millis(250))));
        assert_eq!(m.duration("none", secs), Ok(None));
        for bad in ["c", "d"] {
            let e = reason(m.duration(bad, secs).unwrap_err());
            assert!(e.contains(&format!("{bad:?} must be a duration")), "{e}");
            assert!(e.contains("whole number of seconds"), "{e}");
        }
        let e = reason(m.duration("c", ms).unwrap_err());
        assert!(e.contains("whole number of milliseconds"), "{e}");
    }
}
