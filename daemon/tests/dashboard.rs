//! The node dashboard's JSON views and access rules through the real daemon:
//! what the views show follows the node (modules, crashes, tenants, events),
//! only loopback peers and token holders see it, a foreign `Host` is refused
//! (DNS rebinding), and a restart needs an admin's uid and the page's header.
//! The page itself is driven in a real browser by `tests/browser/`.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{as_user, require_root, signal, wait_until, Daemon, CONFIGURATION, NOBODY};
use mecha_client::SetOptions;
use serde_json::Value;

/// A port that was free a moment ago (see `health.rs` for the race accepted).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket")
        .port()
}

/// One HTTP exchange over `stream`: the status code and the body.
fn exchange(mut stream: TcpStream, request: &str) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("sending");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reading");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// `method path` to `addr` with extra header lines (each ending in CRLF).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).expect("connecting to the endpoint");
    let text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    exchange(stream, &text)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A daemon on the embedded default with its endpoint at 127.0.0.1:`port`.
fn daemon_with_http() -> (Daemon, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = vec![("MECHA_HTTP".to_string(), format!("127.0.0.1:{port}"))];
    let d = Daemon::start_in(dir, None, env);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(20), "the endpoint to be ready", || {
        TcpStream::connect(addr).is_ok() && request(addr, "GET", "/readyz", "").0 == 200
    });
    (d, addr)
}

fn module<'a>(modules: &'a Value, name: &str) -> &'a Value {
    modules
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no module {name} in {modules}"))
}

#[test]
fn the_views_follow_the_node() {
    let (d, addr) = daemon_with_http();
    let (code, body) = request(addr, "GET", "/", "");
    assert_eq!(code, 200);
    assert!(body.contains("dashboard.js"), "{body}");

    let modules = json(&request(addr, "GET", "/api/modules", "").1);
    assert_eq!(modules.as_array().map(Vec::len), Some(8), "{modules}");
    // The Dapr personality waits, socket-activated, for its first caller.
    assert_eq!(module(&modules, "dapr")["state"], "idle");
    let lock = module(&modules, "lock");
    assert_eq!(lock["state"], "running");
    assert!(lock["rss_bytes"].as_u64().unwrap_or(0) > 0, "{lock}");

    // A tenant's requests show under its name.
    let client = d.client();
    client
        .set("statestore", "k", b"v".to_vec(), SetOptions::default())
        .expect("set");
    let me = format!("uid:{}", common::my_uid());
    wait_until(Duration::from_secs(10), "the tenant to be listed", || {
        let page = json(&request(addr, "GET", "/api/tenants?limit=200", "").1);
        page["items"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|t| t["name"] == me.as_str() && t["requests"].as_u64() >= Some(1))
        })
    });

    // Its streams are counted.
    let _subscription = client
        .subscribe("", "orders", "billing", Default::default())
        .expect("subscribe");
    wait_until(
        Duration::from_secs(10),
        "the tenant's stream to be counted",
        || {
            let page = json(&request(addr, "GET", "/api/tenants?limit=200", "").1);
            page["items"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|t| t["name"] == me.as_str() && t["streams"] == 1)
            })
        },
    );

    // A crash shows as a restart with its reason, and as an event.
    let pid = lock["pid"].as_u64().expect("a pid") as u32;
    signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(10), "the restart to be shown", || {
        let modules = json(&request(addr, "GET", "/api/modules", "").1);
        let lock = module(&modules, "lock");
        lock["restarts"] == 1 && lock["state"] == "running"
    });
    let modules = json(&request(addr, "GET", "/api/modules", "").1);
    let last_exit = module(&modules, "lock")["last_exit"].to_string();
    assert!(
        last_exit.contains("SIGKILL") && last_exit.contains(&pid.to_string()),
        "{last_exit}"
    );
    let events = json(&request(addr, "GET", "/api/events", "").1);
    assert!(
        events.as_array().is_some_and(|all| all
            .iter()
            .any(|e| e["kind"] == "module_exited" && e["subject"] == "lock")),
        "{events}"
    );

    // The history samples once a second from the first view on.
    wait_until(Duration::from_secs(10), "history points", || {
        let history = json(&request(addr, "GET", "/api/history", "").1);
        history["points"].as_array().is_some_and(|p| p.len() >= 2)
    });
    // Components show no metadata values, which may hold credentials.
    let components = request(addr, "GET", "/api/components", "").1;
    assert!(!components.contains("metadata"), "{components}");
}

#[test]
fn networked_backends_show_whether_they_answer() {
    // A TCP listener stands in for a server that accepts; a port just closed
    // for one that is down. The drivers connect lazily, so both modules start.
    let up = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let up_addr = up.local_addr().expect("its address");
    let down_port = free_port();
    let port = free_port();
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\n\
         spec:\n  type: state.redis\n  version: v1\n  metadata:\n  \
         - name: redisHost\n    value: \"{up_addr}\"\n  - name: redisPassword\n    value: hunter2\n---\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: locks\n\
         spec:\n  type: lock.redis\n  version: v1\n  metadata:\n  \
         - name: redisHost\n    value: \"127.0.0.1:{down_port}\"\n---\n\
         {CONFIGURATION}  http:\n    address: \"127.0.0.1:{port}\"\n"
    );
    let _d = Daemon::start_with(Some(&config));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(20), "the endpoint", || {
        TcpStream::connect(addr).is_ok() && request(addr, "GET", "/api/components", "").0 == 200
    });
    let body = request(addr, "GET", "/api/components", "").1;
    assert!(!body.contains("hunter2"), "{body}");
    let components = json(&body);
    let row = |name: &str| {
        components
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no component {name} in {components}"))
    };
    assert_eq!(row("cache")["backend"], up_addr.to_string());
    assert_eq!(row("cache")["reachable"], true);
    assert_eq!(row("locks")["reachable"], false);
    assert_eq!(row("locks")["module"], "lock");
}

