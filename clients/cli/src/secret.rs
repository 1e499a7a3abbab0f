//! `mechactl secret ...`: secrets.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `secret` subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretOp {}

/// Runs one `secret` subcommand.
pub fn run(_client: &Client, op: SecretOp, _out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {}
}
