//! The async, pipelining client: one connection, a reader task that matches
//! answers to callers by request id, and typed calls for every opcode.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{
    BulkGetItem, BulkGetReply, BulkGetRequest, BulkSetRequest, DeleteItem, DeleteReply,
    DeleteRequest, ErrorBody, GetRequest, Hello, HelloReply, SetItem, SetReply, SetRequest,
    StateEntry, StatusReply, TransactReply, TransactRequest, TxOp,
};
use mecha_abi::{Header, Opcode, Status, MAX_FRAME_CAP, VERSION};
use mecha_wire::{write_loop, FrameReader, OutFrame};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Deadline of a call that sets none, matching the daemon's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time the client waits beyond a deadline for the daemon's own
/// DEADLINE_EXCEEDED answer before giving up locally.
const GRACE: Duration = Duration::from_secs(1);
/// Frames queued for the writer before callers wait.
const WRITE_QUEUE: usize = 1024;

type Answer = Result<(Status, Bytes), Error>;

struct Shared {
    pending: Mutex<Pending>,
}

struct Pending {
    open: Option<String>,
    waiting: HashMap<u32, oneshot::Sender<Answer>>,
}

/// Options of a state write.
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    /// Write only if the stored ETag equals this one (first-write-wins).
    pub etag: Option<String>,
    /// Expire the key this long after the write.
    pub ttl: Option<Duration>,
}

/// An async connection to mechad. Cloning shares the connection.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<OutFrame>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
    hello: Arc<HelloReply>,
    timeout: Duration,
}

