//! Per-tenant quotas: connections, requests in flight, request rate (token
//! bucket), payload size and bytes queued unread. Exceeding one is
//! RESOURCE_EXHAUSTED naming the limit. Connections, requests in flight and
//! queued bytes have defaults (below), so no tenant is unbounded unless the
//! configuration says so. The in-flight cap also makes the router fair: one tenant can occupy
//! at most its share of a module's queue, however hard it floods.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Deserialize;

use crate::budget::{Held, OutputBudget, TENANT_BYTES};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one tenant may hold open, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Requests one tenant may have in flight to modules, unless configured.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Limits of one tenant. Absent fields take the defaults above (connections,
/// requests in flight, queued bytes) or mean "no limit" (rate, payload size).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Connections the tenant may hold open at once.
    pub max_connections: Option<usize>,
    /// Requests the tenant may have in flight to modules, over all its
    /// connections.
    pub max_in_flight: Option<usize>,
    /// Sustained requests per second (token bucket refill rate).
    pub requests_per_second: Option<f64>,
    /// Bucket size: requests allowed in a burst; default one second's worth.
    pub burst: Option<f64>,
    /// Largest payload the tenant may send, below the daemon-wide maximum.
    pub max_payload_bytes: Option<u32>,
    /// Bytes of answers, pushes and delivered calls the daemon holds for all
    /// the tenant's connections while they are not read; default
    /// `budget::TENANT_BYTES` (512 MiB).
    pub max_queued_bytes: Option<usize>,
}

/// The `quotas` section of the Configuration document.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Quotas {
    /// Limits of every tenant without its own entry.
    #[serde(default)]
    pub default: Limits,
    /// Limits by tenant name; they replace the default as a whole.
    #[serde(default)]
    pub tenants: HashMap<String, Limits>,
}

/// What every frame queued for a connection holds until it is written: the
/// connection's permit, for forwarded requests the tenant's, and for large
/// frames their bytes (`budget`).
#[derive(Debug)]
pub struct Guard {
    _conn: OwnedSemaphorePermit,
    tenant: Option<OwnedSemaphorePermit>,
    bytes: Option<Held>,
}

impl Guard {
    /// A guard holding only a connection (or push) permit.
    pub fn new(conn: OwnedSemaphorePermit) -> Self {
        Self {
            _conn: conn,
            tenant: None,
            bytes: None,
        }
    }

    /// Holds `bytes` of the output budget until the frame is written.
    pub fn hold(&mut self, bytes: Option<Held>) {
        self.bytes = bytes;
    }
}

/// The live quota state of one tenant, shared by its connections.
pub struct TenantState {
    name: String,
    limits: Limits,
    connections: AtomicUsize,
    in_flight: Option<Arc<Semaphore>>,
    bucket: Mutex<(f64, Instant)>,
    /// The tenant's budget of bytes queued unread, over its connections.
    pub output: Arc<Semaphore>,
}

/// Releases a connection slot when the connection ends.
pub struct ConnectionSlot(Arc<TenantState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TenantState {
    fn new(name: &str, limits: Limits) -> Self {
        let burst = limits
            .burst
            .or(limits.requests_per_second)
            .unwrap_or(0.0)
            .max(1.0);
        Self {
            name: name.to_string(),
            in_flight: limits.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            connections: AtomicUsize::new(0),
            bucket: Mutex::new((burst, Instant::now())),
            output: OutputBudget::tenant(limits.max_queued_bytes.unwrap_or(TENANT_BYTES)),
            limits,
        }
    }

    /// Takes a connection slot, or says which limit refuses it.
    pub fn connect(self: &Arc<Self>) -> Result<ConnectionSlot, String> {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = ConnectionSlot(Arc::clone(self));
        match self.limits.max_connections {
            Some(max) if now > max => Err(format!(
                "tenant {} already has {max} connections (quota maxConnections = {max})",
                self.name
            )),
            _ => Ok(slot),
        }
    }

    /// Checks the payload size, the rate and the in-flight cap for one
    /// request, adding the tenant's in-flight permit to `guard`.
    pub fn admit(&self, payload_len: u32, guard: &mut Guard) -> Result<(), String> {
        if let Some(max) = self.limits.max_payload_bytes {
            if payload_len > max {
                return Err(format!(
                    "payload of {payload_len} bytes exceeds tenant {}'s quota maxPayloadBytes = {max}",
                    self.name
                ));
            }
        }
        if let Some(rate) = self.limits.requests_per_second {
            let burst = self.limits.burst.unwrap_or(rate).max(1.0);
            let mut bucket = self.bucket.lock();
            let now = Instant::now();
            let (tokens, last) = *bucket;
            let refilled = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
            if refilled < 1.0 {
                *bucket = (refilled, now);
                return Err(format!(
                    "tenant {} exceeded its request rate (quota requestsPerSecond = {rate}, burst = {burst})",
                    self.name
                ));
            }
            *bucket = (refilled - 1.0, now);
        }
        if let Some(sem) = &self.in_flight {
            match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => guard.tenant = Some(p),
                Err(_) => {
                    return Err(format!(
                        "tenant {} has {} requests in flight (quota maxInFlight)",
                        self.name,
                        self.limits.max_in_flight.unwrap_or(0)
                    ))
                }
            }
        }
        Ok(())
    }
}

