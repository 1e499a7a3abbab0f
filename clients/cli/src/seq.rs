//! `mechactl seq ...`: id sequences.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `seq` subcommands.
#[derive(Subcommand, Debug)]
pub enum SeqOp {}

/// Runs one `seq` subcommand.
pub fn run(_client: &Client, op: SeqOp, _out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {}
}