#[test]
fn a_foreign_host_name_is_refused() {
    let (_d, addr) = daemon_with_http();
    // A page of evil.example that resolved its name to 127.0.0.1 (DNS
    // rebinding) sends its own name as Host.
    let stream = TcpStream::connect(addr).expect("connect");
    let (code, body) = exchange(
        stream,
        "GET /api/tenants HTTP/1.1\r\nHost: evil.example:9464\r\n\r\n",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not a loopback name"), "{body}");
    let stream = TcpStream::connect(addr).expect("connect");
    let (code, _) = exchange(
        stream,
        "GET /api/tenants HTTP/1.1\r\nHost: localhost:1\r\n\r\n",
    );
    assert_eq!(code, 200);
}

#[test]
fn a_restart_needs_an_admin_and_the_page_header() {
    require_root();
    let (_d, addr) = daemon_with_http();
    let pid = || module(&json(&request(addr, "GET", "/api/modules", "").1), "state")["pid"].clone();
    let before = pid();
    let path = "/api/modules/state/restart";

    // Without the header (a cross-site form could send this much).
    let (code, body) = request(addr, "POST", path, "");
    assert_eq!(code, 403, "{body}");
    // As a uid that is not an admin, with the header.
    let (code, body) = as_user(NOBODY, NOBODY, move || {
        let stream = TcpStream::connect(addr)?;
        let text = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Mecha-Dashboard: 1\r\n\r\n");
        Ok(exchange(stream, &text))
    })
    .expect("a request as nobody");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("uid {NOBODY} is not an admin")),
        "{body}"
    );
    let viewer = as_user(NOBODY, NOBODY, move || {
        Ok(exchange(
            TcpStream::connect(addr)?,
            &format!("GET /api/viewer HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        ))
    })
    .expect("the viewer as nobody");
    assert_eq!(json(&viewer.1)["admin"], false, "{}", viewer.1);
    assert_eq!(pid(), before, "nothing was restarted");

    // As root on this host (the daemon's mount namespace), with the header.
    let (code, body) = request(addr, "POST", path, "X-Mecha-Dashboard: 1\r\n");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["pid"], pid());
    assert_ne!(pid(), before);
    // A GET of the action, and an unknown module.
    assert_eq!(request(addr, "GET", path, "").0, 405);
    let (code, _) = request(
        addr,
        "POST",
        "/api/modules/nope/restart",
        "X-Mecha-Dashboard: 1\r\n",
    );
    assert_eq!(code, 404);
}

/// An address of this machine that is not loopback, if it has one: the
/// source address the kernel would route a datagram from (none is sent).
fn outward_ip() -> Option<IpAddr> {
    let probe = UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    Some(probe.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[test]
fn remote_peers_need_the_token() {
    let Some(ip) = outward_ip() else {
        panic!("this test needs a non-loopback address on this machine");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "a-token-of-some-length-42";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("writing the token");
    let port = free_port();
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\n\
         spec:\n  type: state.memory\n  version: v1\n  metadata: []\n---\n\
         {CONFIGURATION}  http:\n    address: \"0.0.0.0:{port}\"\n    dashboardTokenFile: {}\n",
        token_file.display()
    );
    let _d = Daemon::start_in(dir, Some(&config), Vec::new());
    let far = SocketAddr::new(ip, port);
    wait_until(Duration::from_secs(20), "the endpoint", || {
        TcpStream::connect(far).is_ok() && request(far, "GET", "/readyz", "").0 == 200
    });
    let (code, body) = request(far, "GET", "/api/modules", "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("loopback peers only"), "{body}");
    let wrong = request(
        far,
        "GET",
        "/api/modules",
        "Authorization: Bearer not-the-token\r\n",
    );
    assert_eq!(wrong.0, 403);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (code, body) = request(far, "GET", "/api/modules", &bearer);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1));
    // The page holds no data: a remote browser gets it to send the token.
    assert_eq!(request(far, "GET", "/", "").0, 200);
    // The token holder is an admin.
    let act = format!("{bearer}X-Mecha-Dashboard: 1\r\n");
    assert_eq!(
        request(far, "POST", "/api/modules/state/restart", &act).0,
        200
    );
    // Probes and metrics answer everyone, as before.
    assert_eq!(request(far, "GET", "/metrics", "").0, 200);
}

#[test]
fn the_dashboard_can_be_turned_off() {
    let port = free_port();
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\n\
         spec:\n  type: state.memory\n  version: v1\n  metadata: []\n---\n\
         {CONFIGURATION}  http:\n    address: \"127.0.0.1:{port}\"\n    dashboard: false\n"
    );
    let _d = Daemon::start_with(Some(&config));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(20), "the endpoint", || {
        TcpStream::connect(addr).is_ok() && request(addr, "GET", "/readyz", "").0 == 200
    });
    assert_eq!(request(addr, "GET", "/", "").0, 404);
    assert_eq!(request(addr, "GET", "/api/modules", "").0, 404);
}

#[test]
fn a_short_token_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "short\n").expect("writing the token");
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\n\
         spec:\n  type: state.memory\n  version: v1\n  metadata: []\n---\n\
         {CONFIGURATION}  http:\n    address: \"127.0.0.1:{}\"\n    dashboardTokenFile: {}\n",
        free_port(),
        token_file.display()
    );
    let err = common::start_fails(&config);
    assert!(err.contains("at least 16 characters"), "{err}");
}
