//! `mechactl`: the command-line client for mechad.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 not found (key, secret,
//! or lock that does not exist), 4 lock not acquired, 5 lock held by another owner.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod bindings;
mod config;
mod invoke;
mod lock;
mod pubsub;
mod secrets;
mod sequencer;
mod state;
mod top;
mod wait;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mecha_client::blocking::Client;

/// Talk to the mecha daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The daemon's socket. Default: $MECHA_SOCKET, else /run/mecha/mecha.sock
    /// as root, else $XDG_RUNTIME_DIR/mecha/mecha.sock.
    #[arg(long, global = true, env = "MECHA_SOCKET")]
    socket: Option<PathBuf>,
    /// Deadline of each request, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Key/value state.
    State {
        #[command(subcommand)]
        op: state::StateOp,
    },
    /// Configuration items: get, set (admin), watch.
    Config {
        #[command(subcommand)]
        op: config::ConfigOp,
    },
    /// Publish/subscribe messaging.
    Pubsub {
        #[command(subcommand)]
        op: pubsub::PubsubOp,
    },
    /// Distributed locks with fencing tokens.
    Lock {
        #[command(subcommand)]
        op: lock::LockOp,
    },
    /// Strictly increasing id sequences.
    Seq {
        #[command(subcommand)]
        op: sequencer::SeqOp,
    },
    /// Secrets.
    Secret {
        #[command(subcommand)]
        op: secrets::SecretOp,
    },
    /// Bindings to outside systems: run an operation, receive events.
    Binding {
        #[command(subcommand)]
        op: bindings::BindingOp,
    },
    /// Call a method of an app by app id; prints the answer's data.
    Invoke(invoke::InvokeArgs),
    /// App ids reachable from this daemon (local and on peer nodes).
    Apps,
    /// Serve an app id on this connection until interrupted.
    Serve(invoke::ServeArgs),
    /// Module administration (admins only: see `admins` in the Configuration).
    Module {
        #[command(subcommand)]
        op: ModuleOp,
    },
    /// The daemon itself (admins only).
    Daemon {
        #[command(subcommand)]
        op: DaemonOp,
    },
    /// Re-read the daemon's configuration and apply the differences (admin).
    Reload,
    /// Wait until the daemon is ready: every module running (exit 1 on timeout).
    Wait(wait::WaitArgs),
    /// Live view of modules and per-tenant rates, errors and latencies.
    Top(top::TopArgs),
    /// Daemon version, uptime and modules.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ModuleOp {
    /// Hot-restart a module: start a fresh instance, switch to it, drain the old one.
    Restart { name: String },
    /// Replace a module's executable without failing requests; a binary that
    /// does not start leaves the old instance serving.
    Upgrade {
        name: String,
        /// The new executable.
        #[arg(long)]
        binary: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DaemonOp {
    /// Replace mechad by a new process that takes over every connection,
    /// stream and module without failing a request; a binary that does not
    /// start (or cannot take over) leaves the running daemon serving.
    Upgrade {
        /// The new mechad executable. Default: the one the running daemon
        /// was started from (replaced by a package upgrade, say).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

/// How long `daemon upgrade` waits for the new daemon to answer STATUS
/// after the hand-over began.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// Exit code for a key that does not exist.
const EXIT_NOT_FOUND: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mechactl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.socket.unwrap_or_else(mecha_client::default_socket);
    // These connect (and reconnect) by themselves: the daemon may not be up yet.
    match cli.command {
        Command::Wait(args) => return wait::run(&socket, args, &mut std::io::stdout().lock()),
        Command::Top(args) => return top::run(&socket, args, &mut std::io::stdout().lock()),
        _ => {}
    }
    let mut client = Client::connect(&socket)?;
    client.set_timeout(Duration::from_millis(cli.timeout_ms));
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::State { op } => return state::run(&client, op, &mut out),
        Command::Config { op } => return config::run(&client, op, &mut out),
        Command::Pubsub { op } => return pubsub::run(&client, op, &mut out),
        Command::Lock { op } => return lock::run(&client, op, &mut out),
        Command::Seq { op } => return sequencer::run(&client, op, &mut out),
        Command::Secret { op } => return secrets::run(&client, op, &mut out),
        Command::Binding { op } => return bindings::run(&client, op, &mut out),
        Command::Invoke(args) => return invoke::invoke(&client, args, &mut out),
        Command::Apps => return invoke::apps(&client, &mut out),
        Command::Serve(args) => {
            drop(out);
            return invoke::serve(&client, args);
        }
        Command::Module { op } => {
            let (name, binary) = match op {
                ModuleOp::Restart { name } => (name, None),
                ModuleOp::Upgrade { name, binary } => {
                    // The daemon resolves paths itself, so send an absolute one.
                    let binary = std::path::absolute(&binary)
                        .with_context(|| format!("resolving {}", binary.display()))?;
                    (name, Some(binary.to_string_lossy().into_owned()))
                }
            };
            // A module start can take longer than a data request.
            client.set_timeout(Duration::from_millis(cli.timeout_ms.max(30_000)));
            let pid = client.module_restart(&name, binary)?;
            writeln!(out, "module {name} now runs as pid {pid}")?;
        }
        Command::Daemon {
            op: DaemonOp::Upgrade { binary },
        } => {
            let binary = match binary {
                Some(b) => Some(
                    std::path::absolute(&b)
                        .with_context(|| format!("resolving {}", b.display()))?
                        .to_string_lossy()
                        .into_owned(),
                ),
                None => None,
            };
            // The new daemon starts its modules before it answers.
            client.set_timeout(Duration::from_millis(cli.timeout_ms.max(150_000)));
            let reply = client.daemon_upgrade(binary)?;
            // This connection moves with every other: once the new daemon
            // answers STATUS on it, the hand-over is done.
            let until = std::time::Instant::now() + TAKEOVER_WAIT;
            client.set_timeout(Duration::from_millis(cli.timeout_ms));
            loop {
                match client.status() {
                    Ok(s) if s.pid == reply.new_pid => break,
                    Ok(_) if std::time::Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(s) => anyhow::bail!(
                        "the hand-over to pid {} did not complete: pid {} still serves",
                        reply.new_pid,
                        s.pid
                    ),
                    Err(e) => return Err(e).context("asking the new daemon for its status"),
                }
            }
            writeln!(
                out,
                "mechad upgraded: pid {} -> {}",
                reply.old_pid, reply.new_pid
            )?;
        }
        Command::Reload => {
            client.set_timeout(Duration::from_millis(cli.timeout_ms.max(60_000)));
            let r = client.reload()?;
            for (what, names) in [
                ("started", &r.started),
                ("restarted", &r.restarted),
                ("stopped", &r.stopped),
                ("unchanged", &r.unchanged),
            ] {
                if !names.is_empty() {
                    writeln!(out, "{what}: {}", names.join(", "))?;
                }
            }
        }
        Command::Wait(_) | Command::Top(_) => unreachable!("handled before connecting"),
        Command::Status { json } => {
            let status = client.status().context("asking for status")?;
            if json {
                let modules: Vec<serde_json::Value> = status
                    .modules
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name, "pid": m.pid, "state": m.state,
                            "restarts": m.restarts, "components": m.components,
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "daemon_version": status.daemon_version,
                    "pid": status.pid,
                    "uptime_ms": status.uptime_ms,
                    "tenant": client.tenant(),
                    "modules": modules,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                writeln!(
                    out,
                    "mechad {} (pid {}), up {:.1}s, you are tenant {}",
                    status.daemon_version,
                    status.pid,
                    status.uptime_ms as f64 / 1000.0,
                    client.tenant()
                )?;
                writeln!(
                    out,
                    "{:<12} {:>8} {:<11} {:>8}  COMPONENTS",
                    "MODULE", "PID", "STATE", "RESTARTS"
                )?;
                for m in &status.modules {
                    writeln!(
                        out,
                        "{:<12} {:>8} {:<11} {:>8}  {}",
                        m.name,
                        m.pid,
                        m.state,
                        m.restarts,
                        m.components.join(",")
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
