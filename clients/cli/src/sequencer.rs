//! `mechactl seq ...`: strictly increasing id sequences.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `seq` subcommands.
#[derive(Subcommand, Debug)]
pub enum SeqOp {
    /// Allocate ids of a sequence and print them, one per line, in increasing
    /// order. Ids of a key start at 1, only grow (also across restarts) and
    /// may skip values.
    Next {
        /// The sequence's name.
        key: String,
        /// How many consecutive ids to allocate (1 to 1000000).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Component name; default: the first sequencer.
        #[arg(long, default_value = "")]
        store: String,
    },
}

/// Runs one `seq` subcommand.
pub fn run(client: &Client, op: SeqOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        SeqOp::Next { key, count, store } => {
            let ids = client.next_ids(&store, &key, count)?;
            // A large batch is up to a million lines; buffering them spares
            // one write system call per line on a line-buffered stdout.
            let mut out = std::io::BufWriter::new(out);
            for id in ids {
                writeln!(out, "{id}")?;
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
