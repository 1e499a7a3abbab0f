//! `mechactl binding ...`: output bindings (`invoke`) and input bindings
//! (`subscribe`).
//!
//! `invoke` prints the result's data verbatim, then its metadata as
//! `NAME=VALUE` lines (or one JSON object with `--json`). `subscribe` prints
//! each event as it arrives and acknowledges it only once it has been
//! written, so an event whose output failed is delivered again.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use mecha_client::blocking::Client;
use mecha_client::{BindingEvent, BindingSubscribeOptions};

use crate::pubsub::{name_value, positive_secs};
use crate::EXIT_NOT_FOUND;

/// The `binding` subcommands.
#[derive(Subcommand, Debug)]
pub enum BindingOp {
    /// Run an operation of an output binding; prints the result's data, then
    /// its metadata as NAME=VALUE lines (exit 3 if the binding, or what the
    /// operation names, does not exist).
    Invoke {
        /// The binding's component name.
        name: String,
        /// The operation, as the binding's type defines them (get, create, post, ...).
        operation: String,
        /// The operation's input (UTF-8 text as given); default: empty.
        data: Option<String>,
        /// An operation parameter as NAME=VALUE (fileName, path, sql, ...); repeatable.
        #[arg(long = "metadata", value_parser = name_value)]
        metadata: Vec<(String, String)>,
        /// Print {"data": ..., "metadata": {...}} instead; data that is not
        /// UTF-8 is printed as "data_hex".
        #[arg(long)]
        json: bool,
    },
    /// Receive the events of an input binding, printing each one and
    /// acknowledging it.
    Subscribe {
        /// The binding's component name.
        name: String,
        /// Exit after this many events; default: run until interrupted.
        #[arg(long)]
        count: Option<u64>,
        /// The most unacknowledged events at once; default: 64.
        #[arg(long, default_value_t = 0)]
        max_in_flight: u32,
        /// Seconds (fractions allowed) before an unacknowledged event is
        /// delivered again; default: the binding's (30).
        #[arg(long, value_parser = positive_secs)]
        ack_deadline: Option<Duration>,
        /// Print each event as one line of JSON: {"name", "offset",
        /// "attempt", "data" (or "data_hex"), "metadata"}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `binding` subcommand.
pub fn run(client: &Client, op: BindingOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        BindingOp::Invoke {
            name,
            operation,
            data,
            metadata,
            json,
        } => {
            let data = data.unwrap_or_default().into_bytes();
            let reply = match client.invoke_binding(&name, &operation, data, metadata) {
                Ok(reply) => reply,
                Err(e) if e.is_not_found() => {
                    eprintln!("mechactl: {e}");
                    return Ok(ExitCode::from(EXIT_NOT_FOUND));
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                let mut doc = serde_json::Map::new();
                insert_data(&mut doc, &reply.data);
                doc.insert("metadata".into(), metadata_object(&reply.metadata));
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                write_data(out, &reply.data)?;
                write_metadata(out, &reply.metadata)?;
            }
        }
        BindingOp::Subscribe {
            name,
            count,
            max_in_flight,
            ack_deadline,
            json,
        } => {
            let mut options = BindingSubscribeOptions::default().max_in_flight(max_in_flight);
            if let Some(deadline) = ack_deadline {
                options = options.ack_deadline(deadline);
            }
            let mut subscription = client.subscribe_binding(&name, options)?;
            let mut received = 0u64;
            // A match rather than `Option::is_none_or`, which is newer than
            // the workspace's rust-version (1.80).
            while match count {
                None => true,
                Some(n) => received < n,
            } {
                let Some(event) = subscription.next() else {
                    break;
                };
                let event = event?;
                write_event(out, &event, json)?;
                out.flush().context("writing an event")?;
                subscription.ack(&event)?;
                received += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes one event: in text, a line naming it, its metadata as
/// `NAME=VALUE` lines, then its data; in JSON, one line.
fn write_event(out: &mut impl Write, event: &BindingEvent, json: bool) -> anyhow::Result<()> {
    if json {
        let mut doc = serde_json::Map::new();
        doc.insert("name".into(), event.name.clone().into());
        doc.insert("offset".into(), event.offset.into());
        doc.insert("attempt".into(), event.attempt.into());
        insert_data(&mut doc, &event.data);
        doc.insert("metadata".into(), metadata_object(&event.metadata));
        writeln!(out, "{}", serde_json::Value::Object(doc))?;
    } else {
        writeln!(
            out,
            "event {} of {} (attempt {})",
            event.offset, event.name, event.attempt
        )?;
        write_metadata(out, &event.metadata)?;
        write_data(out, &event.data)?;
    }
    Ok(())
}

/// Writes data verbatim, ending it with a newline unless it is empty or
/// already ends with one, so the lines that follow start on their own.
fn write_data(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    out.write_all(data)?;
    if !data.is_empty() && !data.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(())
}

fn write_metadata(out: &mut impl Write, metadata: &[(String, String)]) -> std::io::Result<()> {
    for (name, value) in metadata {
        writeln!(out, "{name}={value}")?;
    }
    Ok(())
}

/// Adds `data` to a JSON object: as a string when it is UTF-8, otherwise as
/// lowercase hex under `data_hex`, so that no byte is lost or altered.
fn insert_data(doc: &mut serde_json::Map<String, serde_json::Value>, data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => {
            doc.insert("data".into(), text.into());
        }
        Err(_) => {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            doc.insert("data_hex".into(), hex.into());
        }
    }
}

/// Metadata as a JSON object; a name given twice keeps its last value.
fn metadata_object(metadata: &[(String, String)]) -> serde_json::Value {
    metadata
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &[u8]) -> BindingEvent {
        BindingEvent {
            name: "nightly".into(),
            offset: 4,
            attempt: 1,
            data: data.to_vec(),
            metadata: vec![("time".into(), "2026-12-07T02:00:00Z".into())],
        }
    }

    #[test]
    fn an_event_prints_as_text() {
        let mut out = Vec::new();
        write_event(&mut out, &event(b"tick"), false).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "event 4 of nightly (attempt 1)\ntime=2026-12-07T02:00:00Z\ntick\n"
        );
    }

    #[test]
    fn an_event_prints_as_one_json_line_and_keeps_binary_data() {
        let mut out = Vec::new();
        write_event(&mut out, &event(&[0xff, 0x00]), true).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 1);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(doc["offset"], 4);
        assert_eq!(doc["attempt"], 1);
        assert_eq!(doc["data_hex"], "ff00");
        assert!(doc.get("data").is_none());
        assert_eq!(doc["metadata"]["time"], "2026-12-07T02:00:00Z");
    }

    #[test]
    fn empty_data_adds_no_blank_line() {
        let mut out = Vec::new();
        write_data(&mut out, b"").expect("writes");
        write_data(&mut out, b"a\n").expect("writes");
        write_data(&mut out, b"b").expect("writes");
        assert_eq!(out, b"a\nb\n");
    }
}
