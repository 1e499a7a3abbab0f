//! Dapr-style callees: apps that serve Dapr's `AppCallback` gRPC service
//! (`OnInvoke`) or plain HTTP on an app port, as a Dapr sidecar reaches
//! them. The personality component's metadata `appCallbacks` lists them
//! (`appId=grpc://127.0.0.1:PORT,other=http://127.0.0.1:PORT`); for each,
//! the personality asks mechad for a session as the tenant that owns the
//! app id in the configuration (`Sessions::open_app`), registers the app id
//! on it, and forwards every call to the app. So a mecha-native app and a
//! Dapr app call each other by app id, through the invoke module's routing,
//! access control and resiliency, whichever of them speaks Dapr.

use std::sync::Arc;
use std::time::Duration;

use mecha_client::InvokeCall;

use super::forward::{Endpoint, Forwarder};
use crate::session::Sessions;

/// The most callees one personality component lists; each holds a session
/// and a registration in mechad.
pub const MAX_CALLEES: usize = 64;

/// One Dapr-style callee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callee {
    /// Its app id.
    pub app_id: String,
    /// Where it listens.
    pub endpoint: Endpoint,
}

/// Reads the `appCallbacks` metadata value: comma-separated
/// `appId=grpc://host:port` or `appId=http://host:port` pairs.
pub fn parse(value: &str) -> Result<Vec<Callee>, String> {
    let mut callees: Vec<Callee> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (app_id, url) = item
            .split_once('=')
            .ok_or_else(|| format!("appCallbacks entry {item:?} is not appId=grpc://host:port or appId=http://host:port"))?;
        let app_id = app_id.trim();
        if app_id.is_empty() || app_id.len() > 256 || app_id.contains('\0') {
            return Err(format!(
                "appCallbacks entry {item:?}: the app id must be 1 to 256 bytes"
            ));
        }
        let url = url.trim();
        let endpoint = if let Some(addr) = url.strip_prefix("grpc://") {
            Endpoint::Grpc(authority(addr, item)?)
        } else if let Some(addr) = url.strip_prefix("http://") {
            Endpoint::Http(authority(addr, item)?)
        } else {
            return Err(format!(
                "appCallbacks entry {item:?}: the address must start with grpc:// or http://"
            ));
        };
        if callees.iter().any(|c| c.app_id == app_id) {
            return Err(format!("appCallbacks names app id {app_id:?} twice"));
        }
        callees.push(Callee {
            app_id: app_id.to_string(),
            endpoint,
        });
        if callees.len() > MAX_CALLEES {
            return Err(format!("appCallbacks lists more than {MAX_CALLEES} apps"));
        }
    }
    Ok(callees)
}

/// `host:port` of an address, without a path.
fn authority(addr: &str, item: &str) -> Result<String, String> {
    let addr = addr.trim_end_matches('/');
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !addr.contains(['/', '?', '#', '@', ' ']);
    if valid {
        Ok(addr.to_string())
    } else {
        Err(format!(
            "appCallbacks entry {item:?}: the address must be host:port"
        ))
    }
}

/// Serves every callee until the process exits.
pub async fn serve_all(callees: Vec<Callee>, sessions: Arc<Sessions>) {
    let tasks: Vec<_> = callees
        .into_iter()
        .map(|c| tokio::spawn(serve(c, Arc::clone(&sessions))))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Registers `callee`'s app id on a session of its owner and forwards its
/// calls, opening a new session and registering again whenever the
/// registration ends (the session closed, or mechad refused for now), with
/// a backoff so a lasting refusal does not spin.
async fn serve(callee: Callee, sessions: Arc<Sessions>) {
    let forwarder = match Forwarder::new(&callee.endpoint) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::error!("app {}: {e}", callee.app_id);
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        match sessions.open_app(&callee.app_id).await {
            Ok(client) => {
                let forwarder = Arc::clone(&forwarder);
                let handler = mecha_client::handler(move |call: InvokeCall| {
                    let forwarder = Arc::clone(&forwarder);
                    async move { forwarder.forward(call).await }
                });
                match client.serve(&callee.app_id, Vec::new(), handler).await {
                    Ok(()) => tracing::info!("app {}: registration ended", callee.app_id),
                    Err(e) => tracing::warn!("app {}: registration ended: {e}", callee.app_id),
                }
            }
            Err(r) => tracing::warn!("app {}: no session for its owner: {r}", callee.app_id),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_callbacks_parse() {
        let callees = parse(" orders=grpc://127.0.0.1:50051 , web=http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            callees,
            vec![
                Callee {
                    app_id: "orders".into(),
                    endpoint: Endpoint::Grpc("127.0.0.1:50051".into())
                },
                Callee {
                    app_id: "web".into(),
                    endpoint: Endpoint::Http("127.0.0.1:8080".into())
                },
            ]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_app_callbacks_are_refused_with_the_entry() {
        for bad in [
            "orders",
            "=grpc://127.0.0.1:1",
            "a=tcp://127.0.0.1:1",
            "a=http://127.0.0.1",
            "a=http://127.0.0.1:1/path",
            "a=http://u@h:1",
            "a=grpc://h:1,a=http://h:2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_CALLEES)
            .map(|i| format!("a{i}=http://h:1"))
            .collect();
        assert!(parse(&many.join(",")).is_err());
    }
}
