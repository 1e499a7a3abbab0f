//! Service invocation across nodes: two real mechad daemons on loopback TCP
//! with mutual TLS (certificates made at test time with rcgen). A call from
//! an app on node A reaches an app on node B; a peer with a certificate from
//! another CA, and a plaintext peer, are refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{invoke_component, invoke_reply, Daemon};
use mecha_abi::msg::{InvokeCall, PeerHello};
use mecha_abi::{Header, Opcode, HEADER_LEN};
use mecha_client::{handler, Client, InvokeOptions, InvokeReply};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A test CA: its certificate and key.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// Writes `<node>.crt`, `<node>.key` and `ca.crt` into `dir`: a node
    /// certificate whose SAN is the node name, for server and client use.
    fn issue(&self, node: &str, dir: &Path) {
        self.issue_with(node, &[], dir);
    }

    /// Like [`Ca::issue`], with `extra` SANs (the DNS name peers dial).
    fn issue_with(&self, node: &str, extra: &[&str], dir: &Path) {
        let sans: Vec<String> = std::iter::once(node)
            .chain(extra.iter().copied())
            .map(str::to_string)
            .collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, node);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{node}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{node}.key")), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), self.cert.pem()).unwrap();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(node: &str, port: u16, peer: &str, peer_port: u16, dir: &Path) -> String {
    let peers = format!("  - name: peers\n    value: {peer}=127.0.0.1:{peer_port}\n");
    config_with(node, port, &peers, dir)
}

/// A node's invoke component; `discovery` holds its peers/dnsName items.
fn config_with(node: &str, port: u16, discovery: &str, dir: &Path) -> String {
    let f = |name: &str| dir.join(name).display().to_string();
    let metadata = format!(
        r#"  - name: listenAddress
    value: 127.0.0.1:{port}
{discovery}  - name: announceIntervalMs
    value: 200
  - name: accessControl
    value:
      policies:
      - appId: vault
        defaultAction: deny
        callers:
        - node: {node}
          action: allow
  - name: requireTls
    value: true
  - name: tlsCertFile
    value: {cert}
  - name: tlsKeyFile
    value: {key}
  - name: tlsCaFile
    value: {ca}
"#,
        cert = f(&format!("{node}.crt")),
        key = f(&format!("{node}.key")),
        ca = f("ca.crt"),
    );
    invoke_component(node, &metadata)
}

