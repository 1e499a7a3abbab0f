package mecha

import (
	"context"
	"fmt"
	"time"
)

// ---- control (SPEC §7.1) ----

// Ping checks that the daemon answers (without involving any module).
func (c *Client) Ping(ctx context.Context) error {
	_, _, err := c.do(ctx, &spec{opcode: OpPing, idempotent: true}, nil)
	return err
}

// Status returns the daemon's version, pid, uptime and its modules' states.
func (c *Client) Status(ctx context.Context) (*StatusReply, error) {
	var r StatusReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStatus, reply: &r, idempotent: true}, nil); err != nil {
		return nil, err
	}
	return &r, nil
}

// ModuleRestart hot-restarts a module (admins only, SPEC §7.1.4) and returns
// the new instance's pid. A non-empty binary, which must be an absolute path,
// starts that executable instead (an upgrade). Without a context deadline the
// call waits 30 s. Not retried unless WithRetry(true).
func (c *Client) ModuleRestart(ctx context.Context, module, binary string, opts ...CallOption) (uint32, error) {
	o := collect(opts)
	req := &ModuleRestartRequest{Module: module}
	if binary != "" {
		req.Binary = &binary
	}
	var r ModuleRestartReply
	if _, _, err := c.do(ctx, &spec{opcode: OpModuleRestart, req: req, reply: &r, timeout: moduleRestartTimeout}, &o); err != nil {
		return 0, err
	}
	return r.PID, nil
}

// Reload makes the daemon re-read its configuration and apply the changes
// (admins only, SPEC §7.1.5). Without a context deadline the call waits 60 s.
// Not retried unless WithRetry(true).
func (c *Client) Reload(ctx context.Context, opts ...CallOption) (*ReloadReply, error) {
	o := collect(opts)
	var r ReloadReply
	if _, _, err := c.do(ctx, &spec{opcode: OpReload, reply: &r, timeout: reloadTimeout}, &o); err != nil {
		return nil, err
	}
	return &r, nil
}

// ---- state (SPEC §7.2) ----

// Get returns the live value of key and its ETag, or (nil, nil) when the key
// is missing or expired. Options: WithStore.
func (c *Client) Get(ctx context.Context, key string, opts ...CallOption) (*StateEntry, error) {
	o := collect(opts)
	var r StateEntry
	found, _, err := c.do(ctx, &spec{opcode: OpStateGet, req: &GetRequest{Store: o.store, Key: key}, reply: &r,
		idempotent: true, missingOK: true}, &o)
	if err != nil || !found {
		return nil, err
	}
	return &r, nil
}

// Set writes value under key and returns the key's new ETag. Options:
// WithETag (write only if unchanged; ErrEtagMismatch otherwise), WithTTL,
// WithStore, WithRetry. Retried on UNAVAILABLE only with an ETag: a retried
// conditional write that had in fact been applied fails with
// ErrEtagMismatch rather than applying twice.
func (c *Client) Set(ctx context.Context, key string, value []byte, opts ...CallOption) (string, error) {
	o := collect(opts)
	req := &SetRequest{Store: o.store, Item: SetItem{Key: key, Value: value, ETag: o.etag, TTLMs: o.ttlMs}}
	var r SetReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStateSet, req: req, reply: &r, idempotent: o.etag != nil}, &o); err != nil {
		return "", err
	}
	return r.ETag, nil
}

// Delete removes key and reports whether a live key was removed (a missing
// key is not an error). Options: WithETag, WithStore, WithRetry.
func (c *Client) Delete(ctx context.Context, key string, opts ...CallOption) (bool, error) {
	o := collect(opts)
	req := &DeleteRequest{Store: o.store, Item: DeleteItem{Key: key, ETag: o.etag}}
	var r DeleteReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStateDelete, req: req, reply: &r, idempotent: o.etag != nil}, &o); err != nil {
		return false, err
	}
	return r.Existed, nil
}

