// Bindings (SPEC §7.9): InvokeBinding runs an operation of an output binding
// (an HTTP request, a file write, a SQL statement); SubscribeBinding opens the
// stream of an input binding's events (cron ticks, stream entries), which are
// acknowledged like pub/sub deliveries. Also the payloads of the family.

package mecha

import "context"

// Opcodes of the bindings family (SPEC §3).
const (
	OpBindingInvoke    uint16 = 0x0801
	OpBindingSubscribe uint16 = 0x0802
	OpBindingAck       uint16 = 0x0803
)

func init() {
	opTable[OpBindingInvoke] = opInfo{"BINDING_INVOKE", func() Message { return &InvokeBindingRequest{} },
		func() Message { return &InvokeBindingReply{} }, nil}
	opTable[OpBindingSubscribe] = opInfo{"BINDING_SUBSCRIBE", func() Message { return &BindingSubscribeRequest{} },
		func() Message { return &BindingSubscribeReply{} }, func() Message { return &BindingEvent{} }}
	opTable[OpBindingAck] = opInfo{"BINDING_ACK", func() Message { return &BindingAckRequest{} },
		func() Message { return &AckReply{} }, nil}
}

// BindingMaxInFlight is the largest MaxInFlight a binding subscription may
// ask for; larger values are INVALID_ARGUMENT.
const BindingMaxInFlight = 1024

// InvokeBindingRequest is BINDING_INVOKE: run Operation on the output binding
// Name.
type InvokeBindingRequest struct {
	Name      string
	Operation string // as the binding's type defines them: get, post, create, …
	Data      []byte // the operation's input, read as the binding's type says
	Metadata  []Pair // per-operation parameters: path, fileName, sql, …
}

func (m *InvokeBindingRequest) encode(e *encoder) {
	e.str(m.Name)
	e.str(m.Operation)
	e.bytes(m.Data)
	e.pairs(m.Metadata)
}

func (m *InvokeBindingRequest) decode(d *decoder) {
	m.Name = d.str()
	m.Operation = d.str()
	m.Data = d.bytes()
	m.Metadata = d.pairs()
}

// InvokeBindingReply is the OK answer to BINDING_INVOKE: the operation's
// result.
type InvokeBindingReply struct {
	Data     []byte // the result body; empty for operations without one
	Metadata []Pair // facts about the result: statusCode, rowsAffected, …
}

func (m *InvokeBindingReply) encode(e *encoder) { e.bytes(m.Data); e.pairs(m.Metadata) }
func (m *InvokeBindingReply) decode(d *decoder) { m.Data = d.bytes(); m.Metadata = d.pairs() }

// BindingSubscribeRequest is BINDING_SUBSCRIBE, which opens a stream of
// BindingEvent pushes.
type BindingSubscribeRequest struct {
	Name          string
	MaxInFlight   uint32 // most unacknowledged events; 0 = 64, at most BindingMaxInFlight
	AckDeadlineMs uint32 // 0 = the binding's default (30000)
}

func (m *BindingSubscribeRequest) encode(e *encoder) {
	e.str(m.Name)
	e.u32(m.MaxInFlight)
	e.u32(m.AckDeadlineMs)
}

func (m *BindingSubscribeRequest) decode(d *decoder) {
	m.Name = d.str()
	m.MaxInFlight = d.u32()
	m.AckDeadlineMs = d.u32()
}

// BindingSubscribeReply is the answer that opens a BINDING_SUBSCRIBE stream.
type BindingSubscribeReply struct {
	SubscriptionID uint64 // names the subscriber in the module's logs
	Name           string // the binding subscribed to
}

func (m *BindingSubscribeReply) encode(e *encoder) { e.u64(m.SubscriptionID); e.str(m.Name) }
func (m *BindingSubscribeReply) decode(d *decoder) { m.SubscriptionID = d.u64(); m.Name = d.str() }

// BindingEvent is one event pushed on a BINDING_SUBSCRIBE stream. Name,
// Offset and Attempt identify it for Ack and Nack.
type BindingEvent struct {
	Name     string
	Offset   uint64 // the event's position in the tenant's sequence, from 1
	Attempt  uint32 // 1 for the first delivery to the tenant
	Data     []byte // the event's body; empty for a cron tick
	Metadata []Pair // facts about the event: a cron tick's time, …
}

func (m *BindingEvent) encode(e *encoder) {
	e.str(m.Name)
	e.u64(m.Offset)
	e.u32(m.Attempt)
	e.bytes(m.Data)
	e.pairs(m.Metadata)
}

