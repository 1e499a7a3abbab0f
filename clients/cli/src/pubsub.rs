//! `mechactl pubsub ...`: publish/subscribe messaging.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use mecha_client::blocking::Client;

/// The `pubsub` subcommands.
#[derive(Subcommand, Debug)]
pub enum PubsubOp {}

/// Runs one `pubsub` subcommand.
pub fn run(_client: &Client, op: PubsubOp, _out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {}
}
