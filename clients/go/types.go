package mecha

import "strconv"

// The payload types of SPEC §4.1, named exactly as there so that a reader can
// hold this file next to the SPEC. Fields are in wire order. Option<T> is a
// pointer (nil = None), Vec<T> a slice (decoded as nil when empty), bytes a
// []byte. Each type's encode and decode methods are the whole of its wire
// format.

// Pair is the tuple (String, String): a secret's (key, value) or a component's
// (name, value) metadata entry.
type Pair struct {
	Key   string
	Value string
}

// ---- control family ----

// ErrorBody is the payload of every non-OK response (SPEC §5).
type ErrorBody struct {
	Message string // for humans and logs; never parse it
}

func (m *ErrorBody) encode(e *encoder) { e.str(m.Message) }
func (m *ErrorBody) decode(d *decoder) { m.Message = d.str() }

// Hello is the HELLO request (SPEC §7.1.1).
type Hello struct {
	MinVersion uint8  // lowest ABI version the client speaks
	MaxVersion uint8  // highest ABI version the client speaks
	Client     string // client name and version, for the daemon's logs
}

func (m *Hello) encode(e *encoder) { e.u8(m.MinVersion); e.u8(m.MaxVersion); e.str(m.Client) }
func (m *Hello) decode(d *decoder) { m.MinVersion = d.u8(); m.MaxVersion = d.u8(); m.Client = d.str() }

// HelloReply is the OK answer to HELLO.
type HelloReply struct {
	Version       uint8  // the version agreed for the connection
	DaemonVersion string // the daemon's software version
	Tenant        string // the tenant the caller was mapped to (SPEC §6.10)
	MaxFrame      uint32 // the largest payload the daemon accepts on this connection
}

func (m *HelloReply) encode(e *encoder) {
	e.u8(m.Version)
	e.str(m.DaemonVersion)
	e.str(m.Tenant)
	e.u32(m.MaxFrame)
}

func (m *HelloReply) decode(d *decoder) {
	m.Version = d.u8()
	m.DaemonVersion = d.str()
	m.Tenant = d.str()
	m.MaxFrame = d.u32()
}

// StatusReply is the OK answer to STATUS (SPEC §7.1.3).
type StatusReply struct {
	DaemonVersion string
	PID           uint32
	UptimeMs      uint64
	Modules       []ModuleStatus // one per module, in start order
}

func (m *StatusReply) encode(e *encoder) {
	e.str(m.DaemonVersion)
	e.u32(m.PID)
	e.u64(m.UptimeMs)
	e.u64(uint64(len(m.Modules)))
	for i := range m.Modules {
		m.Modules[i].encode(e)
	}
}

func (m *StatusReply) decode(d *decoder) {
	m.DaemonVersion = d.str()
	m.PID = d.u32()
	m.UptimeMs = d.u64()
	if n := d.count(32); n > 0 {
		m.Modules = make([]ModuleStatus, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Modules[i].decode(d)
		}
	}
}

// ModuleStatus describes one module in a StatusReply.
type ModuleStatus struct {
	Name       string
	PID        uint32 // 0 when no instance runs
	State      string // starting, running, restarting, backoff or stopped
	Restarts   uint32
	Components []string
}

func (m *ModuleStatus) encode(e *encoder) {
	e.str(m.Name)
	e.u32(m.PID)
	e.str(m.State)
	e.u32(m.Restarts)
	e.strs(m.Components)
}

func (m *ModuleStatus) decode(d *decoder) {
	m.Name = d.str()
	m.PID = d.u32()
	m.State = d.str()
	m.Restarts = d.u32()
	m.Components = d.strs()
}

// ModuleRestartRequest is the MODULE_RESTART request (SPEC §7.1.4).
type ModuleRestartRequest struct {
	Module string
	Binary *string // nil: the current executable; else an absolute path (an upgrade)
}

func (m *ModuleRestartRequest) encode(e *encoder) { e.str(m.Module); e.optStr(m.Binary) }
func (m *ModuleRestartRequest) decode(d *decoder) { m.Module = d.str(); m.Binary = d.optStr() }

