//! `mecha-bench invoke`: the local service-invocation round trip (caller →
//! daemon → invoke module → daemon → callee connection and back, four
//! socket hops each way in all) against a state.get on state.memory (two
//! hops each way), one request at a time, in the same run and daemon.

use std::path::Path;

use anyhow::{bail, Context};
use mecha_client::{echo_handler, Client, InvokeOptions, SetOptions};

use crate::daemon::Daemon;
use crate::mecha::{get_checked, sequential};
use crate::report::{self, Outcome};
use crate::Plan;

/// One memory state store (the baseline) and the invoke module.
const CONFIG: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: mem}
spec: {type: state.memory, version: v1, metadata: []}
---
apiVersion: mecha.io/v1alpha1
kind: Component
metadata: {name: invoke}
spec: {type: invoke.mesh, metadata: [{name: nodeName, value: bench}]}
";

/// The baseline row's name: the ratio column divides by its p50.
pub const BASELINE: &str = "state.get state.memory";

/// Runs both scenarios against one daemon and returns their outcomes.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<Vec<Outcome>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let daemon = Daemon::start_config(
        bin_dir,
        dir.path(),
        CONFIG,
        &["mecha-mod-state", "mecha-mod-invoke"],
    )?;
    let socket = daemon.socket();
    let caller = Client::connect(socket).await.context("connecting")?;
    let callee = Client::connect(socket)
        .await
        .context("connecting the callee")?;
    let _registration = callee
        .register("bench-echo", Vec::new(), echo_handler())
        .await
        .context("registering the echo app")?;
    let value = vec![0xA5u8; plan.payload];
    caller
        .set("mem", "bench-key", value.clone(), SetOptions::default())
        .await
        .context("writing the baseline key")?;

    let mut out = Vec::new();
    report::started(BASELINE, plan);
    let c = &caller;
    let size = plan.payload;
    let o = sequential(BASELINE, plan, |_| async move {
        get_checked(c, "mem", "bench-key", size).await
    })
    .await?;
    report::finished(&o);
    out.push(o);

    let name = "invoke local echo";
    report::started(name, plan);
    let data = value.as_slice();
    let o = sequential(name, plan, |_| async move {
        let reply = c
            .invoke("bench-echo", "echo", data, InvokeOptions::default())
            .await
            .context("invoke")?;
        if reply.data.len() != data.len() {
            bail!(
                "echo answered {} bytes, sent {}",
                reply.data.len(),
                data.len()
            );
        }
        Ok(())
    })
    .await?;
    report::finished(&o);
    out.push(o);
    drop(caller);
    drop(callee);
    daemon.stop()?;
    Ok(out)
}

/// The table, each p50 relative to the state.get baseline's.
pub fn markdown(outcomes: &[Outcome]) -> String {
    let base = outcomes
        .iter()
        .find(|o| o.name == BASELINE)
        .map(|o| o.p50_us);
    let mut s = String::from(
        "| scenario | p50_us | p99_us | p999_us | ops_per_sec | p50 / state.get p50 |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        let ratio = match base {
            Some(b) if b > 0.0 => format!("{:.2}x", o.p50_us / b),
            _ => "n/a".into(),
        };
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {} |\n",
            o.name, o.p50_us, o.p99_us, o.p999_us, o.ops_per_sec, ratio
        ));
    }
    s
}
