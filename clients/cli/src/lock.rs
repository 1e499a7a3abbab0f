//! `mechactl lock ...`: distributed locks with fencing tokens.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `lock` subcommands.
#[derive(Subcommand, Debug)]
pub enum LockOp {}

/// Runs one `lock` subcommand.
pub fn run(_client: &Client, op: LockOp, _out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {}
}