// ModuleRestartReply is the OK answer to MODULE_RESTART.
type ModuleRestartReply struct {
	PID uint32 // the new instance's process id
}

func (m *ModuleRestartReply) encode(e *encoder) { e.u32(m.PID) }
func (m *ModuleRestartReply) decode(d *decoder) { m.PID = d.u32() }

// DaemonUpgradeRequest is the DAEMON_UPGRADE request (SPEC §7.1.7).
type DaemonUpgradeRequest struct {
	Binary *string // nil: the executable the daemon was started from; else an absolute path
}

func (m *DaemonUpgradeRequest) encode(e *encoder) { e.optStr(m.Binary) }
func (m *DaemonUpgradeRequest) decode(d *decoder) { m.Binary = d.optStr() }

// DaemonUpgradeReply is the OK answer to DAEMON_UPGRADE.
type DaemonUpgradeReply struct {
	OldPID uint32 // the daemon that hands over
	NewPID uint32 // the daemon taking over
}

func (m *DaemonUpgradeReply) encode(e *encoder) { e.u32(m.OldPID); e.u32(m.NewPID) }
func (m *DaemonUpgradeReply) decode(d *decoder) { m.OldPID = d.u32(); m.NewPID = d.u32() }

// ReloadReply is the OK answer to RELOAD (SPEC §7.1.5): module names by outcome.
type ReloadReply struct {
	Started   []string
	Restarted []string
	Stopped   []string
	Unchanged []string
}

func (m *ReloadReply) encode(e *encoder) {
	e.strs(m.Started)
	e.strs(m.Restarted)
	e.strs(m.Stopped)
	e.strs(m.Unchanged)
}

func (m *ReloadReply) decode(d *decoder) {
	m.Started = d.strs()
	m.Restarted = d.strs()
	m.Stopped = d.strs()
	m.Unchanged = d.strs()
}

// StreamCancel is the STREAM_CANCEL request (SPEC §7.1.6).
type StreamCancel struct {
	StreamID uint32 // the request id of the request that opened the stream
}

func (m *StreamCancel) encode(e *encoder) { e.u32(m.StreamID) }
func (m *StreamCancel) decode(d *decoder) { m.StreamID = d.u32() }

// ---- state family ----

// StateEntry is a live value and its ETag.
type StateEntry struct {
	Value []byte
	ETag  string
}

func (m *StateEntry) encode(e *encoder) { e.bytes(m.Value); e.str(m.ETag) }
func (m *StateEntry) decode(d *decoder) { m.Value = d.bytes(); m.ETag = d.str() }

// SetItem is one write. It is also a TxOp (variant 0, Set).
type SetItem struct {
	Key   string
	Value []byte
	ETag  *string // if set, write only if the stored ETag equals it
	TTLMs *uint64 // if set (> 0), the key expires this many ms after the write
}

func (m *SetItem) encode(e *encoder) {
	e.str(m.Key)
	e.bytes(m.Value)
	e.optStr(m.ETag)
	e.optU64(m.TTLMs)
}
func (m *SetItem) decode(d *decoder) {
	m.Key = d.str()
	m.Value = d.bytes()
	m.ETag = d.optStr()
	m.TTLMs = d.optU64()
}

// DeleteItem is one delete. It is also a TxOp (variant 1, Delete).
type DeleteItem struct {
	Key  string
	ETag *string // if set, delete only if the stored ETag equals it
}

func (m *DeleteItem) encode(e *encoder) { e.str(m.Key); e.optStr(m.ETag) }
func (m *DeleteItem) decode(d *decoder) { m.Key = d.str(); m.ETag = d.optStr() }

// GetRequest is the STATE_GET request. Store "" is the default store.
type GetRequest struct {
	Store string
	Key   string
}

func (m *GetRequest) encode(e *encoder) { e.str(m.Store); e.str(m.Key) }
func (m *GetRequest) decode(d *decoder) { m.Store = d.str(); m.Key = d.str() }

