//! The opcode table: the "syscall numbers" of the ABI.
//!
//! An opcode is a `u16`; its high byte names the capability family (and so the
//! module that serves it), its low byte the operation within the family.

/// A raw opcode as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u16);

/// Capability families, the high byte of an opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Answered by the daemon itself: HELLO, PING, STATUS.
    Control,
    /// Key/value state with ETags, TTLs and transactions (`mecha-mod-state`).
    State,
    /// Publish/subscribe messaging (`mecha-mod-pubsub`).
    PubSub,
    /// Distributed locks with fencing tokens (`mecha-mod-lock`).
    Lock,
    /// Strictly increasing id sequences (`mecha-mod-sequencer`).
    Sequencer,
    /// Configuration items with change watches (`mecha-mod-config`).
    Configuration,
    /// Secrets from files and the environment (`mecha-mod-secrets`).
    Secrets,
    /// App-to-app service invocation (`mecha-mod-invoke`).
    Invoke,
    /// Input and output bindings to outside systems (`mecha-mod-bindings`).
    Bindings,
    /// Internal frames between the daemon and a module; never valid from an app.
    Link,
    /// Mecha-to-mecha frames between the invoke modules of two nodes (TCP);
    /// never valid from an app.
    Peer,
    /// A family byte that this version does not define.
    Unknown(u8),
}

impl Family {
    /// The family byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Family::Control => 0x00,
            Family::State => 0x01,
            Family::PubSub => 0x02,
            Family::Lock => 0x03,
            Family::Sequencer => 0x04,
            Family::Configuration => 0x05,
            Family::Secrets => 0x06,
            Family::Invoke => 0x07,
            Family::Bindings => 0x08,
            Family::Link => 0xF0,
            Family::Peer => 0xF1,
            Family::Unknown(b) => b,
        }
    }

    /// The module name serving the family, as in `mechactl status` and in the
    /// module binary `mecha-mod-<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Control => "control",
            Family::State => "state",
            Family::PubSub => "pubsub",
            Family::Lock => "lock",
            Family::Sequencer => "sequencer",
            Family::Configuration => "config",
            Family::Secrets => "secrets",
            Family::Invoke => "invoke",
            Family::Bindings => "bindings",
            Family::Link => "link",
            Family::Peer => "peer",
            Family::Unknown(_) => "unknown",
        }
    }

    /// Maps a family byte back to a family.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Family::Control,
            0x01 => Family::State,
            0x02 => Family::PubSub,
            0x03 => Family::Lock,
            0x04 => Family::Sequencer,
            0x05 => Family::Configuration,
            0x06 => Family::Secrets,
            0x07 => Family::Invoke,
            0x08 => Family::Bindings,
            0xF0 => Family::Link,
            0xF1 => Family::Peer,
            other => Family::Unknown(other),
        }
    }
}

impl Opcode {
    /// Version negotiation; must be the first frame on a connection.
    pub const HELLO: Opcode = Opcode(0x0001);
    /// Liveness check answered by the daemon.
    pub const PING: Opcode = Opcode(0x0002);
    /// Daemon version, uptime and per-module state.
    pub const STATUS: Opcode = Opcode(0x0003);
    /// Admin: hot-restart a module, optionally from a new binary (upgrade).
    pub const MODULE_RESTART: Opcode = Opcode(0x0004);
    /// Admin: re-read the configuration and apply the differences.
    pub const RELOAD: Opcode = Opcode(0x0005);
    /// Cancel a stream this connection opened.
    pub const STREAM_CANCEL: Opcode = Opcode(0x0006);
    /// Admin: replace the daemon by a new one that takes over every
    /// connection (SPEC §7.1.7).
    pub const DAEMON_UPGRADE: Opcode = Opcode(0x0007);

    /// Read one key.
    pub const STATE_GET: Opcode = Opcode(0x0101);
    /// Write one key.
    pub const STATE_SET: Opcode = Opcode(0x0102);
    /// Delete one key.
    pub const STATE_DELETE: Opcode = Opcode(0x0103);
    /// Read many keys.
    pub const STATE_BULK_GET: Opcode = Opcode(0x0104);
    /// Write many keys atomically.
    pub const STATE_BULK_SET: Opcode = Opcode(0x0105);
    /// Apply several set/delete operations atomically.
    pub const STATE_TRANSACT: Opcode = Opcode(0x0106);

