//! A module link's streams: pushes routed to the connection that opened
//! each stream, cancellations, resets, and taking them off the link for a
//! daemon hand-over.

use std::sync::Arc;

use bytes::Bytes;
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::{OutFrame, Unflushed};

use super::{Link, StreamRoute};
use crate::answer::{error_body, ConnOut, PUSH_BUDGET};

/// An open stream taken off a link for a daemon hand-over: what the next
/// daemon needs to open it again for the same connection.
pub struct ExportedStream {
    /// The connection that opened it (`ConnHandle::id`).
    pub conn_id: u64,
    /// The stream id the application knows.
    pub stream_id: u32,
    /// The opcode that opened it.
    pub opcode: Opcode,
    /// The opening request's payload; `None` when it was too large to keep,
    /// and the stream can only be reset.
    pub opening: Option<Bytes>,
}

impl Link {
    /// Adds the streams open on this link to `counts`, by tenant.
    pub fn count_streams(&self, counts: &mut std::collections::HashMap<Bytes, usize>) {
        for route in self.table.lock().streams.values() {
            *counts.entry(route.tenant.clone()).or_default() += 1;
        }
    }

    /// Takes every open, uncancelled stream off the link without ending it
    /// for its application, and drops the direct routes: the daemon hands
    /// the streams' connections to its successor, which opens them again on
    /// its own module instances. Pushes the module sends from now on find
    /// no route and are dropped (pub/sub redelivers what was not acked).
    pub fn export_streams(&self) -> Vec<ExportedStream> {
        let mut table = self.table.lock();
        table.routes.revoke("");
        table
            .streams
            .drain()
            .filter(|(_, r)| !r.cancelled)
            .map(|(_, r)| ExportedStream {
                conn_id: r.conn.id,
                stream_id: r.stream_id,
                opcode: r.opcode,
                opening: r.opening,
            })
            .collect()
    }

    /// Removes stream `id`'s route, and the direct routes to it.
    pub(super) fn remove_stream(&self, id: u32) -> Option<StreamRoute> {
        let mut table = self.table.lock();
        table.routes.drop_stream(id);
        table.streams.remove(&id)
    }

    /// Routes a push to its stream's connection.
    ///
    /// Slow consumers: a push that finds the connection's push budget spent
    /// (`PUSH_BUDGET` pushes queued and not yet written, because the
    /// application does not read) is dropped rather than queued, so memory
    /// stays bounded; and since the stream has then lost data, it is ended at
    /// once with RESOURCE_EXHAUSTED (and cancelled in the module), telling the
    /// client to subscribe again rather than silently missing pushes — a
    /// stream carrying state (configuration) would otherwise keep a stale
    /// value forever when the last pushes are the ones dropped. The END frame
    /// is always delivered, waiting for room if need be, because it is what
    /// tells the client why its stream stopped.
    pub(super) fn push(&self, header: Header, payload: Bytes, unflushed: &mut Unflushed<ConnOut>) {
        let end = header.flags.is_end();
        let route = if end {
            self.remove_stream(header.request_id)
        } else {
            self.table.lock().streams.get(&header.request_id).cloned()
        };
        let Some(route) = route else {
            return;
        };
        let mut out = header;
        out.request_id = route.stream_id;
        out.opcode = route.opcode;
        out.ext = 0;
        if end {
            send_end(route, out, payload);
            return;
        }
        let room = Arc::clone(&route.conn.pushes)
            .try_acquire_owned()
            .ok()
            .and_then(|permit| Some((permit, route.conn.budget.take(payload.len()).ok()?)));
        let Some((permit, bytes)) = room else {
            tracing::debug!(module = %self.module, stream = route.stream_id, "push dropped: the client is not reading; ending the stream");
            if self.remove_stream(header.request_id).is_some() {
                self.cancel_link_stream(header.request_id);
                let message = format!(
                    "stream {} ended: the application did not read its pushes (at most {} of them, and a budget of bytes, wait on a connection); resubscribe",
                    route.stream_id, PUSH_BUDGET
                );
                let header = Header::end(route.opcode, route.stream_id, Status::ResourceExhausted);
                send_end(route, header, error_body(&message));
            }
            return;
        };
        let delivered = route
            .conn
            .tx
            .push(OutFrame::guarded(
                out,
                Bytes::new(),
                payload,
                ConnOut::new(permit).holding(bytes),
            ))
            .is_ok();
        if delivered {
            unflushed.add(&route.conn.tx);
        } else {
            // The application is gone; stop the stream at its source.
            self.remove_stream(header.request_id);
            self.cancel_link_stream(header.request_id);
        }
    }

