//! `mechactl secret ...`: reading secrets.
//!
//! `get` prints a secret's value to stdout; `list` prints only the names of
//! the secrets the caller may read, so listing a store never puts values on a
//! terminal.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// Exit code for a secret that does not exist (as for a missing state key).
const EXIT_NOT_FOUND: u8 = 3;

/// The `secret` subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretOp {
    /// Print a secret (exit 3 if it does not exist). A single-value secret
    /// prints its value; a secret of several keys prints `key=value` lines.
    Get {
        /// The secret's name.
        name: String,
        /// Component name; default: the first secret store.
        #[arg(long, default_value = "")]
        store: String,
        /// Print a JSON object of the secret's keys and values instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the names of the secrets you may read, one per line.
    List {
        /// Component name; default: the first secret store.
        #[arg(long, default_value = "")]
        store: String,
        /// Print a JSON array of names instead.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `secret` subcommand.
pub fn run(client: &Client, op: SecretOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        SecretOp::Get { name, store, json } => {
            let pairs = match client.get_secret(&store, &name) {
                Ok(pairs) => pairs,
                Err(e) if e.is_not_found() => {
                    eprintln!("mechactl: secret {name:?} not found");
                    return Ok(ExitCode::from(EXIT_NOT_FOUND));
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                let object: serde_json::Map<String, serde_json::Value> = pairs
                    .into_iter()
                    .map(|(key, value)| (key, serde_json::Value::String(value)))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&object)?)?;
            } else if let [(_, value)] = pairs.as_slice() {
                out.write_all(value.as_bytes())?;
                // A trailing newline keeps shells tidy; values are printed
                // verbatim otherwise, as `state get` does.
                if !value.ends_with('\n') {
                    writeln!(out)?;
                }
            } else {
                for (key, value) in &pairs {
                    writeln!(out, "{key}={value}")?;
                }
            }
        }
        SecretOp::List { store, json } => {
            let names: Vec<String> = client
                .bulk_get_secrets(&store)?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&names)?)?;
            } else {
                for name in &names {
                    writeln!(out, "{name}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
