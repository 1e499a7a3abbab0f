//! `mechactl lock ...`: distributed locks with fencing tokens.
//!
//! Exit codes beyond the common ones (0 success, 1 failure, 2 usage):
//! 3 the lock does not exist (never granted, released, or its lease passed),
//! 4 the lock was not acquired (somebody holds it), 5 the lock belongs to
//! another owner. The reason goes to stderr; stdout carries only results.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mecha_client::blocking::Client;
use mecha_client::UnlockStatus;

/// Exit code for a lock that does not exist.
const EXIT_DOES_NOT_EXIST: u8 = 3;
/// Exit code for a lock that was not acquired.
const EXIT_NOT_ACQUIRED: u8 = 4;
/// Exit code for a lock held by another owner.
const EXIT_BELONGS_TO_OTHERS: u8 = 5;

/// The `lock` subcommands.
#[derive(Subcommand, Debug)]
pub enum LockOp {
    /// Take a lock; prints its fencing token (exit 4 if somebody holds it).
    Acquire {
        /// The resource to lock.
        resource: String,
        /// Who takes the lock; release and extend must name the same owner.
        #[arg(long)]
        owner: String,
        /// Lease in seconds (fractions allowed): the lock is free again this
        /// long after the grant unless extended.
        #[arg(long, value_parser = positive_secs)]
        ttl: Duration,
        /// Wait up to this many seconds (fractions allowed) for a held lock.
        #[arg(long, value_parser = secs)]
        wait: Option<Duration>,
        /// Component name; default: the first lock store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Release a lock; prints `released` (exit 3 if it does not exist, 5 if
    /// another owner holds it).
    Release {
        /// The locked resource.
        resource: String,
        /// The owner that holds the lock.
        #[arg(long)]
        owner: String,
        /// Component name; default: the first lock store.
        #[arg(long, default_value = "")]
        store: String,
    },
    /// Renew a lock's lease to end TTL from now; prints its (unchanged)
    /// fencing token (exit 3 if it does not exist, 5 if another owner holds it).
    Extend {
        /// The locked resource.
        resource: String,
        /// The owner that holds the lock.
        #[arg(long)]
        owner: String,
        /// New lease in seconds (fractions allowed), counted from now.
        #[arg(long, value_parser = positive_secs)]
        ttl: Duration,
        /// Component name; default: the first lock store.
        #[arg(long, default_value = "")]
        store: String,
    },
}

/// Runs one `lock` subcommand.
pub fn run(client: &Client, op: LockOp, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match op {
        LockOp::Acquire {
            resource,
            owner,
            ttl,
            wait,
            store,
        } => match client.try_lock(&store, &resource, &owner, ttl, wait)? {
            Some(token) => writeln!(out, "{token}")?,
            None => {
                eprintln!("mechactl: lock {resource:?} is held by somebody else");
                return Ok(ExitCode::from(EXIT_NOT_ACQUIRED));
            }
        },
        LockOp::Release {
            resource,
            owner,
            store,
        } => {
            let status = client.unlock(&store, &resource, &owner)?;
            if let Some(code) = refused(&resource, &owner, status) {
                return Ok(code);
            }
            writeln!(out, "released")?;
        }
        LockOp::Extend {
            resource,
            owner,
            ttl,
            store,
        } => {
            let reply = client.extend_lock(&store, &resource, &owner, ttl)?;
            if let Some(code) = refused(&resource, &owner, reply.status) {
                return Ok(code);
            }
            writeln!(out, "{}", reply.fencing_token)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code, with its message on stderr, of an unlock or extend that
/// did not apply; `None` for success.
fn refused(resource: &str, owner: &str, status: UnlockStatus) -> Option<ExitCode> {
    match status {
        UnlockStatus::Success => None,
        UnlockStatus::LockDoesNotExist => {
            eprintln!("mechactl: lock {resource:?} does not exist (released, or its lease passed)");
            Some(ExitCode::from(EXIT_DOES_NOT_EXIST))
        }
        UnlockStatus::LockBelongsToOthers => {
            eprintln!("mechactl: lock {resource:?} is not held by {owner:?}");
            Some(ExitCode::from(EXIT_BELONGS_TO_OTHERS))
        }
    }
}

/// Parses a number of seconds, fractions allowed.
fn secs(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|e| format!("{text:?} seconds: {e}"))
}

/// Parses a number of seconds that must be greater than zero.
fn positive_secs(text: &str) -> Result<Duration, String> {
    match secs(text)? {
        d if d.is_zero() => Err("must be greater than 0".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_with_fractions_and_reject_nonsense() {
        assert_eq!(secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(secs("0"), Ok(Duration::ZERO));
        assert_eq!(positive_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["", "abc", "-1", "NaN", "inf"] {
            assert!(secs(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(positive_secs("0").is_err());
    }
}
