//! `mechactl state ...`: key/value state with ETags.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mecha_client::blocking::Client;
use mecha_client::SetOptions;

use crate::EXIT_NOT_FOUND;

/// The `state` subcommands.
#[derive(Subcommand, Debug)]
pub enum StateOp {
    /// Write a value; prints the new ETag.
    Set {
        key: String,
        value: String,
        /// Write only if the stored ETag equals this one.
        #[arg(long)]
        etag: Option<String>,
        /// Expire the key after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Component name; default: the first state store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Print a value to stdout (exit 3 if the key does not exist).
    Get {
        key: String,
        /// Also print the ETag to stderr.
        #[arg(long)]
        etag: bool,
        /// Component name; default: the first state store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Delete only if the stored ETag equals this one.
        #[arg(long)]
        etag: Option<String>,
        /// Component name; default: the first state store.
        #[arg(long, default_value = "")]
        store: String,
    },
}

/// Runs one `state` subcommand.
pub fn run(client: &Client, op: StateOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        StateOp::Set {
            key,
            value,
            etag,
            ttl,
            store,
        } => {
            let options = SetOptions {
                etag,
                ttl: ttl.map(Duration::from_secs),
            };
            let etag = client.set(&store, &key, value.into_bytes(), options)?;
            writeln!(out, "{etag}")?;
        }
        StateOp::Get { key, etag, store } => match client.get(&store, &key)? {
            Some(entry) => {
                out.write_all(&entry.value)?;
                // A trailing newline keeps shells tidy; values are printed
                // verbatim otherwise.
                if !entry.value.ends_with(b"\n") {
                    writeln!(out)?;
                }
                if etag {
                    eprintln!("etag: {}", entry.etag);
                }
            }
            None => {
                eprintln!("mechactl: key {key:?} not found");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
        },
        StateOp::Delete { key, etag, store } => {
            let existed = client.delete(&store, &key, etag)?;
            if !existed {
                eprintln!("mechactl: key {key:?} did not exist");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