// BulkGet reads several keys at once (at most 1024 distinct): one item per
// distinct key, in order, with a nil Entry for a missing key. Options: WithStore.
func (c *Client) BulkGet(ctx context.Context, keys []string, opts ...CallOption) ([]BulkGetItem, error) {
	o := collect(opts)
	var r BulkGetReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStateBulkGet, req: &BulkGetRequest{Store: o.store, Keys: keys}, reply: &r, idempotent: true}, &o); err != nil {
		return nil, err
	}
	if len(r.Items) != len(keys) {
		return nil, &ProtocolError{Reason: fmt.Sprintf("STATE_BULK_GET answered %d items for %d keys", len(r.Items), len(keys))}
	}
	return r.Items, nil
}

// BulkSet writes every item or none (atomically, in order) and returns the
// new ETags in item order. Options: WithStore, WithRetry. Retried when any
// item carries an ETag: the whole batch is atomic and an old ETag never
// matches again, so a batch that was already applied cannot apply twice.
func (c *Client) BulkSet(ctx context.Context, items []SetItem, opts ...CallOption) ([]string, error) {
	o := collect(opts)
	safe := false
	for i := range items {
		safe = safe || items[i].ETag != nil
	}
	var r TransactReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStateBulkSet, req: &BulkSetRequest{Store: o.store, Items: items}, reply: &r, idempotent: safe}, &o); err != nil {
		return nil, err
	}
	if len(r.ETags) != len(items) {
		return nil, &ProtocolError{Reason: fmt.Sprintf("STATE_BULK_SET answered %d etags for %d items", len(r.ETags), len(items))}
	}
	etags := make([]string, len(r.ETags))
	for i, t := range r.ETags {
		if t == nil {
			return nil, &ProtocolError{Reason: fmt.Sprintf("STATE_BULK_SET answered no etag for item %d", i)}
		}
		etags[i] = *t
	}
	return etags, nil
}

// Transact applies ops (SetItem or DeleteItem values) atomically and in
// order, and returns one entry per op: the new ETag of a Set, nil for a
// Delete. Options: WithStore, WithRetry. Retried when any op carries an ETag,
// for the reason given at BulkSet.
func (c *Client) Transact(ctx context.Context, ops []TxOp, opts ...CallOption) ([]*string, error) {
	o := collect(opts)
	safe := false
	for i, op := range ops {
		switch v := op.(type) {
		case SetItem:
			safe = safe || v.ETag != nil
		case DeleteItem:
			safe = safe || v.ETag != nil
		case *SetItem:
			if v == nil {
				return nil, fmt.Errorf("mecha: Transact: op %d is a nil *SetItem", i)
			}
			safe = safe || v.ETag != nil
		case *DeleteItem:
			if v == nil {
				return nil, fmt.Errorf("mecha: Transact: op %d is a nil *DeleteItem", i)
			}
			safe = safe || v.ETag != nil
		default:
			return nil, fmt.Errorf("mecha: Transact: op %d is nil", i)
		}
	}
	var r TransactReply
	if _, _, err := c.do(ctx, &spec{opcode: OpStateTransact, req: &TransactRequest{Store: o.store, Ops: ops}, reply: &r, idempotent: safe}, &o); err != nil {
		return nil, err
	}
	if len(r.ETags) != len(ops) {
		return nil, &ProtocolError{Reason: fmt.Sprintf("STATE_TRANSACT answered %d etags for %d ops", len(r.ETags), len(ops))}
	}
	return r.ETags, nil
}

// ---- locks (SPEC §7.4) ----

// TryLock asks for the lock on resource for owner with a lease of ttl. Not
// getting it is not an error: Acquired is false. Options: WithWait (wait for
// a held lock), WithStore, WithRetry. Lock operations are not idempotent and
// are not retried by default; a caller unsure whether it got the lock can
// ExtendLock with the same owner to find out (SPEC §7.4).
func (c *Client) TryLock(ctx context.Context, resource, owner string, ttl time.Duration, opts ...CallOption) (TryLockReply, error) {
	o := collect(opts)
	// SPEC §7.4.1: the wait counts against the deadline, which must exceed it.
	if d, ok := ctx.Deadline(); ok && o.wait > 0 && time.Until(d) <= o.wait {
		return TryLockReply{}, &StatusError{Status: StatusInvalidArgument, Code: uint16(StatusInvalidArgument), Opcode: OpLockTryLock,
			Message: fmt.Sprintf("lock wait %v does not fit in the context's deadline (%v left) (client side)", o.wait, time.Until(d).Round(time.Millisecond))}
	}
	req := &TryLockRequest{Store: o.store, Resource: resource, Owner: owner, TTLMs: durationMs(ttl), WaitMs: durationMs(o.wait)}
	var r TryLockReply
	if _, _, err := c.do(ctx, &spec{opcode: OpLockTryLock, req: req, reply: &r, extra: o.wait}, &o); err != nil {
		return TryLockReply{}, err
	}
	return r, nil
}