    /// Publish a message to a topic.
    pub const PUBSUB_PUBLISH: Opcode = Opcode(0x0201);
    /// Open a stream of deliveries from a topic for a consumer group.
    pub const PUBSUB_SUBSCRIBE: Opcode = Opcode(0x0202);
    /// Acknowledge (or negatively acknowledge) deliveries.
    pub const PUBSUB_ACK: Opcode = Opcode(0x0203);

    /// Acquire a lock (optionally waiting), returning a fencing token.
    pub const LOCK_TRY_LOCK: Opcode = Opcode(0x0301);
    /// Release a lock held by an owner.
    pub const LOCK_UNLOCK: Opcode = Opcode(0x0302);
    /// Extend the lease of a held lock.
    pub const LOCK_EXTEND: Opcode = Opcode(0x0303);

    /// Allocate the next id(s) of a sequence.
    pub const SEQ_NEXT: Opcode = Opcode(0x0401);

    /// Read configuration items.
    pub const CONFIG_GET: Opcode = Opcode(0x0501);
    /// Open a stream of configuration changes.
    pub const CONFIG_SUBSCRIBE: Opcode = Opcode(0x0502);
    /// Admin: write configuration items to a writable store.
    pub const CONFIG_SET: Opcode = Opcode(0x0503);

    /// Read one secret.
    pub const SECRET_GET: Opcode = Opcode(0x0601);
    /// Read every secret the tenant may see in a store.
    pub const SECRET_BULK_GET: Opcode = Opcode(0x0602);

    /// Serve an app id: opens the registration stream.
    pub const INVOKE_REGISTER: Opcode = Opcode(0x0701);
    /// Call a method of an app by app id.
    pub const INVOKE: Opcode = Opcode(0x0702);
    /// List the app ids reachable from this node.
    pub const INVOKE_APPS: Opcode = Opcode(0x0703);
    /// Daemon → app (a request the app answers): one call for a registration.
    pub const INVOKE_CALL: Opcode = Opcode(0x0704);

    /// Run an operation on an output binding.
    pub const BINDING_INVOKE: Opcode = Opcode(0x0801);
    /// Open a stream of an input binding's events.
    pub const BINDING_SUBSCRIBE: Opcode = Opcode(0x0802);
    /// Acknowledge (or negatively acknowledge) input binding events.
    pub const BINDING_ACK: Opcode = Opcode(0x0803);

    /// Daemon → module: configuration handshake.
    pub const LINK_HELLO: Opcode = Opcode(0xF001);
    /// Daemon → module: health ping.
    pub const LINK_PING: Opcode = Opcode(0xF002);
    /// Daemon → module: stop taking work, finish in-flight requests.
    pub const LINK_DRAIN: Opcode = Opcode(0xF003);
    /// Daemon → module (no answer): end the stream whose id is the request id.
    pub const LINK_CANCEL: Opcode = Opcode(0xF004);
    /// Module → daemon: deliver a request to the connection owning a stream.
    pub const LINK_DELIVER: Opcode = Opcode(0xF005);
    /// Module → daemon (no answer): grant a direct route for later calls.
    pub const LINK_ROUTE: Opcode = Opcode(0xF006);
    /// Module → daemon (no answer): revoke direct routes.
    pub const LINK_UNROUTE: Opcode = Opcode(0xF007);

    /// Peer ↔ peer: first frame of a peer link, each way.
    pub const PEER_HELLO: Opcode = Opcode(0xF101);
    /// Peer → peer (never answered): the app ids the sender serves.
    pub const PEER_ANNOUNCE: Opcode = Opcode(0xF102);
    /// Peer → peer: one call for an app the receiver serves.
    pub const PEER_INVOKE: Opcode = Opcode(0xF103);

    /// The capability family (high byte).
    pub fn family(self) -> Family {
        Family::from_byte((self.0 >> 8) as u8)
    }