/// What a tenant uses now against its limits (the dashboard's tenant list).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Connections open.
    pub connections: usize,
    /// `maxConnections`.
    pub max_connections: Option<usize>,
    /// Requests in flight to modules.
    pub in_flight: usize,
    /// `maxInFlight`.
    pub max_in_flight: Option<usize>,
    /// Bytes of large frames queued unread over its connections.
    pub queued_bytes: usize,
    /// `maxQueuedBytes`.
    pub max_queued_bytes: usize,
    /// `requestsPerSecond`, if the tenant has a rate limit.
    pub requests_per_second: Option<f64>,
}

impl TenantState {
    /// What the tenant uses now; each figure is read on its own, so a
    /// request racing the read may be counted or not.
    pub fn usage(&self) -> Usage {
        let max_queued_bytes = self
            .limits
            .max_queued_bytes
            .unwrap_or(TENANT_BYTES)
            .min(Semaphore::MAX_PERMITS);
        let max_in_flight = self.limits.max_in_flight;
        Usage {
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: self.limits.max_connections,
            in_flight: match (&self.in_flight, max_in_flight) {
                (Some(sem), Some(max)) => max.saturating_sub(sem.available_permits()),
                _ => 0,
            },
            max_in_flight,
            queued_bytes: max_queued_bytes.saturating_sub(self.output.available_permits()),
            max_queued_bytes,
            requests_per_second: self.limits.requests_per_second,
        }
    }
}

/// Tenant states by name, created on first use from the configured quotas.
#[derive(Default)]
pub struct Registry {
    quotas: Quotas,
    states: Mutex<HashMap<String, Arc<TenantState>>>,
}

impl Registry {
    /// A registry applying `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// What every tenant seen since the last reload uses now, by name.
    pub fn usages(&self) -> Vec<(String, Usage)> {
        let states: Vec<Arc<TenantState>> = self.states.lock().values().cloned().collect();
        states.iter().map(|t| (t.name.clone(), t.usage())).collect()
    }

    /// The state of tenant `name`.
    pub fn tenant(&self, name: &str) -> Arc<TenantState> {
        let mut states = self.states.lock();
        let state = states.entry(name.to_string()).or_insert_with(|| {
            let mut limits = self
                .quotas
                .tenants
                .get(name)
                .cloned()
                .unwrap_or_else(|| self.quotas.default.clone());
            limits
                .max_connections
                .get_or_insert(DEFAULT_MAX_CONNECTIONS);
            limits.max_in_flight.get_or_insert(DEFAULT_MAX_IN_FLIGHT);
            Arc::new(TenantState::new(name, limits))
        });
        Arc::clone(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap())
    }

    #[test]
    fn token_bucket_allows_a_burst_then_refuses() {
        let t = TenantState::new(
            "t",
            Limits {
                requests_per_second: Some(1.0),
                burst: Some(3.0),
                ..Limits::default()
            },
        );
        for _ in 0..3 {
            t.admit(0, &mut guard()).unwrap();
        }
        let err = t.admit(0, &mut guard()).unwrap_err();
        assert!(err.contains("requestsPerSecond"), "{err}");
    }

    #[test]
    fn in_flight_permits_return_with_the_guard() {
        let t = TenantState::new(
            "t",
            Limits {
                max_in_flight: Some(1),
                ..Limits::default()
            },
        );
        let mut first = guard();
        t.admit(0, &mut first).unwrap();
        assert!(t
            .admit(0, &mut guard())
            .unwrap_err()
            .contains("maxInFlight"));
        drop(first);
        t.admit(0, &mut guard()).unwrap();
    }

    #[test]
    fn connections_are_counted_and_released() {
        let t = Arc::new(TenantState::new(
            "t",
            Limits {
                max_connections: Some(1),
                ..Limits::default()
            },
        ));
        let slot = t.connect().unwrap();
        assert!(t.connect().is_err());
        drop(slot);
        assert!(t.connect().is_ok());
    }

    #[test]
    fn payload_cap_names_the_quota() {
        let t = TenantState::new(
            "t",
            Limits {
                max_payload_bytes: Some(10),
                ..Limits::default()
            },
        );
        assert!(t
            .admit(11, &mut guard())
            .unwrap_err()
            .contains("maxPayloadBytes"));
        t.admit(10, &mut guard()).unwrap();
    }
}