// Unlock releases the lock if owner holds it. The outcome is the returned
// status (UnlockSuccess, LockDoesNotExist, LockBelongsToOthers), not an
// error. Options: WithStore, WithRetry.
func (c *Client) Unlock(ctx context.Context, resource, owner string, opts ...CallOption) (UnlockStatus, error) {
	o := collect(opts)
	var r UnlockReply
	if _, _, err := c.do(ctx, &spec{opcode: OpLockUnlock, req: &UnlockRequest{Store: o.store, Resource: resource, Owner: owner}, reply: &r}, &o); err != nil {
		return 0, err
	}
	return r.Status, nil
}

// ExtendLock sets the lease of a lock owner holds to end ttl from now; on
// UnlockSuccess the reply carries the lock's (unchanged) fencing token.
// Options: WithStore, WithRetry.
func (c *Client) ExtendLock(ctx context.Context, resource, owner string, ttl time.Duration, opts ...CallOption) (ExtendLockReply, error) {
	o := collect(opts)
	req := &ExtendLockRequest{Store: o.store, Resource: resource, Owner: owner, TTLMs: durationMs(ttl)}
	var r ExtendLockReply
	if _, _, err := c.do(ctx, &spec{opcode: OpLockExtend, req: req, reply: &r}, &o); err != nil {
		return ExtendLockReply{}, err
	}
	return r, nil
}

// ---- sequencer (SPEC §7.5) ----

// NextID returns the next id of the sequence key: greater than every id it
// handed out before (ids may skip values). Options: WithStore. Retried on
// UNAVAILABLE, which SPEC §7.5 allows (at worst ids are skipped).
func (c *Client) NextID(ctx context.Context, key string, opts ...CallOption) (uint64, error) {
	r, err := c.NextIDs(ctx, key, 1, opts...)
	return r.First, err
}

// NextIDs allocates count (1 to 1000000) consecutive ids of the sequence
// key: r.First to r.First+r.Count-1. Options: WithStore.
func (c *Client) NextIDs(ctx context.Context, key string, count uint32, opts ...CallOption) (NextIdReply, error) {
	o := collect(opts)
	var r NextIdReply
	if _, _, err := c.do(ctx, &spec{opcode: OpSeqNext, req: &NextIdRequest{Store: o.store, Key: key, Count: count}, reply: &r, idempotent: true}, &o); err != nil {
		return NextIdReply{}, err
	}
	if r.Count != count {
		return NextIdReply{}, &ProtocolError{Reason: fmt.Sprintf("SEQ_NEXT allocated %d ids, %d asked", r.Count, count)}
	}
	return r, nil
}

// ---- secrets (SPEC §7.7) ----

// GetSecret returns the secret's (key → value) pairs; a single-value secret
// is one pair keyed by its name. Unlike Get, a missing secret is an error
// (ErrNotFound): a secret an application needs is configuration, and a nil
// map would be too easy to mistake for an empty secret. Options: WithStore.
func (c *Client) GetSecret(ctx context.Context, name string, opts ...CallOption) (map[string]string, error) {
	o := collect(opts)
	var r SecretReply
	if _, _, err := c.do(ctx, &spec{opcode: OpSecretGet, req: &SecretGetRequest{Store: o.store, Name: name}, reply: &r, idempotent: true}, &o); err != nil {
		return nil, err
	}
	return pairMap(r.Data), nil
}

// BulkGetSecrets returns every secret of the store the caller may read, by
// name. Options: WithStore.
func (c *Client) BulkGetSecrets(ctx context.Context, opts ...CallOption) (map[string]map[string]string, error) {
	o := collect(opts)
	var r SecretBulkReply
	if _, _, err := c.do(ctx, &spec{opcode: OpSecretBulkGet, req: &SecretBulkGetRequest{Store: o.store}, reply: &r, idempotent: true}, &o); err != nil {
		return nil, err
	}
	out := make(map[string]map[string]string, len(r.Secrets))
	for _, s := range r.Secrets {
		out[s.Name] = pairMap(s.Data)
	}
	return out, nil
}

