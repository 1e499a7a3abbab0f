//! Who serves which app id: instances registered on this node (each an
//! INVOKE_REGISTER stream on an app's connection) and the app ids other nodes
//! announced. Picks instances and nodes round robin.

use std::collections::{BTreeMap, HashMap};

use mecha_abi::msg::AppEntry;
use parking_lot::Mutex;
use tokio::sync::watch;

/// One registered instance of an app id on this node.
#[derive(Clone, Debug)]
struct Instance {
    /// The link id of its registration stream: where calls are delivered.
    stream: u32,
    /// Methods it serves; empty = every method.
    methods: Vec<String>,
}

#[derive(Default)]
struct LocalApp {
    tenant: String,
    instances: Vec<Instance>,
    next: usize,
}

#[derive(Default)]
struct Tables {
    local: HashMap<String, LocalApp>,
    /// Node → (the link that announced, the app ids it announced).
    remote: BTreeMap<String, (u64, Vec<String>)>,
    /// Round-robin position per remote app id.
    remote_next: HashMap<String, usize>,
}

/// Where a call for an app id goes.
pub enum Target {
    /// A local instance's registration stream.
    Local(u32),
    /// A node that announced the app id.
    Remote(String),
}

/// Why no target was found.
pub enum Miss {
    /// Nobody serves the app id.
    NoApp,
    /// Local instances exist, but none serves the method.
    NoMethod,
}

/// The registry. `changed` ticks whenever the set of local app ids changes,
/// so peer links re-announce.
pub struct Registry {
    tables: Mutex<Tables>,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            tables: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    /// Adds an instance of `app_id` for `tenant`. Refused when another tenant
    /// holds the app id: app ids are node-wide, and one tenant must not be
    /// able to receive another's calls.
    pub fn register(
        &self,
        app_id: &str,
        tenant: &str,
        stream: u32,
        methods: Vec<String>,
    ) -> Result<(), String> {
        let mut t = self.tables.lock();
        let app = t.local.entry(app_id.to_string()).or_default();
        if app.instances.is_empty() {
            app.tenant = tenant.to_string();
        } else if app.tenant != tenant {
            return Err(format!(
                "app id {app_id:?} is served by another tenant on this node"
            ));
        }
        let first = app.instances.is_empty();
        app.instances.push(Instance { stream, methods });
        drop(t);
        if first {
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Removes the instance whose registration stream is `stream`.
    pub fn unregister(&self, app_id: &str, stream: u32) {
        let mut t = self.tables.lock();
        let gone = match t.local.get_mut(app_id) {
            Some(app) => {
                app.instances.retain(|i| i.stream != stream);
                app.instances.is_empty()
            }
            None => false,
        };
        if gone {
            t.local.remove(app_id);
            drop(t);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Picks where a call of `method` of `app_id` goes: a local instance
    /// (round robin among those serving the method) before any remote node
    /// (round robin among the nodes that announced it).
    pub fn pick(&self, app_id: &str, method: &str) -> Result<Target, Miss> {
        let mut t = self.tables.lock();
        if let Some(app) = t.local.get_mut(app_id) {
            let n = app.instances.len();
            for k in 0..n {
                let i = (app.next + k) % n;
                let inst = &app.instances[i];
                if inst.methods.is_empty() || inst.methods.iter().any(|m| m == method) {
                    app.next = i + 1;
                    return Ok(Target::Local(inst.stream));
                }
            }
            return Err(Miss::NoMethod);
        }
        let nodes: Vec<String> = t
            .remote
            .iter()
            .filter(|(_, (_, apps))| apps.binary_search_by(|a| a.as_str().cmp(app_id)).is_ok())
            .map(|(n, _)| n.clone())
            .collect();
        if nodes.is_empty() {
            return Err(Miss::NoApp);
        }
        let next = t.remote_next.entry(app_id.to_string()).or_default();
        let node = nodes[*next % nodes.len()].clone();
        *next = next.wrapping_add(1);
        Ok(Target::Remote(node))
    }

    /// Like [`Registry::pick`], local instances only (calls from peers are
    /// never forwarded again, so they cannot loop).
    pub fn pick_local(&self, app_id: &str, method: &str) -> Result<u32, Miss> {
        if !self.tables.lock().local.contains_key(app_id) {
            return Err(Miss::NoApp);
        }
        match self.pick(app_id, method) {
            Ok(Target::Local(s)) => Ok(s),
            Ok(Target::Remote(_)) => Err(Miss::NoApp),
            Err(m) => Err(m),
        }
    }

    /// The local app ids, sorted.
    pub fn local_apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.tables.lock().local.keys().cloned().collect();
        apps.sort();
        apps
    }

    /// Replaces what `node` announced over link `link`.
    pub fn set_remote(&self, node: &str, link: u64, mut apps: Vec<String>) {
        apps.sort();
        apps.dedup();
        self.tables
            .lock()
            .remote
            .insert(node.to_string(), (link, apps));
    }

    /// Forgets what `node` announced over `link`, which closed; a newer link
    /// of the same node keeps its announcement.
    pub fn drop_remote(&self, node: &str, link: u64) {
        let mut t = self.tables.lock();
        if t.remote.get(node).is_some_and(|(l, _)| *l == link) {
            t.remote.remove(node);
        }
    }

    /// A receiver that changes whenever the local app ids do.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every app id reachable from this node.
    pub fn entries(&self, node: &str) -> Vec<AppEntry> {
        let t = self.tables.lock();
        let mut out: Vec<AppEntry> = t
            .local
            .iter()
            .map(|(id, app)| AppEntry {
                app_id: id.clone(),
                node: node.to_string(),
                local: true,
                instances: u32::try_from(app.instances.len()).unwrap_or(u32::MAX),
            })
            .collect();
        for (peer, (_, apps)) in &t.remote {
            out.extend(apps.iter().map(|id| AppEntry {
                app_id: id.clone(),
                node: peer.clone(),
                local: false,
                instances: 1,
            }));
        }
        out.sort_by(|a, b| (&a.app_id, &a.node).cmp(&(&b.app_id, &b.node)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_take_turns_and_tenants_cannot_share_an_app_id() {
        let r = Registry::default();
        r.register("echo", "t1", 1, vec![]).unwrap();
        r.register("echo", "t1", 2, vec!["only".into()]).unwrap();
        assert!(r.register("echo", "t2", 3, vec![]).is_err());
        let picks: Vec<u32> = (0..4)
            .map(|_| match r.pick("echo", "only") {
                Ok(Target::Local(s)) => s,
                _ => 0,
            })
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        assert!(matches!(r.pick("echo", "other"), Ok(Target::Local(1))));
        r.unregister("echo", 1);
        assert!(matches!(r.pick("echo", "other"), Err(Miss::NoMethod)));
        r.set_remote("b", 1, vec!["x".into()]);
        assert!(matches!(r.pick("x", "m"), Ok(Target::Remote(n)) if n == "b"));
        assert!(matches!(r.pick_local("x", "m"), Err(Miss::NoApp)));
    }
}