func (m *BindingEvent) decode(d *decoder) {
	m.Name = d.str()
	m.Offset = d.u64()
	m.Attempt = d.u32()
	m.Data = d.bytes()
	m.Metadata = d.pairs()
}

// BindingAckRequest is BINDING_ACK, answered with AckReply.
type BindingAckRequest struct {
	Name  string
	Items []AckItem
	Nack  bool // true rejects the events instead: they are delivered again now
}

func (m *BindingAckRequest) encode(e *encoder) {
	e.str(m.Name)
	encodeAckItems(e, m.Items)
	e.boolean(m.Nack)
}

func (m *BindingAckRequest) decode(d *decoder) {
	m.Name = d.str()
	m.Items = decodeAckItems(d)
	m.Nack = d.boolean()
}

// InvokeBinding runs an operation of an output binding and returns its
// result. Not retried unless WithRetry(true): an operation answered
// UNAVAILABLE may have taken effect outside (SPEC §7.9.1).
func (c *Client) InvokeBinding(ctx context.Context, req *InvokeBindingRequest, opts ...CallOption) (*InvokeBindingReply, error) {
	o := collect(opts)
	var r InvokeBindingReply
	if _, _, err := c.do(ctx, &spec{opcode: OpBindingInvoke, req: req, reply: &r}, &o); err != nil {
		return nil, err
	}
	return &r, nil
}

// SubscribeBinding opens the stream of an input binding's events. The
// subscribers of one tenant share its events (each goes to one of them). The
// context bounds only the opening answer.
func (c *Client) SubscribeBinding(ctx context.Context, req *BindingSubscribeRequest, opts ...CallOption) (*BindingSubscription, error) {
	o := collect(opts)
	sub := &BindingSubscription{}
	st, err := c.openStream(ctx, &spec{opcode: OpBindingSubscribe, req: req, reply: &sub.Reply, idempotent: true,
		stream: int(req.MaxInFlight)}, &o)
	if err != nil {
		return nil, err
	}
	sub.pushStream = pushStream{c: c, s: st}
	return sub, nil
}

// AckBinding acknowledges (or with req.Nack, rejects) events of an input
// binding and returns how many items took effect. It may come from any
// connection of the tenant. Retried on UNAVAILABLE: acks are idempotent, as
// pub/sub's are.
func (c *Client) AckBinding(ctx context.Context, req *BindingAckRequest, opts ...CallOption) (uint32, error) {
	o := collect(opts)
	var r AckReply
	if _, _, err := c.do(ctx, &spec{opcode: OpBindingAck, req: req, reply: &r, idempotent: true}, &o); err != nil {
		return 0, err
	}
	return r.Applied, nil
}

// BindingSubscription is an open BINDING_SUBSCRIBE stream: the events of an
// input binding handed to this subscriber (SPEC §7.9.2).
type BindingSubscription struct {
	// Reply is the opening answer: subscription id and binding name.
	Reply BindingSubscribeReply
	pushStream
}

// Next returns the next event. When the stream has ended it returns io.EOF
// (cancelled), or a *StatusError: ErrUnavailable when the bindings module
// restarted, ErrResourceExhausted when events were left unread; in both
// cases subscribe again — nothing unacknowledged is lost, it is delivered
// again. Events must be acknowledged with Ack.
func (sub *BindingSubscription) Next(ctx context.Context) (*BindingEvent, error) {
	var ev BindingEvent
	if err := sub.s.nextMessage(ctx, &ev); err != nil {
		return nil, err
	}
	return &ev, nil
}

// Ack acknowledges an event: it is never delivered to this tenant again.
func (sub *BindingSubscription) Ack(ctx context.Context, ev *BindingEvent) error {
	return sub.ackEvent(ctx, ev, false)
}

// Nack rejects an event: it is delivered again at once (to any subscriber
// of the tenant).
func (sub *BindingSubscription) Nack(ctx context.Context, ev *BindingEvent) error {
	return sub.ackEvent(ctx, ev, true)
}

func (sub *BindingSubscription) ackEvent(ctx context.Context, ev *BindingEvent, nack bool) error {
	_, err := sub.c.AckBinding(ctx, &BindingAckRequest{Name: ev.Name,
		Items: []AckItem{{Offset: ev.Offset, Attempt: ev.Attempt}}, Nack: nack})
	return err
}
