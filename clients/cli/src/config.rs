//! `mechactl config ...`: read, write (admin) and watch configuration items.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// Exit code when a requested key does not exist (as for `state get`).
const EXIT_NOT_FOUND: u8 = 3;

/// The `config` subcommands.
#[derive(Subcommand, Debug)]
pub enum ConfigOp {
    /// Print items as `key=value` lines (exit 3 if a requested key is
    /// missing). Without keys, print every item of the store.
    Get {
        /// The keys to read; none reads every item.
        keys: Vec<String>,
        /// Component name; default: the first configuration store.
        #[arg(long, default_value = "")]
        store: String,
        /// Print a JSON array of items, with versions and metadata.
        #[arg(long)]
        json: bool,
    },
    /// Write an item of a writable (memory) store; prints its new version.
    /// Admin only.
    Set {
        key: String,
        value: String,
        /// Component name; default: the first configuration store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Delete items of a writable (memory) store. Admin only.
    Delete {
        #[arg(required = true)]
        keys: Vec<String>,
        /// Component name; default: the first configuration store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Print the current items as `key=value` lines, then one line per
    /// change (`key=value`, or `key` followed by ` deleted`), until
    /// interrupted. Survives restarts of the config module. Without keys,
    /// watch every key of the store.
    Watch {
        /// The keys to watch; none watches every key.
        keys: Vec<String>,
        /// Component name; default: the first configuration store.
        #[arg(long, default_value = "")]
        store: String,
    },
}

/// Runs one `config` subcommand.
pub fn run(client: &Client, op: ConfigOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        ConfigOp::Get { keys, store, json } => {
            let items = client.get_config(&store, keys.clone())?;
            if json {
                let doc: Vec<serde_json::Value> = items
                    .iter()
                    .map(|item| {
                        let metadata: serde_json::Map<String, serde_json::Value> = item
                            .metadata
                            .iter()
                            .map(|(name, value)| (name.clone(), value.clone().into()))
                            .collect();
                        serde_json::json!({
                            "key": item.key,
                            "value": item.value,
                            "version": item.version,
                            "metadata": metadata,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                for item in &items {
                    writeln!(out, "{}={}", item.key, item.value)?;
                }
            }
            let missing: Vec<&String> = keys
                .iter()
                .filter(|key| !items.iter().any(|item| &item.key == *key))
                .collect();
            if !missing.is_empty() {
                for key in missing {
                    eprintln!("mechactl: key {key:?} not found");
                }
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
        }
        ConfigOp::Set { key, value, store } => {
            let version = client.set_config_value(&store, &key, &value)?;
            writeln!(out, "{version}")?;
        }
        ConfigOp::Delete { keys, store } => {
            client.delete_config(&store, keys)?;
        }
        ConfigOp::Watch { keys, store } => {
            let mut watch = client.watch_config(&store, keys)?;
            for item in watch.snapshot() {
                writeln!(out, "{}={}", item.key, item.value)?;
            }
            // Each line is flushed at once: the output is usually read by
            // another program (or a person) while the watch goes on.
            out.flush()?;
            while let Some(update) = watch.next() {
                let update = update?;
                for item in &update.items {
                    writeln!(out, "{}={}", item.key, item.value)?;
                }
                for key in &update.deleted {
                    writeln!(out, "{key} deleted")?;
                }
                out.flush()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
