//! Who serves which app id: instances registered on this node (each an
//! INVOKE_REGISTER stream on an app's connection) and the app ids other nodes
//! announced. Picks instances and nodes round robin.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mecha_abi::msg::AppEntry;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::owners::Reservation;

/// Asks an instance's registration task whether its stream is still open:
/// the task answers while it is, and drops the question once the stream was
/// cancelled (see `InvokeModule::register`).
pub type Probe = mpsc::Sender<oneshot::Sender<()>>;

/// One registered instance of an app id on this node.
#[derive(Clone, Debug)]
struct Instance {
    /// The link id of its registration stream: where calls are delivered.
    stream: u32,
    /// Methods it serves; empty = every method.
    methods: Vec<String>,
    /// Reaches the task that watches its stream.
    probe: Probe,
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
    /// App ids with no instance that stay their tenant's until a deadline
    /// (after the last instance went away, or the module restarted).
    reserved: HashMap<String, (String, Instant)>,
    /// Per tenant: its instances plus the app ids held for it only by a
    /// reservation. Tenants at zero are removed, so the map stays bounded by
    /// what tenants hold.
    load: HashMap<String, usize>,
    /// Node → (the link that announced, the app ids it announced).
    remote: BTreeMap<String, (u64, Vec<String>)>,
    /// Round-robin position per remote app id.
    remote_next: HashMap<String, usize>,
}

impl Tables {
    fn add_load(&mut self, tenant: &str) {
        *self.load.entry(tenant.to_string()).or_default() += 1;
    }

