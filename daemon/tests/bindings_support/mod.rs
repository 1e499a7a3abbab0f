//! Raw-frame helpers for the bindings tests (`bindings.rs`,
//! `hostile_bindings.rs`): subscribing, reading pushed events, acknowledging
//! and invoking, as a foreign client would, without the Rust client.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mecha_abi::msg::{
    AckItem, AckReply, BindingAckRequest, BindingEvent, BindingSubscribeReply,
    BindingSubscribeRequest, InvokeBindingReply, InvokeBindingRequest,
};
use mecha_abi::{Header, Opcode, Status, HEADER_LEN};

use crate::common::{self, component, error_message, Daemon, Raw};

/// A cron binding component `name` with `schedule` and more metadata.
pub fn cron(name: &str, schedule: &str, extra: &[(&str, String)]) -> String {
    let mut metadata = vec![("schedule", schedule.to_owned())];
    metadata.extend_from_slice(extra);
    component(name, "bindings.cron", &metadata)
}

/// A connection as this process's uid, or as `uid` (needs root).
pub fn connect(d: &Daemon, uid: Option<u32>) -> Raw {
    let mut raw = match uid {
        None => Raw::connect(&d.socket),
        Some(uid) => Raw::from_stream(
            common::connect_as(&d.socket, uid, uid).expect("connecting as another uid"),
        ),
    };
    let (status, payload) = raw.hello_status();
    assert_eq!(status, Status::Ok, "{}", error_message(&payload));
    raw
}

/// One pushed event.
#[derive(Clone, Debug)]
pub struct Event(pub BindingEvent);

impl std::ops::Deref for Event {
    type Target = BindingEvent;
    fn deref(&self) -> &BindingEvent {
        &self.0
    }
}

impl Event {
    /// The tick's `time` metadata.
    pub fn time(&self) -> &str {
        self.metadata
            .iter()
            .find(|(n, _)| n == "time")
            .map(|(_, v)| v.as_str())
            .expect("a cron event has a time")
    }

    /// The tick's time in seconds since the epoch.
    pub fn tick(&self) -> u64 {
        parse_time(self.time())
    }
}

/// One BINDING_SUBSCRIBE stream on a connection of its own.
pub struct Subscriber {
    raw: Raw,
}

impl Subscriber {
    /// Subscribes to input binding `name`; panics unless it opens.
    pub fn open(
        d: &Daemon,
        uid: Option<u32>,
        name: &str,
        max_in_flight: u32,
        ack_deadline_ms: u32,
    ) -> Self {
        let (status, payload, raw) = Self::try_open(d, uid, name, max_in_flight, ack_deadline_ms);
        assert_eq!(status, Status::Ok, "{}", error_message(&payload));
        let opened: BindingSubscribeReply = mecha_abi::decode(&payload).expect("a subscribe reply");
        assert_eq!(opened.name, name);
        Self { raw }
    }

    /// Subscribes; the opening answer's status and payload.
    pub fn try_open(
        d: &Daemon,
        uid: Option<u32>,
        name: &str,
        max_in_flight: u32,
        ack_deadline_ms: u32,
    ) -> (Status, Vec<u8>, Raw) {
        let mut raw = connect(d, uid);
        let req = BindingSubscribeRequest {
            name: name.to_owned(),
            max_in_flight,
            ack_deadline_ms,
        };
        let payload = mecha_abi::encode(&req).expect("encode");
        let (status, payload) = raw.call(Header::request(Opcode::BINDING_SUBSCRIBE, 7), &payload);
        (status, payload, raw)
    }

    /// The next event, within 20 s.
    pub fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(20))
            .expect("an event within 20 s")
    }

    /// The next event, or `None` if none comes within `limit`.
    pub fn next_within(&mut self, limit: Duration) -> Option<Event> {
        self.raw
            .stream
            .set_read_timeout(Some(limit))
            .expect("timeout");
        let mut head = [0u8; HEADER_LEN];
        match self.raw.stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading a push: {e}"),
        }
        // Once a header began, the rest of the frame follows at once.
        self.raw
            .stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let header = Header::decode(&head, u32::MAX).expect("a valid header");
        let mut payload = vec![0u8; header.payload_len as usize];
        self.raw.stream.read_exact(&mut payload).expect("a payload");
        assert!(
            header.flags.is_push() && !header.flags.is_end(),
            "the stream ended ({}): {}",
            Status::from_code(header.status),
            error_message(&payload)
        );
        Some(Event(mecha_abi::decode(&payload).expect("a BindingEvent")))
    }
}

/// A connection for BINDING_ACK and BINDING_INVOKE requests.
pub struct Acker {
    raw: Raw,
    next_id: u32,
}

impl Acker {
    pub fn open(d: &Daemon, uid: Option<u32>) -> Self {
        Self {
            raw: connect(d, uid),
            next_id: 100,
        }
    }

    fn call(&mut self, opcode: Opcode, payload: &[u8], deadline_ms: u32) -> (Status, Vec<u8>) {
        self.next_id += 1;
        let mut header = Header::request(opcode, self.next_id);
        header.deadline_ms = deadline_ms;
        self.raw.call(header, payload)
    }

    /// Acknowledges (or nacks) `e`; answers how many items applied.
    pub fn ack(&mut self, name: &str, e: &Event, nack: bool) -> u32 {
        let req = BindingAckRequest {
            name: name.to_owned(),
            items: vec![AckItem {
                offset: e.offset,
                attempt: e.attempt,
            }],
            nack,
        };
        let (status, payload) = self.call(
            Opcode::BINDING_ACK,
            &mecha_abi::encode(&req).expect("encode"),
            0,
        );
        assert_eq!(status, Status::Ok, "{}", error_message(&payload));
        mecha_abi::decode::<AckReply>(&payload)
            .expect("an AckReply")
            .applied
    }

    /// BINDING_INVOKE with a deadline (0: the daemon's default).
    pub fn invoke(
        &mut self,
        name: &str,
        operation: &str,
        metadata: &[(&str, &str)],
        deadline_ms: u32,
    ) -> Result<InvokeBindingReply, (Status, String)> {
        let req = InvokeBindingRequest {
            name: name.to_owned(),
            operation: operation.to_owned(),
            data: Vec::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let (status, payload) = self.call(
            Opcode::BINDING_INVOKE,
            &mecha_abi::encode(&req).expect("encode"),
            deadline_ms,
        );
        if status == Status::Ok {
            Ok(mecha_abi::decode(&payload).expect("an InvokeBindingReply"))
        } else {
            Err((status, error_message(&payload)))
        }
    }

    /// Sends a BINDING_INVOKE without waiting; [`Acker::answer`] reads it.
    pub fn send_invoke(&mut self, name: &str, metadata: &[(&str, &str)], deadline_ms: u32) -> u32 {
        let req = InvokeBindingRequest {
            name: name.to_owned(),
            operation: "get".to_owned(),
            data: Vec::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        self.next_id += 1;
        let mut header = Header::request(Opcode::BINDING_INVOKE, self.next_id);
        header.deadline_ms = deadline_ms;
        self.raw
            .send(header, &mecha_abi::encode(&req).expect("encode"));
        self.next_id
    }

    /// Reads one answer: its request id and status.
    pub fn answer(&mut self) -> (u32, Status) {
        let (h, _) = self.raw.recv().expect("an answer");
        (h.request_id, Status::from_code(h.status))
    }

    /// The raw stream, for tests that need it.
    pub fn stream(&self) -> &UnixStream {
        &self.raw.stream
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(text: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| -> u64 { text[r].parse().expect("a number") };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant), for years after 1970.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}
