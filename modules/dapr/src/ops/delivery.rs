//! What a Dapr streaming subscriber receives and what its answers do: the
//! event of a native delivery (the envelope's attributes, or a raw
//! CloudEvent's own), SUCCESS / RETRY / DROP as ack / nack / ack (after a
//! copy to the subscription's dead-letter topic), and the bounded record of
//! deliveries awaiting an answer.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use mecha_abi::msg::Delivery;
use mecha_client::{Client, PublishOptions};

use super::dapr_error::{self, DaprError};
use super::pubsub::{is_cloud_event, media_type, API, DAPR_EVENT_TYPE};

/// The most deliveries one streaming subscription holds unanswered; the
/// pubsub module pushes no more until the app answers some (SPEC §7.3.5).
pub const STREAM_IN_FLIGHT: u32 = 32;
/// How many unanswered deliveries a streaming subscription remembers by id.
/// Deliveries whose ack deadline passed are delivered again, possibly to
/// another member, and the app may never answer the old ones; beyond this
/// the oldest are forgotten (an answer to them is ignored, and the module
/// delivers the message again after its deadline).
pub const MAX_REMEMBERED: usize = 4 * STREAM_IN_FLIGHT as usize;

/// An event as a Dapr subscriber receives it (`TopicEventRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CloudEvent `id`.
    pub id: String,
    /// CloudEvent `source`.
    pub source: String,
    /// CloudEvent `type`.
    pub event_type: String,
    /// CloudEvent `specversion`.
    pub spec_version: String,
    /// CloudEvent `datacontenttype`.
    pub data_content_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The topic.
    pub topic: String,
    /// The pubsub component, as the subscriber named it.
    pub pubsub_name: String,
    /// Further CloudEvent attributes (extensions), as strings.
    pub extensions: Vec<(String, String)>,
}

/// The event a Dapr subscriber of `pubsub_name` receives for `d`: the
/// envelope's attributes; for a raw message that is a CloudEvent, its own;
/// for another raw message, its payload under a Dapr-typed envelope, as
/// Dapr wraps raw payloads for its subscribers.
pub fn event_of(d: &Delivery, pubsub_name: &str) -> Event {
    let mut event = Event {
        id: d.id.clone(),
        source: d.source.clone(),
        event_type: d.event_type.clone(),
        spec_version: d.spec_version.clone(),
        data_content_type: d.data_content_type.clone(),
        data: Vec::new(),
        topic: d.topic.clone(),
        pubsub_name: pubsub_name.to_string(),
        extensions: Vec::new(),
    };
    if !d.raw {
        event.data = d.data.clone();
        for (name, value) in [("time", &d.time), ("traceparent", &d.trace_parent)] {
            if !value.is_empty() {
                event.extensions.push((name.to_string(), value.clone()));
            }
        }
        return event;
    }
    event.event_type = DAPR_EVENT_TYPE.to_string();
    event.spec_version = "1.0".to_string();
    if is_cloud_event(&d.data_content_type) {
        if let Ok(serde_json::Value::Object(ce)) = serde_json::from_slice(&d.data) {
            read_cloud_event(ce, &mut event);
            return event;
        }
    }
    event.data = d.data.clone();
    event
}

/// Fills `event` from a CloudEvent in JSON form: its attributes, and its
/// data from `data_base64`, a JSON string (for a content type that is not
/// JSON), or any other JSON value as JSON text.
fn read_cloud_event(ce: serde_json::Map<String, serde_json::Value>, event: &mut Event) {
    event.data_content_type = "application/json".to_string();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in ce {
        let text = || match &value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match name.as_str() {
            "id" => event.id = text(),
            "source" => event.source = text(),
            "type" => event.event_type = text(),
            "specversion" => event.spec_version = text(),
            "datacontenttype" => event.data_content_type = text(),
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(text()),
            // Dapr adds these from the delivery; the delivery's own win.
            "topic" | "pubsubname" => {}
            _ => event.extensions.push((name, text())),
        }
    }
    event.data = if let Some(b64) = data_base64 {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap_or_default()
    } else {
        match data {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) if !is_json(&event.data_content_type) => {
                s.into_bytes()
            }
            Some(value) => value.to_string().into_bytes(),
        }
    };
}

