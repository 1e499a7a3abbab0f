//! `mecha-bench invoke`: the local service-invocation round trip against
//! floor2 (the two-hop raw socket floor) and a state.get on state.memory (two
//! hops each way). The first call goes caller → daemon → invoke module →
//! daemon → callee connection; it earns a direct route, so the timed calls go
//! caller → daemon → callee connection and back, two hops each way. Then the
//! cross-node round trip between two daemons over loopback TCP, in plain
//! text and with mutual TLS; one request at a time, all in one run.

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
    let floor = crate::floor::two_hops(dir.path(), crate::sweep::UNLOADED, plan)
        .context("scenario floor2")?;
    out.push(floor);
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
    for tls in [false, true] {
        out.push(cross_node(bin_dir, plan, tls).await?);
    }
    Ok(out)
}

/// Two daemons peered over loopback TCP (with mutual TLS when `tls`): an app
/// on node B serves echo, a caller on node A invokes it.
async fn cross_node(bin_dir: &Path, plan: &Plan, tls: bool) -> anyhow::Result<Outcome> {
    let name = if tls {
        "invoke cross-node mTLS"
    } else {
        "invoke cross-node plain TCP"
    };
    report::started(name, plan);
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (pa, pb) = (crate::daemon::free_port()?, crate::daemon::free_port()?);
    let certs = if tls { Some(Certs::new()?) } else { None };
    let node = |me: &str,
                port: u16,
                peer: &str,
                peer_port: u16,
                dir: &Path|
     -> anyhow::Result<String> {
        let mut doc = format!(
            "apiVersion: mecha.io/v1alpha1\nkind: Component\nmetadata: {{name: invoke}}\nspec:\n  type: invoke.mesh\n  metadata:\n  - {{name: nodeName, value: {me}}}\n  - {{name: listenAddress, value: \"127.0.0.1:{port}\"}}\n  - {{name: peers, value: \"{peer}=127.0.0.1:{peer_port}\"}}\n  - {{name: announceIntervalMs, value: 200}}\n"
        );
        if let Some(certs) = &certs {
            let (cert, key, ca) = certs.write(me, dir)?;
            doc.push_str(&format!(
                "  - {{name: requireTls, value: true}}\n  - {{name: tlsCertFile, value: \"{cert}\"}}\n  - {{name: tlsKeyFile, value: \"{key}\"}}\n  - {{name: tlsCaFile, value: \"{ca}\"}}\n"
            ));
        }
        Ok(doc)
    };
    let a = Daemon::start_config(
        bin_dir,
        da.path(),
        &node("node-a", pa, "node-b", pb, da.path())?,
        &["mecha-mod-invoke"],
    )?;
    let b = Daemon::start_config(
        bin_dir,
        db.path(),
        &node("node-b", pb, "node-a", pa, db.path())?,
        &["mecha-mod-invoke"],
    )?;
    let callee = Client::connect(b.socket())
        .await
        .context("connecting on node B")?;
    let _registration = callee
        .register("remote-echo", Vec::new(), echo_handler())
        .await
        .context("registering on node B")?;
    let caller = Client::connect(a.socket())
        .await
        .context("connecting on node A")?;
    let data = vec![0xA5u8; plan.payload];
    // Node A learns of the app from B's announcement, within a second or so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while caller
        .invoke(
            "remote-echo",
            "echo",
            data.as_slice(),
            InvokeOptions::default(),
        )
        .await
        .is_err()
    {
        if std::time::Instant::now() > deadline {
            bail!("node A never reached the app on node B");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (c, d) = (&caller, data.as_slice());
    let o = sequential(name, plan, |_| async move {
        c.invoke("remote-echo", "echo", d, InvokeOptions::default())
            .await
            .map(drop)
            .context("invoke")
    })
    .await?;
    report::finished(&o);
    drop((caller, callee));
    a.stop()?;
    b.stop()?;
    Ok(o)
}

/// A throw-away CA that issues node certificates (SAN = node name), as an
/// operator's PKI would.
struct Certs {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Certs {
    fn new() -> anyhow::Result<Self> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "bench-ca");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()?;
        let ca = p.self_signed(&key)?;
        Ok(Self { ca, key })
    }

    /// Writes `node`'s certificate, key and the CA into `dir`; their paths.
    fn write(&self, node: &str, dir: &Path) -> anyhow::Result<(String, String, String)> {
        let mut p = rcgen::CertificateParams::new(vec![node.to_owned()])?;
        p.distinguished_name.push(rcgen::DnType::CommonName, node);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.ca, &self.key)?;
        let path = |f: &str| dir.join(f).display().to_string();
        std::fs::write(dir.join("node.crt"), cert.pem())?;
        std::fs::write(dir.join("node.key"), key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), self.ca.pem())?;
        Ok((path("node.crt"), path("node.key"), path("ca.crt")))
    }
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