// SetRequest is the STATE_SET request.
type SetRequest struct {
	Store string
	Item  SetItem
}

func (m *SetRequest) encode(e *encoder) { e.str(m.Store); m.Item.encode(e) }
func (m *SetRequest) decode(d *decoder) { m.Store = d.str(); m.Item.decode(d) }

// SetReply is the OK answer to STATE_SET.
type SetReply struct {
	ETag string // the key's new ETag
}

func (m *SetReply) encode(e *encoder) { e.str(m.ETag) }
func (m *SetReply) decode(d *decoder) { m.ETag = d.str() }

// DeleteRequest is the STATE_DELETE request.
type DeleteRequest struct {
	Store string
	Item  DeleteItem
}

func (m *DeleteRequest) encode(e *encoder) { e.str(m.Store); m.Item.encode(e) }
func (m *DeleteRequest) decode(d *decoder) { m.Store = d.str(); m.Item.decode(d) }

// DeleteReply is the OK answer to STATE_DELETE.
type DeleteReply struct {
	Existed bool // whether a live key was removed
}

func (m *DeleteReply) encode(e *encoder) { e.boolean(m.Existed) }
func (m *DeleteReply) decode(d *decoder) { m.Existed = d.boolean() }

// BulkGetRequest is the STATE_BULK_GET request.
type BulkGetRequest struct {
	Store string
	Keys  []string
}

func (m *BulkGetRequest) encode(e *encoder) { e.str(m.Store); e.strs(m.Keys) }
func (m *BulkGetRequest) decode(d *decoder) { m.Store = d.str(); m.Keys = d.strs() }

// BulkGetItem is one key's answer in a BulkGetReply.
type BulkGetItem struct {
	Key   string      // echoed
	Entry *StateEntry // nil when the key is missing or expired
}

func (m *BulkGetItem) encode(e *encoder) {
	e.str(m.Key)
	if m.Entry == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	m.Entry.encode(e)
}

func (m *BulkGetItem) decode(d *decoder) {
	m.Key = d.str()
	if d.tag() {
		m.Entry = &StateEntry{}
		m.Entry.decode(d)
	}
}

// BulkGetReply is the OK answer to STATE_BULK_GET: one item per distinct
// requested key, in request order (a repeated key is answered once).
type BulkGetReply struct {
	Items []BulkGetItem
}

func (m *BulkGetReply) encode(e *encoder) {
	e.u64(uint64(len(m.Items)))
	for i := range m.Items {
		m.Items[i].encode(e)
	}
}

func (m *BulkGetReply) decode(d *decoder) {
	if n := d.count(9); n > 0 {
		m.Items = make([]BulkGetItem, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Items[i].decode(d)
		}
	}
}

// BulkSetRequest is the STATE_BULK_SET request (atomic).
type BulkSetRequest struct {
	Store string
	Items []SetItem
}

func (m *BulkSetRequest) encode(e *encoder) {
	e.str(m.Store)
	e.u64(uint64(len(m.Items)))
	for i := range m.Items {
		m.Items[i].encode(e)
	}
}

func (m *BulkSetRequest) decode(d *decoder) {
	m.Store = d.str()
	if n := d.count(18); n > 0 {
		m.Items = make([]SetItem, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Items[i].decode(d)
		}
	}
}

// TxOp is one operation of a transaction: a SetItem (variant 0) or a
// DeleteItem (variant 1), as a value or a non-nil pointer. Decoding yields
// values.
type TxOp interface{ isTxOp() }

func (SetItem) isTxOp()    {}
func (DeleteItem) isTxOp() {}

// TransactRequest is the STATE_TRANSACT request (atomic). Every op must be a
// non-nil SetItem or DeleteItem; Marshal panics on a nil op, and
// Client.Transact checks for one first.
type TransactRequest struct {
	Store string
	Ops   []TxOp
}

