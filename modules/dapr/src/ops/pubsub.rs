//! Dapr's pub/sub on mecha's: publishing, single and bulk, with Dapr's
//! metadata (`ops::delivery` has what streaming subscribers receive and
//! what their answers become).
//!
//! **Envelopes.** Dapr wraps a published payload in a CloudEvent 1.0 whose
//! `id` and `source` the runtime sets. mecha's pubsub module builds that
//! envelope itself (SPEC §7.3.1), with a `source` derived from the caller's
//! kernel-verified tenant, so a publish is sent enveloped with Dapr's event
//! type (`com.dapr.event.sent`) and Dapr's default content type
//! (`text/plain`): subscribers, native or Dapr, receive the same attributes
//! Dapr's would (id, source, type, specversion, datacontenttype, time,
//! traceparent; topic and pubsub name come with every delivery), and no JSON
//! is built or parsed on the way. A payload that is already a CloudEvent
//! (`application/cloudevents+json`) and one published with
//! `rawPayload=true` are stored raw, as given, and a streaming subscriber
//! receives the former's own attributes (`delivery::event_of`).

use std::collections::HashMap;

use mecha_client::{Client, PublishOptions};

use super::dapr_error::{self, Api, DaprError};

/// The CloudEvent type Dapr gives the events it wraps.
pub const DAPR_EVENT_TYPE: &str = "com.dapr.event.sent";
/// Dapr's content type for a publish that names none.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";
/// The media type of a payload that is already a CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// The most entries one bulk publish may carry; more are refused before
/// anything is published, so one request cannot keep the personality
/// publishing without bound.
pub const MAX_BULK_ENTRIES: usize = 1024;
/// Metadata names the personality reads rather than passes on.
const RAW_PAYLOAD: &str = "rawPayload";

/// Dapr's error code for a failed publish.
pub const ERR_PUBLISH: &str = "ERR_PUBSUB_PUBLISH_MESSAGE";
/// Dapr's error code for metadata it cannot use.
pub const ERR_METADATA: &str = "ERR_PUBSUB_REQUEST_METADATA";
/// Dapr's error code for events it cannot read.
pub const ERR_EVENTS: &str = "ERR_PUBSUB_EVENTS_SER";
/// Dapr's error code for a payload that claims to be a CloudEvent and is not.
pub const ERR_CLOUD_EVENT: &str = "ERR_PUBSUB_CLOUD_EVENTS_SER";

/// Checks the pubsub and topic names as Dapr does before anything else
/// (gRPC INVALID_ARGUMENT, HTTP 404).
pub fn check_target(pubsub: &str, topic: &str) -> Result<(), DaprError> {
    if pubsub.is_empty() {
        return Err(DaprError::new(
            tonic::Code::InvalidArgument,
            404,
            "ERR_PUBSUB_EMPTY",
            "pubsub name is empty",
        ));
    }
    if topic.is_empty() {
        return Err(DaprError::new(
            tonic::Code::InvalidArgument,
            404,
            "ERR_TOPIC_EMPTY",
            format!("topic is empty in pubsub {pubsub}"),
        ));
    }
    Ok(())
}

/// True when `content_type` (parameters aside) is `application/cloudevents+json`.
pub fn is_cloud_event(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case(CLOUDEVENTS_JSON)
}