    /// Asks the module to end stream `link_id` (one-way; the END follows).
    pub(super) fn cancel_link_stream(&self, link_id: u32) {
        // Not bounded by the link's queue: cancellations are few (one per
        // stream) and must not wait behind requests.
        let frame = OutFrame::new(Header::request(Opcode::LINK_CANCEL, link_id), Bytes::new());
        let _ = self.tx.send(frame);
    }

    /// Cancels the stream `stream_id` of connection `conn_id`; false if this
    /// link has no such stream.
    pub fn cancel_stream(&self, conn_id: u64, stream_id: u32) -> bool {
        let link_id = self
            .table
            .lock()
            .streams
            .iter_mut()
            .find(|(_, r)| r.conn.id == conn_id && r.stream_id == stream_id)
            .map(|(id, r)| {
                r.cancelled = true;
                *id
            });
        // A cancelled registration routes no call from now on.
        if let Some(id) = link_id {
            self.table.lock().routes.drop_stream(id);
        }
        match link_id {
            Some(id) => {
                self.cancel_link_stream(id);
                true
            }
            None => false,
        }
    }

    /// Cancels every stream of a connection that closed.
    pub fn cancel_conn_streams(&self, conn_id: u64) {
        let ids: Vec<u32> = {
            let mut table = self.table.lock();
            let ids: Vec<u32> = table
                .streams
                .iter()
                .filter(|(_, r)| r.conn.id == conn_id)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                table.streams.remove(id);
                table.routes.drop_stream(*id);
            }
            ids
        };
        for id in ids {
            self.cancel_link_stream(id);
        }
    }

    /// Ends every open stream with UNAVAILABLE, telling clients to
    /// resubscribe (to the next instance, after a crash or a hot restart).
    pub fn reset_streams(&self, reason: &str) {
        let routes: Vec<StreamRoute> = {
            let mut table = self.table.lock();
            table.routes.revoke("");
            table.streams.drain().map(|(_, r)| r).collect()
        };
        let body = error_body(&format!(
            "stream reset: module {}: {reason}; resubscribe",
            self.module
        ));
        for r in routes {
            let header = Header::end(r.opcode, r.stream_id, Status::Unavailable);
            send_end(r, header, body.clone());
        }
    }
}

/// Queues the END frame of `route`'s stream. It takes a push permit like any
/// push, but waits for one (in a task) instead of being dropped when the
/// budget is spent: the END is what tells the client why its stream stopped.
pub(super) fn send_end(route: StreamRoute, header: Header, body: Bytes) {
    match Arc::clone(&route.conn.pushes).try_acquire_owned() {
        Ok(permit) => {
            let _ = route.conn.tx.send(OutFrame::guarded(
                header,
                Bytes::new(),
                body,
                ConnOut::new(permit),
            ));
        }
        Err(_) => {
            tokio::spawn(async move {
                if let Ok(permit) = Arc::clone(&route.conn.pushes).acquire_owned().await {
                    let _ = route.conn.tx.send(OutFrame::guarded(
                        header,
                        Bytes::new(),
                        body,
                        ConnOut::new(permit),
                    ));
                }
            });
        }
    }
}