func (m *TransactRequest) encode(e *encoder) {
	e.str(m.Store)
	e.u64(uint64(len(m.Ops)))
	for _, op := range m.Ops {
		switch o := op.(type) {
		case SetItem:
			e.u32(0)
			o.encode(e)
		case *SetItem:
			e.u32(0)
			o.encode(e)
		case DeleteItem:
			e.u32(1)
			o.encode(e)
		case *DeleteItem:
			e.u32(1)
			o.encode(e)
		default:
			panic("mecha: TransactRequest holds a nil TxOp")
		}
	}
}

func (m *TransactRequest) decode(d *decoder) {
	m.Store = d.str()
	n := d.count(13) // the smallest op: variant 4 + DeleteItem 9
	if n == 0 {
		return
	}
	m.Ops = make([]TxOp, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		switch d.variant("TxOp", 2) {
		case 0:
			var s SetItem
			s.decode(d)
			m.Ops = append(m.Ops, s)
		case 1:
			var x DeleteItem
			x.decode(d)
			m.Ops = append(m.Ops, x)
		}
	}
}

// TransactReply is the OK answer to STATE_TRANSACT and STATE_BULK_SET: one
// entry per operation, in order (nil for a Delete).
type TransactReply struct {
	ETags []*string
}

func (m *TransactReply) encode(e *encoder) {
	e.u64(uint64(len(m.ETags)))
	for _, t := range m.ETags {
		e.optStr(t)
	}
}

func (m *TransactReply) decode(d *decoder) {
	if n := d.count(1); n > 0 {
		m.ETags = make([]*string, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.ETags = append(m.ETags, d.optStr())
		}
	}
}

// ---- pubsub family (SPEC §7.3) ----

// PublishRequest is the PUBSUB_PUBLISH request.
type PublishRequest struct {
	Store       string
	Topic       string
	Data        []byte
	ContentType string // media type of Data; "" = application/octet-stream
	Metadata    []Pair // delivered with the message; partitionKey orders delivery
	Raw         bool   // true: no CloudEvents envelope
}

func (m *PublishRequest) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Topic)
	e.bytes(m.Data)
	e.str(m.ContentType)
	e.pairs(m.Metadata)
	e.boolean(m.Raw)
}

func (m *PublishRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Topic = d.str()
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
	m.Raw = d.boolean()
}

// PublishReply is the OK answer to PUBSUB_PUBLISH.
type PublishReply struct {
	ID     string // the CloudEvents id
	Offset uint64 // the message's position in the topic (>= 1)
}

func (m *PublishReply) encode(e *encoder) { e.str(m.ID); e.u64(m.Offset) }
func (m *PublishReply) decode(d *decoder) { m.ID = d.str(); m.Offset = d.u64() }

// SubscribeRequest is the PUBSUB_SUBSCRIBE request, which opens a stream of
// Delivery pushes.
type SubscribeRequest struct {
	Store         string
	Topic         string
	Group         string // "" = "default"
	MaxInFlight   uint32 // most unacknowledged deliveries; 0 = 64, at most 1024
	AckDeadlineMs uint32 // 0 = the store's default
}

func (m *SubscribeRequest) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Topic)
	e.str(m.Group)
	e.u32(m.MaxInFlight)
	e.u32(m.AckDeadlineMs)
}

func (m *SubscribeRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Topic = d.str()
	m.Group = d.str()
	m.MaxInFlight = d.u32()
	m.AckDeadlineMs = d.u32()
}

// SubscribeReply is the answer that opens a PUBSUB_SUBSCRIBE stream.
type SubscribeReply struct {
	SubscriptionID uint64
	Store          string // the store serving it
	Group          string // the group joined
}

func (m *SubscribeReply) encode(e *encoder) { e.u64(m.SubscriptionID); e.str(m.Store); e.str(m.Group) }
func (m *SubscribeReply) decode(d *decoder) {
	m.SubscriptionID = d.u64()
	m.Store = d.str()
	m.Group = d.str()
}