    fn sub_load(&mut self, tenant: &str) {
        if let Some(n) = self.load.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.load.remove(tenant);
            }
        }
    }

    /// Removes the reservation of `app_id`, returning its tenant.
    fn unreserve(&mut self, app_id: &str) -> Option<String> {
        let (tenant, _) = self.reserved.remove(app_id)?;
        self.sub_load(&tenant);
        Some(tenant)
    }
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

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Another tenant has instances of the app id on this node.
    Held,
    /// The app id is reserved for another tenant for this much longer.
    Reserved(Duration),
    /// The tenant is at its registration limit.
    Full(usize),
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
    /// Adds an instance of `app_id` for `tenant`, if the tenant has fewer
    /// than `limit` registrations. Refused when another tenant holds the app
    /// id (has instances, or a reservation that has not lapsed): app ids are
    /// node-wide, and one tenant must not be able to receive another's calls.
    /// True when this is the app id's first instance (the tenant now holds
    /// it, which the caller records in the journal).
    pub fn register(
        &self,
        app_id: &str,
        tenant: &str,
        stream: u32,
        methods: Vec<String>,
        probe: Probe,
        limit: usize,
    ) -> Result<bool, Refusal> {
        let mut t = self.tables.lock();
        if let Some(app) = t.local.get(app_id) {
            if !app.instances.is_empty() && app.tenant != tenant {
                return Err(Refusal::Held);
            }
        }
        let mut own_reservation = false;
        if let Some((owner, until)) = t.reserved.get(app_id) {
            let left = until.saturating_duration_since(Instant::now());
            if owner == tenant {
                own_reservation = true;
            } else if !left.is_zero() {
                return Err(Refusal::Reserved(left));
            }
        }
        let load = t.load.get(tenant).copied().unwrap_or(0);
        if load - usize::from(own_reservation) >= limit {
            return Err(Refusal::Full(limit));
        }
        // The reservation (this tenant's, or another's that lapsed) becomes
        // the instance.
        t.unreserve(app_id);
        t.add_load(tenant);
        let app = t.local.entry(app_id.to_string()).or_default();
        let first = app.instances.is_empty();
        if first {
            app.tenant = tenant.to_string();
        }
        app.instances.push(Instance {
            stream,
            methods,
            probe,
        });
        drop(t);
        if first {
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(first)
    }

    /// Removes the instance whose registration stream is `stream`. When it
    /// was the app id's last, the app id stays reserved for its tenant for
    /// `grace`, and the tenant is returned (the caller records the release).
    pub fn unregister(&self, app_id: &str, stream: u32, grace: Duration) -> Option<String> {
        let mut t = self.tables.lock();
        let app = t.local.get_mut(app_id)?;
        let before = app.instances.len();
        app.instances.retain(|i| i.stream != stream);
        if app.instances.len() == before {
            return None;
        }
        let tenant = app.tenant.clone();
        let last = app.instances.is_empty();
        t.sub_load(&tenant);
        if !last {
            return None;
        }
        t.local.remove(app_id);
        if !grace.is_zero() {
            t.reserved
                .insert(app_id.to_string(), (tenant.clone(), Instant::now() + grace));
            t.add_load(&tenant);
        }
        drop(t);
        self.changed.send_modify(|v| *v += 1);
        Some(tenant)
    }

    /// Reserves app ids for their tenants (ownership replayed from the
    /// journal after a restart). App ids that already have instances keep
    /// them.
    pub fn reserve(&self, reservations: Vec<Reservation>) {
        let mut t = self.tables.lock();
        for r in reservations {
            if t.local.contains_key(&r.app_id) || t.reserved.contains_key(&r.app_id) {
                continue;
            }
            t.add_load(&r.tenant);
            t.reserved.insert(r.app_id, (r.tenant, r.until));
        }
    }

    /// Forgets reservations that lapsed.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        let mut t = self.tables.lock();
        let lapsed: Vec<String> = t
            .reserved
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            t.unreserve(&id);
        }
    }

    /// The stream of the one local instance of `app_id` serving `method`,
    /// when exactly one does: only then may a call go to it without the
    /// module taking turns (a direct route, `routes`).
    pub fn sole_instance(&self, app_id: &str, method: &str) -> Option<u32> {
        let t = self.tables.lock();
        let mut serving = t
            .local
            .get(app_id)?
            .instances
            .iter()
            .filter(|inst| inst.methods.is_empty() || inst.methods.iter().any(|m| m == method));
        let one = serving.next()?;
        serving.next().is_none().then_some(one.stream)
    }

    /// Whether `tenant` holds `app_id` at run time: it has instances of it on
    /// this node, or a reservation that has not lapsed.
    pub fn holds(&self, tenant: &str, app_id: &str) -> bool {
        let t = self.tables.lock();
        if let Some(app) = t.local.get(app_id) {
            return app.tenant == tenant;
        }
        t.reserved
            .get(app_id)
            .is_some_and(|(owner, until)| owner == tenant && *until > Instant::now())
    }

    /// What the journal must hold: app ids with instances (and their
    /// tenants), and the reservations running.
    pub fn snapshot(&self) -> (Vec<(String, String)>, Vec<Reservation>) {
        let t = self.tables.lock();
        let held = t
            .local
            .iter()
            .map(|(id, app)| (id.clone(), app.tenant.clone()))
            .collect();
        let reserved = t
            .reserved
            .iter()
            .map(|(id, (tenant, until))| Reservation {
                app_id: id.clone(),
                tenant: tenant.clone(),
                until: *until,
            })
            .collect();
        (held, reserved)
    }

    /// How many app ids are held (with instances) or reserved: the size of a
    /// compact journal.
    pub fn owned(&self) -> usize {
        let t = self.tables.lock();
        t.local.len() + t.reserved.len()
    }

    /// The probe of the instance of `app_id` on `stream`; `None` once it is
    /// no longer registered.
    pub fn probe(&self, app_id: &str, stream: u32) -> Option<Probe> {
        let t = self.tables.lock();
        t.local
            .get(app_id)?
            .instances
            .iter()
            .find(|i| i.stream == stream)
            .map(|i| i.probe.clone())
    }

    /// Whether any instance or peer node serves `app_id`.
    pub fn serves(&self, app_id: &str) -> bool {
        let t = self.tables.lock();
        t.local.contains_key(app_id)
            || t.remote
                .values()
                .any(|(_, apps)| apps.binary_search_by(|a| a.as_str().cmp(app_id)).is_ok())
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

    /// The app ids reachable from this node that fit one answer: at most
    /// `max_entries`, and at most `max_bytes` of app ids and node names.
    /// `tenant`'s own local app ids come first (a tenant always sees what it
    /// registered, within its registration limit), then the others in order
    /// of app id; the answer is sorted by app id, then node.
    pub fn entries(
        &self,
        tenant: &str,
        node: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<AppEntry> {
        let t = self.tables.lock();
        let local = |id: &String, app: &LocalApp| AppEntry {
            app_id: id.clone(),
            node: node.to_string(),
            local: true,
            instances: u32::try_from(app.instances.len()).unwrap_or(u32::MAX),
        };
        let mut others: Vec<(&String, &LocalApp)> =
            t.local.iter().filter(|(_, a)| a.tenant != tenant).collect();
        others.sort_by(|a, b| a.0.cmp(b.0));
        let own = t
            .local
            .iter()
            .filter(|(_, a)| a.tenant == tenant)
            .map(|(id, app)| local(id, app));
        let rest = others.into_iter().map(|(id, app)| local(id, app));
        let remote = t.remote.iter().flat_map(|(peer, (_, apps))| {
            apps.iter().map(move |id| AppEntry {
                app_id: id.clone(),
                node: peer.clone(),
                local: false,
                instances: 1,
            })
        });
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in own.chain(rest).chain(remote) {
            // Each entry costs its two strings plus a small fixed overhead
            // (lengths, a flag, a count) in the encoded answer.
            let size = e.app_id.len() + e.node.len() + 32;
            if out.len() >= max_entries || bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(e);
        }
        out.sort_by(|a, b| (&a.app_id, &a.node).cmp(&(&b.app_id, &b.node)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        mpsc::channel(1).0
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn instances_take_turns_and_tenants_cannot_share_an_app_id() {
        let r = Registry::default();
        assert_eq!(r.register("echo", "t1", 1, vec![], probe(), 10), Ok(true));
        assert_eq!(
            r.register("echo", "t1", 2, vec!["only".into()], probe(), 10),
            Ok(false)
        );
        assert_eq!(
            r.register("echo", "t2", 3, vec![], probe(), 10),
            Err(Refusal::Held)
        );
        let picks: Vec<u32> = (0..4)
            .map(|_| match r.pick("echo", "only") {
                Ok(Target::Local(s)) => s,
                _ => 0,
            })
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        assert!(matches!(r.pick("echo", "other"), Ok(Target::Local(1))));
        assert_eq!(r.unregister("echo", 1, GRACE), None);
        assert!(matches!(r.pick("echo", "other"), Err(Miss::NoMethod)));
        r.set_remote("b", 1, vec!["x".into()]);
        assert!(matches!(r.pick("x", "m"), Ok(Target::Remote(n)) if n == "b"));
        assert!(matches!(r.pick_local("x", "m"), Err(Miss::NoApp)));
    }

    #[test]
    fn a_released_app_id_stays_its_tenants_for_the_grace_period() {
        let r = Registry::default();
        r.register("checkout", "alice", 1, vec![], probe(), 10)
            .unwrap();
        assert_eq!(
            r.unregister("checkout", 1, GRACE),
            Some("alice".to_string())
        );
        assert!(r.holds("alice", "checkout"));
        assert!(matches!(
            r.register("checkout", "mallory", 2, vec![], probe(), 10),
            Err(Refusal::Reserved(_))
        ));
        assert_eq!(
            r.register("checkout", "alice", 3, vec![], probe(), 10),
            Ok(true)
        );
        // A lapsed reservation (grace zero here) lets anyone take the id.
        r.unregister("checkout", 3, Duration::ZERO);
        assert!(!r.holds("alice", "checkout"));
        assert_eq!(
            r.register("checkout", "mallory", 4, vec![], probe(), 10),
            Ok(true)
        );
    }

    #[test]
    fn registrations_and_reservations_count_against_the_tenants_limit() {
        let r = Registry::default();
        r.register("a", "t", 1, vec![], probe(), 2).unwrap();
        r.register("a", "t", 2, vec![], probe(), 2).unwrap();
        assert_eq!(
            r.register("b", "t", 3, vec![], probe(), 2),
            Err(Refusal::Full(2))
        );
        r.unregister("a", 1, GRACE);
        r.unregister("a", 2, GRACE);
        // `a` is still reserved for `t`: one slot taken, one free; taking
        // the reservation back costs nothing more.
        r.register("b", "t", 4, vec![], probe(), 2).unwrap();
        r.register("a", "t", 5, vec![], probe(), 2).unwrap();
        assert_eq!(
            r.register("c", "t", 6, vec![], probe(), 2),
            Err(Refusal::Full(2))
        );
        r.register("c", "u", 7, vec![], probe(), 2).unwrap();
    }

    #[test]
    fn the_listing_is_bounded_and_always_holds_the_callers_own_apps() {
        let r = Registry::default();
        for i in 0..50u32 {
            r.register(&format!("other-{i:02}"), "o", i, vec![], probe(), 100)
                .unwrap();
        }
        r.register("zz-mine", "me", 100, vec![], probe(), 100)
            .unwrap();
        let e = r.entries("me", "n", 10, usize::MAX);
        assert_eq!(e.len(), 10);
        assert!(e.iter().any(|a| a.app_id == "zz-mine"));
        assert!(e.windows(2).all(|w| w[0].app_id <= w[1].app_id));
        let e = r.entries("me", "n", 1000, 200);
        assert!(e.len() < 10 && e.iter().any(|a| a.app_id == "zz-mine"));
    }
}
