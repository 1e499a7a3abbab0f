//! The CloudEvents 1.0 envelope the module wraps published data in: its
//! fields, RFC 3339 timestamps and the metadata names that steer it.

use std::time::{SystemTime, UNIX_EPOCH};

use mecha_abi::msg::PublishRequest;

use super::Message;

/// CloudEvents `specversion` of every enveloped message.
pub const SPEC_VERSION: &str = "1.0";

/// The `type` of a message whose publisher named none.
pub const DEFAULT_TYPE: &str = "com.mecha.pubsub.message";

/// The `datacontenttype` of a message whose publisher named none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The metadata name that sets the envelope's `type` (Dapr's name).
pub const TYPE_METADATA: &str = "cloudevent.type";

/// The metadata names that carry the publisher's W3C trace context, in the
/// order they are looked up.
pub const TRACEPARENT_METADATA: [&str; 2] = ["traceparent", "cloudevent.traceparent"];

/// The stored message for a publish by `tenant`: the CloudEvents envelope,
/// or only the id and content type when `req.raw`.
pub fn build(tenant: &str, req: &PublishRequest, id: String, now: SystemTime) -> Message {
    let data_content_type = if req.content_type.is_empty() {
        DEFAULT_CONTENT_TYPE.to_owned()
    } else {
        req.content_type.clone()
    };
    let lookup = |name: &str| {
        req.metadata
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    if req.raw {
        return Message {
            id,
            source: String::new(),
            event_type: String::new(),
            spec_version: String::new(),
            data_content_type,
            time: String::new(),
            trace_parent: String::new(),
            data: req.data.clone(),
            metadata: req.metadata.clone(),
            raw: true,
        };
    }
    Message {
        id,
        // The source is derived from the kernel-verified tenant and cannot be
        // set by the publisher, so a subscriber can rely on it.
        source: format!("mecha://{tenant}"),
        event_type: lookup(TYPE_METADATA).unwrap_or_else(|| DEFAULT_TYPE.to_owned()),
        spec_version: SPEC_VERSION.to_owned(),
        data_content_type,
        time: rfc3339(now),
        trace_parent: TRACEPARENT_METADATA
            .iter()
            .find_map(|name| lookup(name))
            .unwrap_or_default(),
        data: req.data.clone(),
        metadata: req.metadata.clone(),
        raw: false,
    }
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds, e.g.
/// `2026-11-27T11:25:39.123Z`. Times before 1970 are written as the epoch,
/// which only a badly wrong clock produces.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01,
/// after Howard Hinnant's `civil_from_days`, restricted to dates from 1970
/// on so that all arithmetic stays unsigned.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, so that leap days fall at the end of a
    // "year" and eras of 400 years repeat exactly.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a year divisible by 400).
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_709_251_199, 999)), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(at(1_798_761_600, 0)), "2027-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(4_102_444_800, 0)), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous_one() {
        let mut previous = civil_from_days(0);
        assert_eq!(previous, (1970, 1, 1));
        for days in 1..146_097 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1);
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} -> {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }

    fn request(raw: bool, metadata: &[(&str, &str)]) -> PublishRequest {
        PublishRequest {
            store: String::new(),
            topic: "orders".into(),
            data: b"{}".to_vec(),
            content_type: String::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            raw,
        }
    }

    #[test]
    fn the_envelope_takes_type_and_trace_context_from_metadata() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = request(
            false,
            &[("cloudevent.type", "order.created"), ("traceparent", tp)],
        );
        let m = build("uid:7", &req, "i".into(), at(0, 0));
        assert_eq!(m.source, "mecha://uid:7");
        assert_eq!(m.event_type, "order.created");
        assert_eq!(m.spec_version, "1.0");
        assert_eq!(m.data_content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(m.time, "1970-01-01T00:00:00.000Z");
        assert_eq!(m.trace_parent, tp);
        assert_eq!(m.metadata, req.metadata);
        let plain = build("uid:7", &request(false, &[]), "j".into(), at(0, 0));
        assert_eq!(plain.event_type, DEFAULT_TYPE);
        assert_eq!(plain.trace_parent, "");
    }

    #[test]
    fn raw_messages_have_no_envelope() {
        let mut req = request(true, &[("cloudevent.type", "ignored")]);
        req.content_type = "text/plain".into();
        let m = build("uid:7", &req, "i".into(), at(0, 0));
        assert!(m.raw);
        assert_eq!(m.data_content_type, "text/plain");
        assert_eq!(
            (
                m.source.as_str(),
                m.event_type.as_str(),
                m.spec_version.as_str(),
                m.time.as_str()
            ),
            ("", "", "", "")
        );
    }
}
