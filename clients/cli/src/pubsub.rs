//! `mechactl pubsub ...`: publish/subscribe messaging.
//!
//! `publish` prints the message id. `subscribe` prints each message's data
//! as it arrives, one per line, and acknowledges it only once it has been
//! written, so a message whose output failed is delivered again.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `pubsub` subcommands.
#[derive(Subcommand, Debug)]
pub enum PubsubOp {
    /// Publish a message; prints its id.
    Publish {
        /// The topic.
        topic: String,
        /// The message data (UTF-8 text as given).
        data: String,
        /// The media type of the data; default: application/octet-stream.
        #[arg(long, default_value = "")]
        content_type: String,
        /// Metadata as NAME=VALUE; repeatable. `partitionKey=K` orders the
        /// deliveries of messages with the same key.
        #[arg(long = "metadata", value_parser = name_value)]
        metadata: Vec<(String, String)>,
        /// Publish the data as is, without a CloudEvents envelope.
        #[arg(long)]
        raw: bool,
        /// Component name; default: the first pubsub store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Receive messages as a member of a consumer group, printing each
    /// message's data on its own line and acknowledging it.
    Subscribe {
        /// The topic.
        topic: String,
        /// The consumer group; default: "default".
        #[arg(long, default_value = "")]
        group: String,
        /// Exit after this many messages; default: run until interrupted.
        #[arg(long)]
        count: Option<u64>,
        /// The most unacknowledged messages at once; default: 64.
        #[arg(long, default_value_t = 0)]
        max_in_flight: u32,
        /// Seconds (fractions allowed) before an unacknowledged message is
        /// delivered again; default: the store's.
        #[arg(long, value_parser = positive_secs)]
        ack_deadline: Option<Duration>,
        /// Component name; default: the first pubsub store.
        #[arg(long, default_value = "")]
        store: String,
    },
}

/// Runs one `pubsub` subcommand.
pub fn run(client: &Client, op: PubsubOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        PubsubOp::Publish {
            topic,
            data,
            content_type,
            metadata,
            raw,
            store,
        } => {
            let mut options = mecha_client::PublishOptions::default()
                .content_type(content_type)
                .raw(raw);
            for (name, value) in metadata {
                options = options.metadata(name, value);
            }
            let published = client.publish(&store, &topic, data.into_bytes(), options)?;
            writeln!(out, "{}", published.id)?;
        }
        PubsubOp::Subscribe {
            topic,
            group,
            count,
            max_in_flight,
            ack_deadline,
            store,
        } => {
            let mut options =
                mecha_client::SubscribeOptions::default().max_in_flight(max_in_flight);
            if let Some(deadline) = ack_deadline {
                options = options.ack_deadline(deadline);
            }
            let mut subscription = client.subscribe(&store, &topic, &group, options)?;
            let mut received = 0u64;
            // A match rather than `Option::is_none_or`, which is newer than
            // the workspace's rust-version (1.80).
            while match count {
                None => true,
                Some(n) => received < n,
            } {
                let Some(delivery) = subscription.next() else {
                    break;
                };
                let delivery = delivery?;
                out.write_all(&delivery.data)?;
                // One message per line; data is printed verbatim otherwise.
                if !delivery.data.ends_with(b"\n") {
                    writeln!(out)?;
                }
                out.flush().context("writing a message")?;
                subscription.ack(&delivery)?;
                received += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `NAME=VALUE`.
pub(crate) fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Parses a positive number of seconds, fractions allowed.
pub(crate) fn positive_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}