func pairMap(pairs []Pair) map[string]string {
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		m[p.Key] = p.Value
	}
	return m
}

// ---- pubsub (SPEC §7.3) ----

// Publish appends a message to req.Topic and returns its id and offset; the
// answer comes once the message is stored. Not retried unless
// WithRetry(true): a resent publish may store the message twice (which
// subscribers must tolerate anyway, SPEC §7.3.1).
func (c *Client) Publish(ctx context.Context, req *PublishRequest, opts ...CallOption) (*PublishReply, error) {
	o := collect(opts)
	var r PublishReply
	if _, _, err := c.do(ctx, &spec{opcode: OpPubsubPublish, req: req, reply: &r}, &o); err != nil {
		return nil, err
	}
	return &r, nil
}

// Subscribe joins req.Group of req.Topic and opens the stream of its
// deliveries. The context bounds only the opening answer.
func (c *Client) Subscribe(ctx context.Context, req *SubscribeRequest, opts ...CallOption) (*Subscription, error) {
	o := collect(opts)
	sub := &Subscription{}
	st, err := c.openStream(ctx, &spec{opcode: OpPubsubSubscribe, req: req, reply: &sub.Reply, idempotent: true,
		stream: int(req.MaxInFlight)}, &o)
	if err != nil {
		return nil, err
	}
	sub.pushStream = pushStream{c: c, s: st}
	return sub, nil
}

// Ack acknowledges (or with req.Nack, rejects) deliveries and returns how
// many items took effect. It may come from any connection of the tenant.
// Retried on UNAVAILABLE: acks are idempotent (SPEC §7.3.3).
func (c *Client) Ack(ctx context.Context, req *AckRequest, opts ...CallOption) (uint32, error) {
	o := collect(opts)
	var r AckReply
	if _, _, err := c.do(ctx, &spec{opcode: OpPubsubAck, req: req, reply: &r, idempotent: true}, &o); err != nil {
		return 0, err
	}
	return r.Applied, nil
}

// ---- configuration (SPEC §7.6) ----

// ConfigGet returns the items of keys that exist, in request order (missing
// keys are absent), or every item when keys is empty. Options: WithStore.
func (c *Client) ConfigGet(ctx context.Context, keys []string, opts ...CallOption) ([]ConfigItem, error) {
	o := collect(opts)
	var r ConfigGetReply
	if _, _, err := c.do(ctx, &spec{opcode: OpConfigGet, req: &ConfigGetRequest{Store: o.store, Keys: keys}, reply: &r, idempotent: true}, &o); err != nil {
		return nil, err
	}
	return r.Items, nil
}

// ConfigSet writes items and deletes keys atomically (admins only) and
// returns the new version of each written item. Options: WithStore,
// WithRetry (not retried by default: watchers would see the write twice).
func (c *Client) ConfigSet(ctx context.Context, items []ConfigSetItem, deleteKeys []string, opts ...CallOption) ([]string, error) {
	o := collect(opts)
	var r ConfigSetReply
	req := &ConfigSetRequest{Store: o.store, Items: items, Delete: deleteKeys}
	if _, _, err := c.do(ctx, &spec{opcode: OpConfigSet, req: req, reply: &r}, &o); err != nil {
		return nil, err
	}
	return r.Versions, nil
}

// WatchConfig opens a stream of the changes of keys (every key when empty),
// starting with a snapshot. The context bounds only the opening answer.
// Options: WithStore.
func (c *Client) WatchConfig(ctx context.Context, keys []string, opts ...CallOption) (*ConfigWatch, error) {
	o := collect(opts)
	var r ConfigGetReply
	st, err := c.openStream(ctx, &spec{opcode: OpConfigSubscribe, req: &ConfigSubscribeRequest{Store: o.store, Keys: keys},
		reply: &r, idempotent: true}, &o)
	if err != nil {
		return nil, err
	}
	return &ConfigWatch{Snapshot: r.Items, s: st}, nil
}
