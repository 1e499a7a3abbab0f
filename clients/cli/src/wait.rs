//! `mechactl wait --ready`: blocks until the daemon answers and every module is
//! `running`, so scripts and init containers can start applications without
//! racing the daemon's start-up.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mecha_client::blocking::Client;

/// Arguments of `mechactl wait`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Wait until the daemon answers and every configured module is running
    /// (also waits for the socket to appear).
    #[arg(long, required = true)]
    ready: bool,
    /// Give up after this long: e.g. 10s, 500ms, 2m, or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

/// How often the daemon is asked again.
const POLL: Duration = Duration::from_millis(100);
/// The longest a single STATUS call may take, so a hung daemon cannot make
/// the wait overrun its timeout by much.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// What one look at the daemon found.
enum Seen {
    Ready(usize),
    NotReady(String),
}

fn look(client: &Client) -> Result<Seen, mecha_client::Error> {
    let status = client.status()?;
    let waiting: Vec<String> = status
        .modules
        .iter()
        // An idle module (start: lazy) starts at its first request.
        .filter(|m| m.state != "running" && m.state != "idle")
        .map(|m| format!("{} ({})", m.name, m.state))
        .collect();
    if waiting.is_empty() {
        Ok(Seen::Ready(status.modules.len()))
    } else {
        Ok(Seen::NotReady(format!(
            "modules not running: {}",
            waiting.join(", ")
        )))
    }
}

/// Polls STATUS until every module runs (exit 0) or the timeout passes (exit 1,
/// naming what was not ready).
pub fn run(socket: &Path, args: WaitArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    debug_assert!(args.ready, "clap requires --ready");
    let deadline = Instant::now() + args.timeout;
    let mut client: Option<Client> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = match client.take() {
            Some(c) => Ok(c),
            None => Client::connect(socket).map(|mut c| {
                c.set_timeout(CALL_TIMEOUT.min(remaining.max(Duration::from_millis(10))));
                c
            }),
        };
        let why = match attempt {
            Ok(c) => match look(&c) {
                Ok(Seen::Ready(n)) => {
                    writeln!(out, "ready: {n} modules running")?;
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(Seen::NotReady(why)) => {
                    client = Some(c);
                    why
                }
                // The connection is dropped and made again next time: the
                // daemon may have restarted.
                Err(e) => format!("no answer from the daemon: {e}"),
            },
            Err(e) => format!("cannot reach the daemon at {}: {e}", socket.display()),
        };
        if Instant::now() >= deadline {
            eprintln!(
                "mechactl: not ready after {}: {why}",
                humantime(args.timeout)
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// `10s`, `1.5s` or `250ms`, for messages.
pub fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(humantime(Duration::from_secs(10)), "10s");
    }
}