/// The media type of a `Content-Type` value, without its parameters.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Translates a Dapr publish (payload, content type, metadata) into the
/// native publish's data and options.
///
/// Metadata: `rawPayload` selects raw mode; `cloudevent.type`,
/// `cloudevent.traceparent`, `traceparent` and `partitionKey` mean what
/// they mean natively; `ttlInSeconds` (message expiry), `cloudevent.id` and
/// `cloudevent.source` (mecha sets both, the source from the verified
/// tenant) are refused with a message naming them; any other entry is
/// passed on with the message, as Dapr passes unknown metadata to the
/// component, which ignores it.
pub fn to_native(
    data: Vec<u8>,
    content_type: &str,
    metadata: Vec<(String, String)>,
) -> Result<(Vec<u8>, PublishOptions), DaprError> {
    let mut raw = false;
    let mut passed = Vec::with_capacity(metadata.len());
    for (name, value) in metadata {
        match name.as_str() {
            RAW_PAYLOAD => raw = parse_bool(RAW_PAYLOAD, &value)?,
            "ttlInSeconds" => {
                return Err(DaprError::invalid(
                    ERR_METADATA,
                    "metadata ttlInSeconds is not supported: mecha's pub/sub has no per-message \
                     expiry (retention is set on the pubsub component)",
                ))
            }
            "cloudevent.id" | "cloudevent.source" => {
                return Err(DaprError::invalid(
                    ERR_METADATA,
                    format!(
                        "metadata {name} is not supported: mecha sets the CloudEvent id and \
                         source itself (the source from the caller's verified tenant)"
                    ),
                ))
            }
            _ => passed.push((name, value)),
        }
    }
    // Dapr's metadata is a map, in no particular order; sorted, the stored
    // metadata does not depend on how the caller's library iterated it.
    passed.sort();
    let mut options = PublishOptions {
        content_type: content_type.to_string(),
        metadata: passed,
        raw,
    };
    if raw {
        return Ok((data, options));
    }
    if is_cloud_event(content_type) {
        check_cloud_event(&data)?;
        options.raw = true;
        return Ok((data, options));
    }
    if options.content_type.is_empty() {
        options.content_type = DEFAULT_CONTENT_TYPE.to_string();
    }
    if !options.metadata.iter().any(|(n, _)| n == "cloudevent.type") {
        options
            .metadata
            .push(("cloudevent.type".into(), DAPR_EVENT_TYPE.into()));
    }
    Ok((data, options))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, DaprError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") || value.is_empty() {
        Ok(false)
    } else {
        Err(DaprError::invalid(
            ERR_METADATA,
            format!("metadata {name} must be true or false, not {value:?}"),
        ))
    }
}

/// Refuses a payload sent as a CloudEvent that is not a JSON object, as
/// Dapr does, so subscribers never receive one they cannot read.
fn check_cloud_event(data: &[u8]) -> Result<(), DaprError> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(DaprError::invalid(
            ERR_CLOUD_EVENT,
            "the payload's content type is application/cloudevents+json but it is not a JSON \
             object",
        )),
    }
}

/// Publishes one event as Dapr's PublishEvent does.
pub async fn publish(
    client: &Client,
    pubsub: &str,
    topic: &str,
    data: Vec<u8>,
    content_type: &str,
    metadata: Vec<(String, String)>,
) -> Result<(), DaprError> {
    check_target(pubsub, topic)?;
    let (data, options) = to_native(data, content_type, metadata)?;
    client
        .publish(pubsub, topic, data, options)
        .await
        .map(|_| ())
        .map_err(|e| dapr_error::native(API, "publish", e))
}

/// Dapr's error codes of pub/sub: an unknown pubsub component is
/// ERR_PUBSUB_NOT_FOUND (HTTP 404), any other failure a failed publish.
pub const API: Api = Api {
    store_not_found: "ERR_PUBSUB_NOT_FOUND",
    store_not_found_http: 404,
    failed: ERR_PUBLISH,
};

/// One entry of a bulk publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkEntry {
    /// The caller's id for the entry, unique within the request.
    pub entry_id: String,
    /// The payload.
    pub event: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// Its metadata, over the request's.
    pub metadata: Vec<(String, String)>,
}