    /// True for opcodes only admins may use (the daemon checks before routing).
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Opcode::MODULE_RESTART | Opcode::RELOAD | Opcode::CONFIG_SET | Opcode::DAEMON_UPGRADE
        )
    }

    /// True for requests whose OK answer may open a server-push stream
    /// (SPEC §2.3): subscriptions, watches and invoke registrations.
    pub fn opens_stream(self) -> bool {
        matches!(
            self,
            Opcode::PUBSUB_SUBSCRIBE
                | Opcode::CONFIG_SUBSCRIBE
                | Opcode::INVOKE_REGISTER
                | Opcode::BINDING_SUBSCRIBE
        )
    }

    /// True for requests the daemon sends again to a module's next instance
    /// when the instance serving them dies with them in flight (SPEC §5.1):
    /// reads, and SEQ_NEXT, whose ids may have gaps. Sending one twice
    /// changes nothing an application can tell from answering it once.
    pub fn is_replayable(self) -> bool {
        matches!(
            self,
            Opcode::STATE_GET
                | Opcode::STATE_BULK_GET
                | Opcode::SEQ_NEXT
                | Opcode::CONFIG_GET
                | Opcode::SECRET_GET
                | Opcode::SECRET_BULK_GET
                | Opcode::INVOKE_APPS
        )
    }

    /// The symbolic name of a defined opcode, for logs and errors.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Opcode::HELLO => "HELLO",
            Opcode::PING => "PING",
            Opcode::STATUS => "STATUS",
            Opcode::MODULE_RESTART => "MODULE_RESTART",
            Opcode::RELOAD => "RELOAD",
            Opcode::DAEMON_UPGRADE => "DAEMON_UPGRADE",
            Opcode::STREAM_CANCEL => "STREAM_CANCEL",
            Opcode::STATE_GET => "STATE_GET",
            Opcode::STATE_SET => "STATE_SET",
            Opcode::STATE_DELETE => "STATE_DELETE",
            Opcode::STATE_BULK_GET => "STATE_BULK_GET",
            Opcode::STATE_BULK_SET => "STATE_BULK_SET",
            Opcode::STATE_TRANSACT => "STATE_TRANSACT",
            Opcode::PUBSUB_PUBLISH => "PUBSUB_PUBLISH",
            Opcode::PUBSUB_SUBSCRIBE => "PUBSUB_SUBSCRIBE",
            Opcode::PUBSUB_ACK => "PUBSUB_ACK",
            Opcode::LOCK_TRY_LOCK => "LOCK_TRY_LOCK",
            Opcode::LOCK_UNLOCK => "LOCK_UNLOCK",
            Opcode::LOCK_EXTEND => "LOCK_EXTEND",
            Opcode::SEQ_NEXT => "SEQ_NEXT",
            Opcode::CONFIG_GET => "CONFIG_GET",
            Opcode::CONFIG_SUBSCRIBE => "CONFIG_SUBSCRIBE",
            Opcode::CONFIG_SET => "CONFIG_SET",
            Opcode::SECRET_GET => "SECRET_GET",
            Opcode::SECRET_BULK_GET => "SECRET_BULK_GET",
            Opcode::INVOKE_REGISTER => "INVOKE_REGISTER",
            Opcode::INVOKE => "INVOKE",
            Opcode::INVOKE_APPS => "INVOKE_APPS",
            Opcode::INVOKE_CALL => "INVOKE_CALL",
            Opcode::BINDING_INVOKE => "BINDING_INVOKE",
            Opcode::BINDING_SUBSCRIBE => "BINDING_SUBSCRIBE",
            Opcode::BINDING_ACK => "BINDING_ACK",
            Opcode::LINK_HELLO => "LINK_HELLO",
            Opcode::LINK_PING => "LINK_PING",
            Opcode::LINK_DRAIN => "LINK_DRAIN",
            Opcode::LINK_CANCEL => "LINK_CANCEL",
            Opcode::LINK_DELIVER => "LINK_DELIVER",
            Opcode::LINK_ROUTE => "LINK_ROUTE",
            Opcode::LINK_UNROUTE => "LINK_UNROUTE",
            Opcode::PEER_HELLO => "PEER_HELLO",
            Opcode::PEER_ANNOUNCE => "PEER_ANNOUNCE",
            Opcode::PEER_INVOKE => "PEER_INVOKE",
            _ => return None,
        })
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:04x})", self.0),
            None => write!(f, "0x{:04x}", self.0),
        }
    }
}