fn is_json(content_type: &str) -> bool {
    let media = media_type(content_type).to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// A streaming subscriber's answer to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Processed: acknowledge it.
    Success,
    /// Not processed: deliver it again (a native nack; after the pubsub
    /// component's `maxDeliveries` it moves to the component's dead-letter
    /// topic).
    Retry,
    /// Not to be processed: acknowledge it so it is never delivered again,
    /// after copying it to the subscription's dead-letter topic if it named
    /// one.
    Drop,
}

impl Verdict {
    /// The verdict of Dapr's `TopicEventResponseStatus` value (0 SUCCESS,
    /// 1 RETRY, 2 DROP); an unknown value is refused.
    pub fn from_dapr(status: i32) -> Option<Self> {
        match status {
            0 => Some(Self::Success),
            1 => Some(Self::Retry),
            2 => Some(Self::Drop),
            _ => None,
        }
    }
}

/// Carries out `verdict` on `d`. With [`Verdict::Drop`] and a dead-letter
/// topic, the message is first published to that topic of the same store
/// (enveloped as it was, with the native dead-letter metadata), and
/// acknowledged only once that worked, so a drop never loses it.
pub async fn settle(
    client: &Client,
    d: &Delivery,
    verdict: Verdict,
    dead_letter_topic: Option<&str>,
) -> Result<(), DaprError> {
    let settled = match verdict {
        Verdict::Success => client.ack(d).await,
        Verdict::Retry => client.nack(d).await,
        Verdict::Drop => {
            if let Some(dlq) = dead_letter_topic.filter(|t| !t.is_empty()) {
                let (data, options) = dead_letter_copy(d);
                client
                    .publish(&d.store, dlq, data, options)
                    .await
                    .map_err(|e| dapr_error::native(API, "dead-letter publish", e))?;
            }
            client.ack(d).await
        }
    };
    settled
        .map(|_| ())
        .map_err(|e| dapr_error::native(API, "settle", e))
}

/// The publish that copies `d` to a dead-letter topic: the same data,
/// content type, event type and trace context, its metadata and the native
/// `deadletter.*` entries (SPEC §7.3.4).
fn dead_letter_copy(d: &Delivery) -> (Vec<u8>, PublishOptions) {
    let mut metadata = d.metadata.clone();
    metadata.retain(|(n, _)| !n.starts_with("deadletter.") && n != "cloudevent.type");
    if !d.raw && !d.event_type.is_empty() {
        metadata.push(("cloudevent.type".into(), d.event_type.clone()));
    }
    if !d.trace_parent.is_empty() && !metadata.iter().any(|(n, _)| n == "traceparent") {
        metadata.push(("traceparent".into(), d.trace_parent.clone()));
    }
    metadata.push(("deadletter.topic".into(), d.topic.clone()));
    metadata.push(("deadletter.group".into(), d.group.clone()));
    metadata.push(("deadletter.offset".into(), d.offset.to_string()));
    metadata.push(("deadletter.deliveries".into(), d.attempt.to_string()));
    let options = PublishOptions {
        content_type: d.data_content_type.clone(),
        metadata,
        raw: d.raw,
    };
    (d.data.clone(), options)
}

/// The deliveries a streaming subscription handed to the app and the app
/// has not answered yet, by event id; bounded by [`MAX_REMEMBERED`].
#[derive(Debug, Default)]
pub struct Outstanding {
    by_id: HashMap<String, Delivery>,
    order: VecDeque<String>,
}