/// Publishes every entry, as Dapr's BulkPublishEvent does: the answer lists
/// the entries that failed, each with why, as `(entry id, error)`. A request
/// that is malformed as a whole (names, too many entries, missing or repeated
/// entry ids) fails before anything is published.
pub async fn bulk_publish(
    client: &Client,
    pubsub: &str,
    topic: &str,
    entries: Vec<BulkEntry>,
    request_metadata: &[(String, String)],
) -> Result<Vec<(String, String)>, DaprError> {
    check_target(pubsub, topic)?;
    if entries.len() > MAX_BULK_ENTRIES {
        return Err(DaprError::invalid(
            ERR_EVENTS,
            format!(
                "a bulk publish carries at most {MAX_BULK_ENTRIES} entries, not {}",
                entries.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for entry in &entries {
        if entry.entry_id.is_empty() {
            return Err(DaprError::invalid(
                ERR_EVENTS,
                "every entry needs an entryId",
            ));
        }
        if !seen.insert(entry.entry_id.as_str()) {
            return Err(DaprError::invalid(
                ERR_EVENTS,
                format!("entryId {:?} is used twice", entry.entry_id),
            ));
        }
    }
    let mut failed = Vec::new();
    for entry in entries {
        let mut metadata: HashMap<String, String> = request_metadata.iter().cloned().collect();
        metadata.extend(entry.metadata);
        let result = match to_native(
            entry.event,
            &entry.content_type,
            metadata.into_iter().collect(),
        ) {
            Ok((data, options)) => client
                .publish(pubsub, topic, data, options)
                .await
                .map(|_| ())
                .map_err(|e| dapr_error::native(API, "publish", e)),
            Err(f) => Err(f),
        };
        if let Err(f) = result {
            failed.push((entry.entry_id, f.message));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_publish_is_enveloped_with_daprs_type_and_default_content_type() {
        let (data, options) = to_native(
            b"hi".to_vec(),
            "",
            vec![("partitionKey".into(), "k".into())],
        )
        .unwrap();
        assert_eq!(data, b"hi");
        assert!(!options.raw);
        assert_eq!(options.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(
            options.metadata,
            vec![
                ("partitionKey".into(), "k".into()),
                ("cloudevent.type".into(), DAPR_EVENT_TYPE.into())
            ]
        );
    }

    #[test]
    fn the_callers_event_type_wins() {
        let md = vec![("cloudevent.type".into(), "my.type".into())];
        let (_, options) = to_native(Vec::new(), "application/json", md).unwrap();
        assert_eq!(
            options.metadata,
            vec![("cloudevent.type".into(), "my.type".into())]
        );
        assert_eq!(options.content_type, "application/json");
    }

    #[test]
    fn raw_payloads_and_cloud_events_are_stored_raw() {
        let md = vec![(RAW_PAYLOAD.into(), "True".into())];
        let (_, options) = to_native(b"x".to_vec(), "", md).unwrap();
        assert!(options.raw);
        assert!(options.metadata.is_empty());
        let ce = br#"{"id":"1","source":"s","type":"t","specversion":"1.0","data":{"a":1}}"#;
        let (data, options) = to_native(ce.to_vec(), CLOUDEVENTS_JSON, Vec::new()).unwrap();
        assert!(options.raw);
        assert_eq!(data, ce);
        let bad = to_native(b"[1]".to_vec(), CLOUDEVENTS_JSON, Vec::new()).unwrap_err();
        assert_eq!(bad.code, ERR_CLOUD_EVENT);
    }

    #[test]
    fn options_mecha_cannot_honour_are_refused_by_name() {
        for name in ["ttlInSeconds", "cloudevent.id", "cloudevent.source"] {
            let e = to_native(Vec::new(), "", vec![(name.into(), "1".into())]).unwrap_err();
            assert_eq!(e.grpc, tonic::Code::InvalidArgument);
            assert!(e.message.contains(name), "{}", e.message);
        }
        let e = to_native(Vec::new(), "", vec![(RAW_PAYLOAD.into(), "yes".into())]).unwrap_err();
        assert_eq!(e.http, 400);
    }

    #[test]
    fn names_are_checked_as_dapr_does() {
        assert_eq!(check_target("", "t").unwrap_err().code, "ERR_PUBSUB_EMPTY");
        assert_eq!(check_target("p", "").unwrap_err().http, 404);
        assert!(check_target("p", "t").is_ok());
    }
}