// Delivery is one message pushed on a PUBSUB_SUBSCRIBE stream. Store, Topic,
// Group, Offset and Attempt identify it for Ack and Nack.
type Delivery struct {
	Store           string
	Topic           string
	Group           string
	Offset          uint64
	Attempt         uint32 // 1 for the first delivery to the group
	ID              string // CloudEvents id
	Source          string // CloudEvents source, mecha://<tenant>; "" when raw
	EventType       string // CloudEvents type; "" when raw
	SpecVersion     string // "1.0"; "" when raw
	DataContentType string
	Time            string // RFC 3339 UTC with milliseconds; "" when raw
	TraceParent     string // W3C traceparent; "" if none
	Data            []byte
	Metadata        []Pair
	Raw             bool
}

func (m *Delivery) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Topic)
	e.str(m.Group)
	e.u64(m.Offset)
	e.u32(m.Attempt)
	e.str(m.ID)
	e.str(m.Source)
	e.str(m.EventType)
	e.str(m.SpecVersion)
	e.str(m.DataContentType)
	e.str(m.Time)
	e.str(m.TraceParent)
	e.bytes(m.Data)
	e.pairs(m.Metadata)
	e.boolean(m.Raw)
}

func (m *Delivery) decode(d *decoder) {
	m.Store = d.str()
	m.Topic = d.str()
	m.Group = d.str()
	m.Offset = d.u64()
	m.Attempt = d.u32()
	m.ID = d.str()
	m.Source = d.str()
	m.EventType = d.str()
	m.SpecVersion = d.str()
	m.DataContentType = d.str()
	m.Time = d.str()
	m.TraceParent = d.str()
	m.Data = d.bytes()
	m.Metadata = d.pairs()
	m.Raw = d.boolean()
}

// AckItem names one delivery to acknowledge.
type AckItem struct {
	Offset  uint64
	Attempt uint32
}

func (m *AckItem) encode(e *encoder) { e.u64(m.Offset); e.u32(m.Attempt) }
func (m *AckItem) decode(d *decoder) { m.Offset = d.u64(); m.Attempt = d.u32() }

// AckRequest is the PUBSUB_ACK request.
type AckRequest struct {
	Store string
	Topic string
	Group string
	Items []AckItem
	Nack  bool // true rejects the deliveries instead
}

func (m *AckRequest) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Topic)
	e.str(m.Group)
	encodeAckItems(e, m.Items)
	e.boolean(m.Nack)
}

func (m *AckRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Topic = d.str()
	m.Group = d.str()
	m.Items = decodeAckItems(d)
	m.Nack = d.boolean()
}

// encodeAckItems writes a Vec<AckItem>, which PUBSUB_ACK and BINDING_ACK
// share.
func encodeAckItems(e *encoder, items []AckItem) {
	e.u64(uint64(len(items)))
	for i := range items {
		items[i].encode(e)
	}
}

// decodeAckItems reads a Vec<AckItem>; an item takes at least 12 bytes, which
// bounds the count before anything is allocated.
func decodeAckItems(d *decoder) []AckItem {
	n := d.count(12)
	if n == 0 {
		return nil
	}
	items := make([]AckItem, n)
	for i := 0; i < n && d.err == nil; i++ {
		items[i].decode(d)
	}
	return items
}

// AckReply is the OK answer to PUBSUB_ACK.
type AckReply struct {
	Applied uint32 // how many items took effect
}

func (m *AckReply) encode(e *encoder) { e.u32(m.Applied) }
func (m *AckReply) decode(d *decoder) { m.Applied = d.u32() }

// ---- lock family ----

// TryLockRequest is the LOCK_TRY_LOCK request (SPEC §7.4.1).
type TryLockRequest struct {
	Store    string
	Resource string
	Owner    string
	TTLMs    uint64 // the lease, > 0
	WaitMs   uint64 // how long to wait for a held lock; 0 = do not wait
}

func (m *TryLockRequest) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Resource)
	e.str(m.Owner)
	e.u64(m.TTLMs)
	e.u64(m.WaitMs)
}

