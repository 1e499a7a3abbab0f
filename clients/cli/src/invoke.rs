//! `mechactl invoke | apps | serve`: service invocation by app id.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use mecha_client::blocking::Client;
use mecha_client::{InvokeOptions, InvokeReply};

/// `mechactl invoke APP METHOD [DATA]`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// The callee's app id.
    app: String,
    /// The method.
    method: String,
    /// The request data (default: empty).
    data: Option<String>,
    /// Media type of the data.
    #[arg(long, default_value = "")]
    content_type: String,
    /// Call as this app id (your tenant must be allowed to claim it).
    #[arg(long, default_value = "")]
    caller: String,
    /// A metadata pair NAME=VALUE; repeatable.
    #[arg(long = "meta", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
}

/// `mechactl serve APP --echo`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The app id to serve.
    app: String,
    /// Answer every call with its own data (the only behaviour so far).
    #[arg(long)]
    echo: bool,
    /// Serve only these methods (default: every method); repeatable.
    #[arg(long = "method")]
    methods: Vec<String>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// Prints the callee's answer data verbatim.
pub fn invoke(client: &Client, a: InvokeArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let options = InvokeOptions {
        content_type: a.content_type,
        metadata: a.metadata,
        caller_app_id: a.caller,
        trace_parent: String::new(),
    };
    let data = a.data.unwrap_or_default().into_bytes();
    match client.invoke(&a.app, &a.method, data, options) {
        Ok(reply) => {
            out.write_all(&reply.data)?;
            if !reply.data.ends_with(b"\n") {
                writeln!(out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_not_found() => {
            eprintln!("mechactl: {e}");
            Ok(ExitCode::from(crate::EXIT_NOT_FOUND))
        }
        Err(e) => Err(e.into()),
    }
}

/// Lists app ids: local ones and those peers announced.
pub fn apps(client: &Client, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    writeln!(out, "{:<24} {:<20} {:<6} INSTANCES", "APP", "NODE", "WHERE")?;
    for a in client.apps()? {
        let place = if a.local { "local" } else { "remote" };
        writeln!(
            out,
            "{:<24} {:<20} {:<6} {}",
            a.app_id, a.node, place, a.instances
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves an app id until interrupted.
pub fn serve(client: &Client, a: ServeArgs) -> anyhow::Result<ExitCode> {
    if !a.echo {
        anyhow::bail!("serve needs a behaviour; only --echo exists so far");
    }
    eprintln!("mechactl: serving app {:?} (echo); Ctrl-C stops", a.app);
    client.serve_fn(&a.app, a.methods, |call| {
        Ok(InvokeReply {
            data: call.data,
            content_type: call.content_type,
            metadata: call.metadata,
        })
    })?;
    Ok(ExitCode::SUCCESS)
}