impl Outstanding {
    /// Remembers `d` under its event id (a redelivery replaces the earlier
    /// delivery of the same message), forgetting the oldest beyond the bound.
    pub fn insert(&mut self, id: String, d: Delivery) {
        if self.by_id.insert(id.clone(), d).is_none() {
            self.order.push_back(id);
        }
        while self.by_id.len() > MAX_REMEMBERED {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.by_id.remove(&oldest);
                }
                None => break,
            }
        }
        // Ids answered since are still queued; drop them once they are
        // most of the queue, so it stays within twice the bound.
        if self.order.len() > 2 * MAX_REMEMBERED {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
    }

    /// The unanswered delivery with event id `id`, forgetting it.
    pub fn take(&mut self, id: &str) -> Option<Delivery> {
        self.by_id.remove(id)
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pubsub::CLOUDEVENTS_JSON;

    fn delivery(raw: bool, content_type: &str, data: &[u8]) -> Delivery {
        Delivery {
            store: "pubsub".into(),
            topic: "orders".into(),
            group: "default".into(),
            offset: 3,
            attempt: 2,
            id: "m-1".into(),
            source: if raw {
                String::new()
            } else {
                "mecha://alice".into()
            },
            event_type: if raw {
                String::new()
            } else {
                DAPR_EVENT_TYPE.into()
            },
            spec_version: if raw { String::new() } else { "1.0".into() },
            data_content_type: content_type.into(),
            time: if raw {
                String::new()
            } else {
                "2026-12-07T23:00:00.000Z".into()
            },
            trace_parent: String::new(),
            data: data.to_vec(),
            metadata: vec![("partitionKey".into(), "k".into())],
            raw,
        }
    }

    #[test]
    fn an_enveloped_delivery_becomes_its_event() {
        let event = event_of(&delivery(false, "text/plain", b"hi"), "pubsub");
        assert_eq!(event.id, "m-1");
        assert_eq!(event.source, "mecha://alice");
        assert_eq!(event.event_type, DAPR_EVENT_TYPE);
        assert_eq!(event.spec_version, "1.0");
        assert_eq!(event.data, b"hi");
        assert_eq!(event.topic, "orders");
        assert_eq!(event.pubsub_name, "pubsub");
        assert_eq!(
            event.extensions,
            vec![("time".into(), "2026-12-07T23:00:00.000Z".into())]
        );
    }

    #[test]
    fn a_raw_cloud_event_delivers_its_own_attributes() {
        let ce = br#"{"id":"e7","source":"app","type":"t","specversion":"1.0","datacontenttype":"application/json","data":{"a":1},"custom":"x"}"#;
        let event = event_of(&delivery(true, CLOUDEVENTS_JSON, ce), "pubsub");
        assert_eq!(event.id, "e7");
        assert_eq!(event.source, "app");
        assert_eq!(event.event_type, "t");
        assert_eq!(event.data, br#"{"a":1}"#);
        assert_eq!(event.extensions, vec![("custom".into(), "x".into())]);
        let b64 =
            br#"{"id":"e8","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        let event = event_of(&delivery(true, CLOUDEVENTS_JSON, b64), "pubsub");
        assert_eq!(event.data, [0, 1, 2]);
        let text = br#"{"id":"e9","datacontenttype":"text/plain","data":"hello"}"#;
        assert_eq!(
            event_of(&delivery(true, CLOUDEVENTS_JSON, text), "p").data,
            b"hello"
        );
    }

    #[test]
    fn a_raw_payload_is_wrapped_as_dapr_wraps_it() {
        let event = event_of(
            &delivery(true, "application/octet-stream", b"\x00\x01"),
            "p",
        );
        assert_eq!(event.id, "m-1");
        assert_eq!(event.event_type, DAPR_EVENT_TYPE);
        assert_eq!(event.spec_version, "1.0");
        assert_eq!(event.data, b"\x00\x01");
    }

    #[test]
    fn verdicts_follow_daprs_enum() {
        assert_eq!(Verdict::from_dapr(0), Some(Verdict::Success));
        assert_eq!(Verdict::from_dapr(1), Some(Verdict::Retry));
        assert_eq!(Verdict::from_dapr(2), Some(Verdict::Drop));
        assert_eq!(Verdict::from_dapr(3), None);
    }

    #[test]
    fn a_dead_letter_copy_keeps_the_envelope_and_says_where_it_came_from() {
        let (data, options) = dead_letter_copy(&delivery(false, "text/plain", b"hi"));
        assert_eq!(data, b"hi");
        assert!(!options.raw);
        assert_eq!(options.content_type, "text/plain");
        let names: Vec<_> = options.metadata.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "partitionKey",
                "cloudevent.type",
                "deadletter.topic",
                "deadletter.group",
                "deadletter.offset",
                "deadletter.deliveries"
            ]
        );
    }

    #[test]
    fn outstanding_deliveries_are_bounded() {
        let mut out = Outstanding::default();
        for i in 0..(3 * MAX_REMEMBERED) {
            out.insert(format!("id-{i}"), delivery(false, "", b""));
            assert!(out.len() <= MAX_REMEMBERED);
            assert!(out.order.len() <= 2 * MAX_REMEMBERED + 1);
        }
        assert!(out.take("id-0").is_none());
        let last = format!("id-{}", 3 * MAX_REMEMBERED - 1);
        assert!(out.take(&last).is_some());
        assert!(out.take(&last).is_none());
    }
}