func (m *TryLockRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Resource = d.str()
	m.Owner = d.str()
	m.TTLMs = d.u64()
	m.WaitMs = d.u64()
}

// TryLockReply is the OK answer to LOCK_TRY_LOCK. Not getting the lock is
// not an error: Acquired is false and FencingToken 0.
type TryLockReply struct {
	Acquired     bool
	FencingToken uint64
}

func (m *TryLockReply) encode(e *encoder) { e.boolean(m.Acquired); e.u64(m.FencingToken) }
func (m *TryLockReply) decode(d *decoder) { m.Acquired = d.boolean(); m.FencingToken = d.u64() }

// UnlockStatus is the outcome of LOCK_UNLOCK and LOCK_EXTEND (an enum without
// fields: the u32 index alone).
type UnlockStatus uint32

// The UnlockStatus variants.
const (
	UnlockSuccess       UnlockStatus = 0 // the owner held the lock
	LockDoesNotExist    UnlockStatus = 1 // the lock is free; nothing changed
	LockBelongsToOthers UnlockStatus = 2 // another owner holds it; nothing changed
)

// String returns the SPEC name of the variant.
func (s UnlockStatus) String() string {
	switch s {
	case UnlockSuccess:
		return "Success"
	case LockDoesNotExist:
		return "LockDoesNotExist"
	case LockBelongsToOthers:
		return "LockBelongsToOthers"
	}
	return "UnlockStatus(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// UnlockRequest is the LOCK_UNLOCK request.
type UnlockRequest struct {
	Store    string
	Resource string
	Owner    string
}

func (m *UnlockRequest) encode(e *encoder) { e.str(m.Store); e.str(m.Resource); e.str(m.Owner) }
func (m *UnlockRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Resource = d.str()
	m.Owner = d.str()
}

// UnlockReply is the OK answer to LOCK_UNLOCK.
type UnlockReply struct {
	Status UnlockStatus
}

func (m *UnlockReply) encode(e *encoder) { e.u32(uint32(m.Status)) }
func (m *UnlockReply) decode(d *decoder) { m.Status = UnlockStatus(d.variant("UnlockStatus", 3)) }

// ExtendLockRequest is the LOCK_EXTEND request.
type ExtendLockRequest struct {
	Store    string
	Resource string
	Owner    string
	TTLMs    uint64 // the new lease from now, > 0
}

func (m *ExtendLockRequest) encode(e *encoder) {
	e.str(m.Store)
	e.str(m.Resource)
	e.str(m.Owner)
	e.u64(m.TTLMs)
}

func (m *ExtendLockRequest) decode(d *decoder) {
	m.Store = d.str()
	m.Resource = d.str()
	m.Owner = d.str()
	m.TTLMs = d.u64()
}

// ExtendLockReply is the OK answer to LOCK_EXTEND; FencingToken is the lock's
// unchanged token when Status is UnlockSuccess, else 0.
type ExtendLockReply struct {
	Status       UnlockStatus
	FencingToken uint64
}

func (m *ExtendLockReply) encode(e *encoder) { e.u32(uint32(m.Status)); e.u64(m.FencingToken) }
func (m *ExtendLockReply) decode(d *decoder) {
	m.Status = UnlockStatus(d.variant("UnlockStatus", 3))
	m.FencingToken = d.u64()
}

// ---- sequencer family ----

// NextIdRequest is the SEQ_NEXT request (SPEC §7.5.1).
type NextIdRequest struct {
	Store string
	Key   string
	Count uint32 // 1 to 1000000
}

func (m *NextIdRequest) encode(e *encoder) { e.str(m.Store); e.str(m.Key); e.u32(m.Count) }
func (m *NextIdRequest) decode(d *decoder) { m.Store = d.str(); m.Key = d.str(); m.Count = d.u32() }

// NextIdReply is the OK answer to SEQ_NEXT: ids First … First+Count-1.
type NextIdReply struct {
	First uint64
	Count uint32
}

func (m *NextIdReply) encode(e *encoder) { e.u64(m.First); e.u32(m.Count) }
func (m *NextIdReply) decode(d *decoder) { m.First = d.u64(); m.Count = d.u32() }

// ---- configuration family (SPEC §7.6) ----

// ConfigItem is one configuration item.
type ConfigItem struct {
	Key      string
	Value    string
	Version  string // changes with every change of the item; compare for equality
	Metadata []Pair // sorted by name
}

func (m *ConfigItem) encode(e *encoder) {
	e.str(m.Key)
	e.str(m.Value)
	e.str(m.Version)
	e.pairs(m.Metadata)
}
func (m *ConfigItem) decode(d *decoder) {
	m.Key = d.str()
	m.Value = d.str()
	m.Version = d.str()
	m.Metadata = d.pairs()
}

func encodeConfigItems(e *encoder, items []ConfigItem) {
	e.u64(uint64(len(items)))
	for i := range items {
		items[i].encode(e)
	}
}

func decodeConfigItems(d *decoder) []ConfigItem {
	n := d.count(32)
	if n == 0 {
		return nil
	}
	items := make([]ConfigItem, n)
	for i := 0; i < n && d.err == nil; i++ {
		items[i].decode(d)
	}
	return items
}

// ConfigGetRequest is the CONFIG_GET request; no keys means every item.
type ConfigGetRequest struct {
	Store string
	Keys  []string
}

func (m *ConfigGetRequest) encode(e *encoder) { e.str(m.Store); e.strs(m.Keys) }
func (m *ConfigGetRequest) decode(d *decoder) { m.Store = d.str(); m.Keys = d.strs() }

// ConfigGetReply is the OK answer to CONFIG_GET (missing keys are absent),
// and the snapshot that opens a CONFIG_SUBSCRIBE stream.
type ConfigGetReply struct {
	Items []ConfigItem
}

func (m *ConfigGetReply) encode(e *encoder) { encodeConfigItems(e, m.Items) }
func (m *ConfigGetReply) decode(d *decoder) { m.Items = decodeConfigItems(d) }

// ConfigSubscribeRequest is the CONFIG_SUBSCRIBE request, which opens a
// stream of ConfigUpdate pushes; no keys watches every key.
type ConfigSubscribeRequest struct {
	Store string
	Keys  []string
}

func (m *ConfigSubscribeRequest) encode(e *encoder) { e.str(m.Store); e.strs(m.Keys) }
func (m *ConfigSubscribeRequest) decode(d *decoder) { m.Store = d.str(); m.Keys = d.strs() }

// ConfigUpdate is one push of a CONFIG_SUBSCRIBE stream.
type ConfigUpdate struct {
	Seq     uint64       // 1 for the stream's first push, then one more each
	Items   []ConfigItem // created or changed, sorted by key
	Deleted []string     // deleted keys, sorted
}

func (m *ConfigUpdate) encode(e *encoder) {
	e.u64(m.Seq)
	encodeConfigItems(e, m.Items)
	e.strs(m.Deleted)
}
func (m *ConfigUpdate) decode(d *decoder) {
	m.Seq = d.u64()
	m.Items = decodeConfigItems(d)
	m.Deleted = d.strs()
}

// ConfigSetItem is one item to write with CONFIG_SET.
type ConfigSetItem struct {
	Key      string
	Value    string
	Metadata []Pair
}

func (m *ConfigSetItem) encode(e *encoder) { e.str(m.Key); e.str(m.Value); e.pairs(m.Metadata) }
func (m *ConfigSetItem) decode(d *decoder) {
	m.Key = d.str()
	m.Value = d.str()
	m.Metadata = d.pairs()
}

// ConfigSetRequest is the CONFIG_SET request (admin; atomic).
type ConfigSetRequest struct {
	Store  string
	Items  []ConfigSetItem
	Delete []string
}

func (m *ConfigSetRequest) encode(e *encoder) {
	e.str(m.Store)
	e.u64(uint64(len(m.Items)))
	for i := range m.Items {
		m.Items[i].encode(e)
	}
	e.strs(m.Delete)
}

func (m *ConfigSetRequest) decode(d *decoder) {
	m.Store = d.str()
	if n := d.count(24); n > 0 {
		m.Items = make([]ConfigSetItem, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Items[i].decode(d)
		}
	}
	m.Delete = d.strs()
}

// ConfigSetReply is the OK answer to CONFIG_SET: one version per written item.
type ConfigSetReply struct {
	Versions []string
}

func (m *ConfigSetReply) encode(e *encoder) { e.strs(m.Versions) }
func (m *ConfigSetReply) decode(d *decoder) { m.Versions = d.strs() }

// ---- secrets family ----

// SecretGetRequest is the SECRET_GET request.
type SecretGetRequest struct {
	Store string
	Name  string
}

func (m *SecretGetRequest) encode(e *encoder) { e.str(m.Store); e.str(m.Name) }
func (m *SecretGetRequest) decode(d *decoder) { m.Store = d.str(); m.Name = d.str() }

// SecretReply is the OK answer to SECRET_GET: the secret's pairs sorted by key.
type SecretReply struct {
	Data []Pair
}

func (m *SecretReply) encode(e *encoder) { e.pairs(m.Data) }
func (m *SecretReply) decode(d *decoder) { m.Data = d.pairs() }

// SecretBulkGetRequest is the SECRET_BULK_GET request.
type SecretBulkGetRequest struct {
	Store string
}

func (m *SecretBulkGetRequest) encode(e *encoder) { e.str(m.Store) }
func (m *SecretBulkGetRequest) decode(d *decoder) { m.Store = d.str() }

// Secret is one (name, pairs) entry of a SecretBulkReply.
type Secret struct {
	Name string
	Data []Pair
}

// SecretBulkReply is the OK answer to SECRET_BULK_GET, sorted by name.
type SecretBulkReply struct {
	Secrets []Secret
}

func (m *SecretBulkReply) encode(e *encoder) {
	e.u64(uint64(len(m.Secrets)))
	for _, s := range m.Secrets {
		e.str(s.Name)
		e.pairs(s.Data)
	}
}

func (m *SecretBulkReply) decode(d *decoder) {
	if n := d.count(16); n > 0 {
		m.Secrets = make([]Secret, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Secrets[i].Name = d.str()
			m.Secrets[i].Data = d.pairs()
		}
	}
}

// ---- link family (SPEC §8; for module authors and the golden vectors) ----

// ComponentSpec is one component a module serves.
type ComponentSpec struct {
	Name     string
	Kind     string
	Metadata []Pair
}

func (m *ComponentSpec) encode(e *encoder) { e.str(m.Name); e.str(m.Kind); e.pairs(m.Metadata) }
func (m *ComponentSpec) decode(d *decoder) {
	m.Name = d.str()
	m.Kind = d.str()
	m.Metadata = d.pairs()
}

// LinkHello is the daemon's first request on a module link.
type LinkHello struct {
	Version    uint8
	Module     string
	DataDir    string
	Components []ComponentSpec
}

func (m *LinkHello) encode(e *encoder) {
	e.u8(m.Version)
	e.str(m.Module)
	e.str(m.DataDir)
	e.u64(uint64(len(m.Components)))
	for i := range m.Components {
		m.Components[i].encode(e)
	}
}

func (m *LinkHello) decode(d *decoder) {
	m.Version = d.u8()
	m.Module = d.str()
	m.DataDir = d.str()
	if n := d.count(24); n > 0 {
		m.Components = make([]ComponentSpec, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Components[i].decode(d)
		}
	}
}

// LinkReady is a module's OK answer to LINK_HELLO.
type LinkReady struct {
	Module  string
	Version string
}

func (m *LinkReady) encode(e *encoder) { e.str(m.Module); e.str(m.Version) }
func (m *LinkReady) decode(d *decoder) { m.Module = d.str(); m.Version = d.str() }
