//! A message as the module stores it (in a log or on a server): its fields,
//! its partition key, its stored encoding and the delivery made of it; the
//! CloudEvents envelope built at publish time (`envelope`), and message ids
//! (`id`).

pub mod envelope;
pub mod id;

use mecha_abi::msg::Delivery;
use mecha_module::DriverError;
use serde::{Deserialize, Serialize};

use crate::error::PubsubError;

/// A message as stored in a topic's log: the CloudEvents envelope the module
/// built at publish time, or a raw message's id and content type alone.
/// Field order is its storage order (it is stored encoded with the ABI's
/// pinned encoding, behind a format byte: see [`Message::encode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`; empty when raw.
    pub source: String,
    /// CloudEvents `type`; empty when raw.
    pub event_type: String,
    /// CloudEvents `specversion`; empty when raw.
    pub spec_version: String,
    /// CloudEvents `datacontenttype`.
    pub data_content_type: String,
    /// CloudEvents `time` (RFC 3339, UTC); empty when raw.
    pub time: String,
    /// W3C `traceparent`, empty if none.
    pub trace_parent: String,
    /// The body.
    pub data: Vec<u8>,
    /// Metadata as published.
    pub metadata: Vec<(String, String)>,
    /// Published without an envelope.
    pub raw: bool,
}

/// The metadata name whose value orders deliveries: messages of one topic
/// with the same key are handed to a consumer group one at a time, in
/// offset order (Dapr's name for it).
pub const PARTITION_KEY: &str = "partitionKey";

/// The storage format of an encoded message; a different first byte is
/// refused rather than misread, so the format can change without old data
/// being mistaken for new.
const FORMAT: u8 = 1;

/// Where a delivery of a message goes: the component, topic and group, and
/// which delivery of which offset it is.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryTo<'a> {
    /// The component name.
    pub store: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// The consumer group.
    pub group: &'a str,
    /// The message's offset in its topic.
    pub offset: u64,
    /// How many times the message has been handed to the group, this time
    /// included.
    pub attempt: u32,
}

impl Message {
    /// The message's partition key, if it has a non-empty one.
    pub fn partition_key(&self) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(name, value)| name == PARTITION_KEY && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// How many bytes [`Message::encode`] makes of this message, computed
    /// without encoding it: what the message counts against its tenant's
    /// `maxBytesPerTenant` in every embedded driver. It follows the pinned
    /// encoding (fixed-width integers): the format byte, an 8-byte length
    /// before each string, the body and each metadata name and value, one
    /// for the metadata list, and one byte for `raw`. A unit test holds it
    /// equal to the encoded length.
    pub fn stored_len(&self) -> u64 {
        const PREFIX: u64 = 8;
        let text = |s: &str| PREFIX.saturating_add(s.len() as u64);
        let strings = [
            &self.id,
            &self.source,
            &self.event_type,
            &self.spec_version,
            &self.data_content_type,
            &self.time,
            &self.trace_parent,
        ]
        .iter()
        .fold(0_u64, |sum, s| sum.saturating_add(text(s)));
        let metadata = self.metadata.iter().fold(PREFIX, |sum, (name, value)| {
            sum.saturating_add(text(name)).saturating_add(text(value))
        });
        // usize always fits in u64 on the targets mecha builds for.
        1_u64
            .saturating_add(strings)
            .saturating_add(PREFIX.saturating_add(self.data.len() as u64))
            .saturating_add(metadata)
            .saturating_add(1)
    }

    /// The message as stored: [`FORMAT`], then the ABI's pinned encoding.
    pub fn encode(&self) -> Result<Vec<u8>, PubsubError> {
        let body = mecha_abi::encode(self).map_err(|e| {
            PubsubError::Driver(DriverError::Internal(format!(
                "encoding a message for storage: {e}"
            )))
        })?;
        let mut stored = Vec::with_capacity(body.len() + 1);
        stored.push(FORMAT);
        stored.extend_from_slice(&body);
        Ok(stored)
    }

    /// The message stored as `stored` by [`Message::encode`].
    pub fn decode(stored: &[u8]) -> Result<Message, PubsubError> {
        match stored.split_first() {
            Some((&FORMAT, body)) => mecha_abi::decode(body).map_err(|e| {
                PubsubError::Driver(DriverError::Internal(format!(
                    "a stored message is corrupt: {e}"
                )))
            }),
            Some((other, _)) => Err(PubsubError::Driver(DriverError::Internal(format!(
                "a stored message has format {other}, this module reads format {FORMAT}"
            )))),
            None => Err(PubsubError::Driver(DriverError::Internal(
                "a stored message is empty".to_owned(),
            ))),
        }
    }

    /// The delivery of this message described by `to`.
    pub fn into_delivery(self, to: DeliveryTo<'_>) -> Delivery {
        Delivery {
            store: to.store.to_owned(),
            topic: to.topic.to_owned(),
            group: to.group.to_owned(),
            offset: to.offset,
            attempt: to.attempt,
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            spec_version: self.spec_version,
            data_content_type: self.data_content_type,
            time: self.time,
            trace_parent: self.trace_parent,
            data: self.data,
            metadata: self.metadata,
            raw: self.raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(metadata: &[(&str, &str)]) -> Message {
        Message {
            id: "i".into(),
            source: "mecha://t".into(),
            event_type: "e".into(),
            spec_version: "1.0".into(),
            data_content_type: "text/plain".into(),
            time: "1970-01-01T00:00:00.000Z".into(),
            trace_parent: String::new(),
            data: b"body".to_vec(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            raw: false,
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_other_formats() {
        let m = message(&[("a", "b")]);
        let stored = m.encode().expect("encodes");
        assert_eq!(stored[0], FORMAT);
        assert_eq!(Message::decode(&stored), Ok(m));
        let mut other = stored.clone();
        other[0] = 2;
        assert!(Message::decode(&other).is_err());
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[FORMAT, 0xff]).is_err());
    }

    /// The size counted against a tenant's byte quota is exactly what the
    /// redb driver stores, so the broker's reservation before an append and
    /// the driver's count of what a trim deletes agree.
    #[test]
    fn the_counted_size_is_the_stored_size() {
        let mut m = message(&[("a", "b"), (PARTITION_KEY, "key")]);
        assert_eq!(m.stored_len(), m.encode().expect("encodes").len() as u64);
        m.data = vec![7; 70_000];
        m.trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into();
        m.raw = true;
        assert_eq!(m.stored_len(), m.encode().expect("encodes").len() as u64);
        let empty = Message {
            metadata: Vec::new(),
            data: Vec::new(),
            ..message(&[])
        };
        assert_eq!(
            empty.stored_len(),
            empty.encode().expect("encodes").len() as u64
        );
    }

    #[test]
    fn only_a_non_empty_partition_key_counts() {
        assert_eq!(message(&[]).partition_key(), None);
        assert_eq!(message(&[(PARTITION_KEY, "")]).partition_key(), None);
        assert_eq!(message(&[(PARTITION_KEY, "k")]).partition_key(), Some("k"));
    }
}