/// Two daemons, node-a and node-b, peered over mutual TLS.
fn pair(ca: &Ca) -> (Daemon, Daemon, u16) {
    let (pa, pb) = (free_port(), free_port());
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    ca.issue("node-a", da.path());
    ca.issue("node-b", db.path());
    let ca_cfg = config("node-a", pa, "node-b", pb, da.path());
    let cb_cfg = config("node-b", pb, "node-a", pa, db.path());
    let a = Daemon::start_in(da, Some(&ca_cfg), Vec::new());
    let b = Daemon::start_in(db, Some(&cb_cfg), Vec::new());
    (a, b, pb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_node_a_reaches_an_app_on_node_b_over_mutual_tls() {
    let ca = Ca::new("mecha test CA");
    let (a, b, _) = pair(&ca);
    let seen: Arc<parking_lot::Mutex<Option<InvokeCall>>> = Default::default();
    let seen2 = Arc::clone(&seen);
    let callee = Client::connect(&b.socket).await.unwrap();
    let _reg = callee
        .register(
            "inventory",
            vec![],
            handler(move |call: InvokeCall| {
                let data = [b"from-b:".as_slice(), &call.data].concat();
                *seen2.lock() = Some(call);
                async move {
                    Ok(InvokeReply {
                        data,
                        content_type: "text/plain".into(),
                        metadata: vec![],
                    })
                }
            }),
        )
        .await
        .unwrap();
    let caller = Client::connect(&a.socket).await.unwrap();
    // Node B announces its app ids to A over its own link to A.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let apps = caller.apps().await.unwrap();
        if apps
            .iter()
            .any(|e| e.app_id == "inventory" && e.node == "node-b" && !e.local)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-a never learned of inventory: {apps:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = InvokeOptions {
        trace_parent: tp.into(),
        ..Default::default()
    };
    let reply = caller
        .invoke("inventory", "count", b"apples".to_vec(), options)
        .await
        .expect("the remote call succeeds");
    assert_eq!(reply.data, b"from-b:apples");
    let call = seen.lock().clone().expect("node b's app was called");
    assert_eq!(
        call.caller_node, "node-a",
        "the caller's node is the TLS-verified one"
    );
    assert_eq!(call.trace_parent, tp, "trace context crosses the hop");
    // Node B's access control admits only callers on node B to `vault`: the
    // caller's node is the one node B authenticated, so node A is refused.
    let _vault = serve_tagged(&b, "vault", "v:").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match caller
            .invoke("vault", "open", vec![], InvokeOptions::default())
            .await
        {
            Err(e) if e.status() == Some(mecha_client::Status::NotFound) => {
                assert!(Instant::now() < deadline, "node-a never learned of vault");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    match refused {
        Err(mecha_client::Error::Status { status, message }) => {
            assert_eq!(status, mecha_client::Status::PermissionDenied);
            assert!(message.contains("node-a"), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    let local = Client::connect(&b.socket).await.unwrap();
    let r = local
        .invoke("vault", "open", b"1".to_vec(), InvokeOptions::default())
        .await;
    assert_eq!(r.unwrap().data, b"v:1", "callers on node-b are allowed");
    // mechactl on node A lists the remote app.
    let out = a.mechactl(&["apps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("inventory") && text.contains("node-b"),
        "{text}"
    );
}

/// Connects to `port` with TLS, presenting `node`'s certificate from `dir`
/// and trusting `dir/ca.crt`, sends PEER_HELLO claiming to be `claim` and
/// reads the answer. `Ok(node name)` when the peer answered PEER_HELLO.
async fn tls_hello(
    port: u16,
    dir: &Path,
    node: &str,
    claim: &str,
    server: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.join(format!("{node}.crt")))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{node}.key"))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut s = connector
        .connect(ServerName::try_from(server.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let body = mecha_abi::encode(&PeerHello {
        version: 1,
        node: claim.into(),
    })
    .unwrap();
    let frame = mecha_abi::encode_frame(Header::request(Opcode::PEER_HELLO, 0), &body).unwrap();
    s.write_all(&frame).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut head = [0u8; HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let h = Header::decode(&head, u32::MAX).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    let hello: PeerHello = mecha_abi::decode(&payload).map_err(|e| e.to_string())?;
    Ok(hello.node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_foreign_certificate_or_without_tls_are_refused() {
    let ca = Ca::new("mecha test CA");
    let (_a, b, port_b) = pair(&ca);
    // Wait until node-b listens: a correctly certified peer is answered.
    let good = tempfile::tempdir().unwrap();
    ca.issue("node-c", good.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tls_hello(port_b, good.path(), "node-c", "node-c", "node-b").await {
            Ok(node) => {
                assert_eq!(node, "node-b");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "node-b never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A certificate for the right name from another CA: refused.
    let rogue_ca = Ca::new("rogue CA");
    let rogue = tempfile::tempdir().unwrap();
    rogue_ca.issue("node-c", rogue.path());
    // The rogue trusts the real CA, so only node-b's check of its
    // certificate can fail the connection.
    std::fs::copy(good.path().join("ca.crt"), rogue.path().join("ca.crt")).unwrap();
    let r = tls_hello(port_b, rogue.path(), "node-c", "node-c", "node-b").await;
    assert!(
        r.is_err(),
        "a certificate from another CA was accepted: {r:?}"
    );
    // A properly certified peer claiming another node's name: refused.
    let r = tls_hello(port_b, good.path(), "node-c", "node-a", "node-b").await;
    assert!(r.is_err(), "node-c's certificate passed as node-a: {r:?}");
    // Plaintext: node-b speaks only TLS, so a cleartext PEER_HELLO gets no
    // PEER_HELLO back.
    let mut tcp = TcpStream::connect(("127.0.0.1", port_b)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = mecha_abi::encode(&PeerHello {
        version: 1,
        node: "node-c".into(),
    })
    .unwrap();
    let frame = mecha_abi::encode_frame(Header::request(Opcode::PEER_HELLO, 0), &body).unwrap();
    tcp.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"MCHA"),
        "a plaintext peer was answered in plaintext"
    );
    // node-b still serves its real peer afterwards.
    let c = Client::connect(&b.socket).await.unwrap();
    c.apps().await.unwrap();
}

/// Registers an echo-like app on `d` answering `tag:` + data.
async fn serve_tagged(
    d: &Daemon,
    app: &str,
    tag: &'static str,
) -> (Client, mecha_client::Registration) {
    let c = Client::connect(&d.socket).await.unwrap();
    let reg = c
        .register(
            app,
            vec![],
            handler(move |call: InvokeCall| async move {
                Ok(invoke_reply([tag.as_bytes(), &call.data].concat()))
            }),
        )
        .await
        .unwrap();
    (c, reg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_peers_by_name() {
    // Node A resolves its peers from the name `localhost` (standing in for a
    // headless service); node B has A in a static table. B's certificate
    // carries `localhost` too, since that is the name A dials and verifies.
    let ca = Ca::new("mecha test CA");
    let (pa, pb) = (free_port(), free_port());
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    ca.issue("node-a", da.path());
    ca.issue_with("node-b", &["localhost"], db.path());
    let dns =
        format!("  - name: dnsName\n    value: localhost\n  - name: dnsPort\n    value: {pb}\n");
    let a_cfg = config_with("node-a", pa, &dns, da.path());
    let b_cfg = config("node-b", pb, "node-a", pa, db.path());
    let a = Daemon::start_in(da, Some(&a_cfg), Vec::new());
    let b = Daemon::start_in(db, Some(&b_cfg), Vec::new());
    let _served = serve_tagged(&b, "catalog", "b:").await;
    let caller = Client::connect(&a.socket).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match caller
            .invoke("catalog", "list", b"x".to_vec(), InvokeOptions::default())
            .await
        {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "never reached node-b: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.data, b"b:x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_to_a_node_that_dies_is_unavailable() {
    let ca = Ca::new("mecha test CA");
    let (a, b, _) = pair(&ca);
    let reached = Arc::new(tokio::sync::Notify::new());
    let r2 = Arc::clone(&reached);
    let callee = Client::connect(&b.socket).await.unwrap();
    let _reg = callee
        .register(
            "stuck",
            vec![],
            handler(move |_: InvokeCall| {
                r2.notify_one();
                async {
                    std::future::pending::<()>().await;
                    Ok(invoke_reply(Vec::new()))
                }
            }),
        )
        .await
        .unwrap();
    let caller = Client::connect(&a.socket)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !caller
        .apps()
        .await
        .unwrap()
        .iter()
        .any(|e| e.app_id == "stuck")
    {
        assert!(Instant::now() < deadline, "node-a never learned of stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = tokio::spawn(async move {
        caller
            .invoke("stuck", "m", vec![], InvokeOptions::default())
            .await
    });
    reached.notified().await;
    // Node B dies with the call in flight; its invoke module dies with it.
    common::signal(b.pid(), libc::SIGKILL);
    match call.await.unwrap() {
        Err(e) => assert_eq!(e.status(), Some(mecha_client::Status::Unavailable), "{e}"),
        Ok(r) => panic!("answered by a dead node: {r:?}"),
    }
}