impl Client {
    /// Connects to the daemon at `path` and negotiates the ABI version.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(wr, rx));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                open: None,
                waiting: HashMap::new(),
            }),
        });
        tokio::spawn(read_answers(
            FrameReader::new(rd, MAX_FRAME_CAP),
            Arc::clone(&shared),
        ));
        let mut client = Self {
            tx,
            shared,
            next_id: Arc::new(AtomicU32::new(1)),
            hello: Arc::new(HelloReply {
                version: VERSION,
                daemon_version: String::new(),
                tenant: String::new(),
                max_frame: 0,
            }),
            timeout: DEFAULT_TIMEOUT,
        };
        let hello = Hello {
            min_version: VERSION,
            max_version: VERSION,
            client: concat!("mecha-client-rust/", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let reply: HelloReply = client.call(Opcode::HELLO, &hello).await?;
        client.hello = Arc::new(reply);
        Ok(client)
    }

    /// A handle whose calls use `timeout` as their deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The tenant the daemon assigned to this connection.
    pub fn tenant(&self) -> &str {
        &self.hello.tenant
    }

    /// The daemon's HELLO answer.
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// Sends one request with raw payload bytes and returns the raw answer.
    /// Typed calls are built on this; it is public for tools and tests.
    pub async fn call_raw(
        &self,
        opcode: Opcode,
        payload: Vec<u8>,
    ) -> Result<(Status, Bytes), Error> {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            // 0 is what the daemon uses for connection-level errors; skip it.
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock();
            if let Some(why) = &pending.open {
                return Err(Error::Closed(why.clone()));
            }
            pending.waiting.insert(id, answer_tx);
        }
        let mut header = Header::request(opcode, id);
        header.deadline_ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        if self.tx.send(OutFrame::new(header, payload)).await.is_err() {
            self.shared.pending.lock().waiting.remove(&id);
            return Err(Error::Closed("the writer stopped".into()));
        }
        match tokio::time::timeout(self.timeout + GRACE, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Closed("the reader stopped".into())),
            Err(_) => {
                self.shared.pending.lock().waiting.remove(&id);
                Err(Error::Timeout(self.timeout))
            }
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        opcode: Opcode,
        request: &Req,
    ) -> Result<Resp, Error> {
        let payload = mecha_abi::encode(request).map_err(|e| Error::Protocol(e.to_string()))?;
        let (status, body) = self.call_raw(opcode, payload).await?;
        if status != Status::Ok {
            let message = mecha_abi::decode::<ErrorBody>(&body)
                .map(|b| b.message)
                .unwrap_or_else(|e| format!("(undecodable error body: {e})"));
            return Err(Error::Status { status, message });
        }
        mecha_abi::decode(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Checks that the daemon answers.
    pub async fn ping(&self) -> Result<(), Error> {
        let (status, _) = self.call_raw(Opcode::PING, Vec::new()).await?;
        match status {
            Status::Ok => Ok(()),
            s => Err(Error::Status {
                status: s,
                message: "ping failed".into(),
            }),
        }
    }

    /// Daemon version, uptime and module states.
    pub async fn status(&self) -> Result<StatusReply, Error> {
        let (status, body) = self.call_raw(Opcode::STATUS, Vec::new()).await?;
        if status != Status::Ok {
            return Err(Error::Status {
                status,
                message: "status failed".into(),
            });
        }
        mecha_abi::decode(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Reads `key` from `store` ("" = the default store); `None` when missing.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<StateEntry>, Error> {
        let req = GetRequest {
            store: store.into(),
            key: key.into(),
        };
        match self.call::<_, StateEntry>(Opcode::STATE_GET, &req).await {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `key`; returns the new ETag.
    pub async fn set(
        &self,
        store: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: SetOptions,
    ) -> Result<String, Error> {
        let req = SetRequest {
            store: store.into(),
            item: SetItem {
                key: key.into(),
                value: value.into(),
                etag: options.etag,
                ttl_ms: options
                    .ttl
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            },
        };
        let reply: SetReply = self.call(Opcode::STATE_SET, &req).await?;
        Ok(reply.etag)
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(
        &self,
        store: &str,
        key: &str,
        etag: Option<String>,
    ) -> Result<bool, Error> {
        let req = DeleteRequest {
            store: store.into(),
            item: DeleteItem {
                key: key.into(),
                etag,
            },
        };
        let reply: DeleteReply = self.call(Opcode::STATE_DELETE, &req).await?;
        Ok(reply.existed)
    }

    /// Reads many keys; one item per key, in order.
    pub async fn bulk_get(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<Vec<BulkGetItem>, Error> {
        let req = BulkGetRequest {
            store: store.into(),
            keys,
        };
        let reply: BulkGetReply = self.call(Opcode::STATE_BULK_GET, &req).await?;
        Ok(reply.items)
    }

    /// Writes many keys atomically; returns their new ETags in order.
    pub async fn bulk_set(&self, store: &str, items: Vec<SetItem>) -> Result<Vec<String>, Error> {
        let req = BulkSetRequest {
            store: store.into(),
            items,
        };
        let reply: TransactReply = self.call(Opcode::STATE_BULK_SET, &req).await?;
        Ok(reply
            .etags
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Applies set/delete operations atomically; per op, the new ETag of a set.
    pub async fn transact(
        &self,
        store: &str,
        ops: Vec<TxOp>,
    ) -> Result<Vec<Option<String>>, Error> {
        let req = TransactRequest {
            store: store.into(),
            ops,
        };
        let reply: TransactReply = self.call(Opcode::STATE_TRANSACT, &req).await?;
        Ok(reply.etags)
    }
}

/// Matches answers to waiting callers until the connection ends, then fails
/// every call still waiting so none hangs.
async fn read_answers(mut reader: FrameReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let why = loop {
        match reader.next().await {
            Ok(Some((header, payload))) => {
                let waiter = shared.pending.lock().waiting.remove(&header.request_id);
                match waiter {
                    Some(w) => {
                        let _ = w.send(Ok((Status::from_code(header.status), payload)));
                    }
                    None if header.request_id == 0 => {
                        let message = mecha_abi::decode::<ErrorBody>(&payload)
                            .map(|b| b.message)
                            .unwrap_or_default();
                        break format!("the daemon reported a connection error: {message}");
                    }
                    None => {}
                }
            }
            Ok(None) => break "the daemon closed the connection".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let waiting: Vec<_> = {
        let mut pending = shared.pending.lock();
        pending.open = Some(why.clone());
        pending.waiting.drain().map(|(_, w)| w).collect()
    };
    for w in waiting {
        let _ = w.send(Err(Error::Closed(why.clone())));
    }
}
