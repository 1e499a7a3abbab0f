//! The byte budget of what the daemon queues for an application and has not
//! written yet: per connection and per tenant. Permits count frames; this
//! counts their bytes, so an application that does not read cannot make the
//! daemon hold more than its budget, however large its answers are.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes one connection may have queued unwritten, by default: two frames of
/// the largest size a module may send, so one such answer always fits.
pub const CONNECTION_BYTES: usize = 2 * mecha_abi::MAX_FRAME_CAP as usize;
/// Bytes all of one tenant's connections may have queued, by default.
pub const TENANT_BYTES: usize = 4 * CONNECTION_BYTES;
/// Frames smaller than this are not counted: the connection's permits
/// already bound how many of them wait (in-flight plus push permits), so
/// the hot path of small answers pays nothing here.
const SMALL: usize = 4096;

/// The budgets a connection's queued output draws on.
#[derive(Clone)]
pub struct OutputBudget {
    conn: Arc<Semaphore>,
    tenant: Arc<Semaphore>,
}

/// Bytes held from both budgets until the frame carrying them is written.
#[derive(Debug)]
pub struct Held {
    _conn: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

impl OutputBudget {
    /// A connection budget of `conn_bytes` within the tenant's `tenant`.
    pub fn new(conn_bytes: usize, tenant: Arc<Semaphore>) -> Self {
        Self {
            conn: Arc::new(Semaphore::new(conn_bytes.min(Semaphore::MAX_PERMITS))),
            tenant,
        }
    }

    /// A tenant's budget of `bytes`.
    pub fn tenant(bytes: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)))
    }

    /// Takes `len` bytes from both budgets, or says which is spent. Small
    /// frames take nothing (`Ok(None)`).
    pub fn take(&self, len: usize) -> Result<Option<Held>, Spent> {
        if len < SMALL {
            return Ok(None);
        }
        let n = u32::try_from(len).map_err(|_| Spent::Connection)?;
        let conn = Arc::clone(&self.conn)
            .try_acquire_many_owned(n)
            .map_err(|_| Spent::Connection)?;
        let tenant = Arc::clone(&self.tenant)
            .try_acquire_many_owned(n)
            .map_err(|_| Spent::Tenant)?;
        Ok(Some(Held {
            _conn: conn,
            _tenant: tenant,
        }))
    }
}

/// Which budget had no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Spent {
    /// The connection's own.
    #[error("the connection has too many bytes queued unread")]
    Connection,
    /// The tenant's, over all its connections.
    #[error("the tenant's connections have too many bytes queued unread")]
    Tenant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_return_when_the_frame_is_written_and_small_frames_are_free() {
        let tenant = OutputBudget::tenant(3 * SMALL);
        let a = OutputBudget::new(2 * SMALL, Arc::clone(&tenant));
        let b = OutputBudget::new(2 * SMALL, tenant);
        assert!(a.take(10).unwrap().is_none());
        let first = a.take(2 * SMALL).unwrap();
        assert_eq!(a.take(SMALL).unwrap_err(), Spent::Connection);
        // The tenant has one SMALL left over both connections.
        let second = b.take(SMALL).unwrap();
        assert_eq!(b.take(SMALL).unwrap_err(), Spent::Tenant);
        drop(first);
        drop(second);
        assert!(a.take(2 * SMALL).unwrap().is_some());
    }
}
