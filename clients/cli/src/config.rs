//! `mechactl config ...`: configuration items.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `config` subcommands.
#[derive(Subcommand, Debug)]
pub enum ConfigOp {}

/// Runs one `config` subcommand.
pub fn run(_client: &Client, op: ConfigOp, _out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {}
}
