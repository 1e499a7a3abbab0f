// Service invocation (SPEC §7.8): Invoke calls an app by its app id;
// Register serves one on the client's connection, where the daemon delivers
// calls as INVOKE_CALL requests that Registration.Next returns and
// Registration.Reply answers. Also the payloads of the invoke family, the
// module link's LINK_DELIVER and the peer-link frames, so every golden
// vector is replayed.

package mecha

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Opcodes of the invoke family, LINK_DELIVER and the peer family (SPEC §3).
const (
	OpInvokeRegister uint16 = 0x0701
	OpInvoke         uint16 = 0x0702
	OpInvokeApps     uint16 = 0x0703
	OpInvokeCall     uint16 = 0x0704
	OpLinkDeliver    uint16 = 0xF005
	OpLinkRoute      uint16 = 0xF006
	OpLinkUnroute    uint16 = 0xF007
	OpPeerHello      uint16 = 0xF101
	OpPeerAnnounce   uint16 = 0xF102
	OpPeerInvoke     uint16 = 0xF103
)

func init() {
	invokeReply := func() Message { return &InvokeReply{} }
	opTable[OpInvokeRegister] = opInfo{"INVOKE_REGISTER", func() Message { return &RegisterRequest{} }, func() Message { return &RegisterReply{} }, nil}
	opTable[OpInvoke] = opInfo{"INVOKE", func() Message { return &InvokeRequest{} }, invokeReply, nil}
	opTable[OpInvokeApps] = opInfo{"INVOKE_APPS", nil, func() Message { return &AppsReply{} }, nil}
	opTable[OpInvokeCall] = opInfo{"INVOKE_CALL", func() Message { return &InvokeCall{} }, invokeReply, nil}
	opTable[OpLinkDeliver] = opInfo{"LINK_DELIVER", func() Message { return &LinkDeliver{} }, invokeReply, nil}
	opTable[OpLinkRoute] = opInfo{"LINK_ROUTE", func() Message { return &RouteGrant{} }, nil, nil}
	opTable[OpLinkUnroute] = opInfo{"LINK_UNROUTE", func() Message { return &RouteRevoke{} }, nil, nil}
	opTable[OpPeerHello] = opInfo{"PEER_HELLO", func() Message { return &PeerHello{} }, func() Message { return &PeerHello{} }, nil}
	opTable[OpPeerAnnounce] = opInfo{"PEER_ANNOUNCE", func() Message { return &PeerAnnounce{} }, nil, nil}
	opTable[OpPeerInvoke] = opInfo{"PEER_INVOKE", func() Message { return &InvokeCall{} }, invokeReply, nil}
}

// RegisterRequest is INVOKE_REGISTER: serve an app id (opens a stream).
type RegisterRequest struct {
	AppID   string
	Methods []string
}

func (m *RegisterRequest) encode(e *encoder) { e.str(m.AppID); e.strs(m.Methods) }
func (m *RegisterRequest) decode(d *decoder) { m.AppID = d.str(); m.Methods = d.strs() }

// RegisterReply opens the registration stream.
type RegisterReply struct {
	AppID string
	Node  string
}

func (m *RegisterReply) encode(e *encoder) { e.str(m.AppID); e.str(m.Node) }
func (m *RegisterReply) decode(d *decoder) { m.AppID = d.str(); m.Node = d.str() }

// InvokeRequest is INVOKE: call a method of an app by app id.
type InvokeRequest struct {
	AppID       string
	Method      string
	Data        []byte
	ContentType string
	Metadata    []Pair
	CallerAppID string
	TraceParent string
}

func (m *InvokeRequest) encode(e *encoder) {
	e.str(m.AppID)
	e.str(m.Method)
	e.bytes(m.Data)
	e.str(m.ContentType)
	e.pairs(m.Metadata)
	e.str(m.CallerAppID)
	e.str(m.TraceParent)
}

func (m *InvokeRequest) decode(d *decoder) {
	m.AppID = d.str()
	m.Method = d.str()
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
	m.CallerAppID = d.str()
	m.TraceParent = d.str()
}

// InvokeReply is the callee's answer.
type InvokeReply struct {
	Data        []byte
	ContentType string
	Metadata    []Pair
}

func (m *InvokeReply) encode(e *encoder) { e.bytes(m.Data); e.str(m.ContentType); e.pairs(m.Metadata) }
func (m *InvokeReply) decode(d *decoder) {
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
}

// InvokeCall is one call as delivered to the callee (INVOKE_CALL, PEER_INVOKE).
type InvokeCall struct {
	AppID        string
	Method       string
	Data         []byte
	ContentType  string
	Metadata     []Pair
	CallerAppID  string
	CallerTenant string
	CallerNode   string
	TraceParent  string
}

func (m *InvokeCall) encode(e *encoder) {
	e.str(m.AppID)
	e.str(m.Method)
	e.bytes(m.Data)
	e.str(m.ContentType)
	e.pairs(m.Metadata)
	e.str(m.CallerAppID)
	e.str(m.CallerTenant)
	e.str(m.CallerNode)
	e.str(m.TraceParent)
}

func (m *InvokeCall) decode(d *decoder) {
	m.AppID = d.str()
	m.Method = d.str()
	m.Data = d.bytes()
	m.ContentType = d.str()
	m.Metadata = d.pairs()
	m.CallerAppID = d.str()
	m.CallerTenant = d.str()
	m.CallerNode = d.str()
	m.TraceParent = d.str()
}

// AppEntry is one app id reachable from a node.
type AppEntry struct {
	AppID     string
	Node      string
	Local     bool
	Instances uint32
}

// AppsReply is the OK answer to INVOKE_APPS.
type AppsReply struct {
	Apps []AppEntry
}

func (m *AppsReply) encode(e *encoder) {
	e.u64(uint64(len(m.Apps)))
	for _, a := range m.Apps {
		e.str(a.AppID)
		e.str(a.Node)
		e.boolean(a.Local)
		e.u32(a.Instances)
	}
}

func (m *AppsReply) decode(d *decoder) {
	if n := d.count(21); n > 0 {
		m.Apps = make([]AppEntry, n)
		for i := 0; i < n && d.err == nil; i++ {
			m.Apps[i].AppID = d.str()
			m.Apps[i].Node = d.str()
			m.Apps[i].Local = d.boolean()
			m.Apps[i].Instances = d.u32()
		}
	}
}

// LinkDeliver is a module's request to deliver a request on an app's connection.
type LinkDeliver struct {
	Stream  uint32
	Opcode  uint16
	Payload []byte
}

func (m *LinkDeliver) encode(e *encoder) { e.u32(m.Stream); e.u16(m.Opcode); e.bytes(m.Payload) }
func (m *LinkDeliver) decode(d *decoder) {
	m.Stream = d.u32()
	m.Opcode = d.u16()
	m.Payload = d.bytes()
}

// RouteGrant is a module's one-way LINK_ROUTE: a direct route for calls.
type RouteGrant struct {
	Tenant      string
	AppID       string
	Method      string
	CallerAppID string
	Stream      uint32
	Node        string
	AttemptMs   uint32
	MaxCalls    uint32
}

func (m *RouteGrant) encode(e *encoder) {
	e.str(m.Tenant)
	e.str(m.AppID)
	e.str(m.Method)
	e.str(m.CallerAppID)
	e.u32(m.Stream)
	e.str(m.Node)
	e.u32(m.AttemptMs)
	e.u32(m.MaxCalls)
}
func (m *RouteGrant) decode(d *decoder) {
	m.Tenant = d.str()
	m.AppID = d.str()
	m.Method = d.str()
	m.CallerAppID = d.str()
	m.Stream = d.u32()
	m.Node = d.str()
	m.AttemptMs = d.u32()
	m.MaxCalls = d.u32()
}

// RouteRevoke is a module's one-way LINK_UNROUTE: forget routes to an app id.
type RouteRevoke struct {
	AppID string
}

func (m *RouteRevoke) encode(e *encoder) { e.str(m.AppID) }
func (m *RouteRevoke) decode(d *decoder) { m.AppID = d.str() }

// PeerHello is the first frame each way of a peer link.
type PeerHello struct {
	Version uint8
	Node    string
}

func (m *PeerHello) encode(e *encoder) { e.u8(m.Version); e.str(m.Node) }
func (m *PeerHello) decode(d *decoder) { m.Version = d.u8(); m.Node = d.str() }

// PeerAnnounce lists the app ids a node serves.
type PeerAnnounce struct {
	Node string
	Apps []string
}

func (m *PeerAnnounce) encode(e *encoder) { e.str(m.Node); e.strs(m.Apps) }
func (m *PeerAnnounce) decode(d *decoder) { m.Node = d.str(); m.Apps = d.strs() }

// InvokeOptions are the optional parts of an invocation.
type InvokeOptions struct {
	ContentType string // media type of the data; "" = application/octet-stream
	Metadata    []Pair // passed to the callee
	CallerAppID string // the app id to call as (the tenant must be allowed it)
	TraceParent string // W3C traceparent; "" = the daemon generates one
}

// Invoke calls method of the app appID (on this node or another) with data
// and returns the callee's reply. A non-OK answer of the callee is its
// *StatusError; ErrNotFound when nothing serves the app id and method.
// Never retried by the client: the daemon's resiliency settings decide.
// opts may be nil.
func (c *Client) Invoke(ctx context.Context, appID, method string, data []byte, opts *InvokeOptions) (*InvokeReply, error) {
	if opts == nil {
		opts = &InvokeOptions{}
	}
	req := &InvokeRequest{AppID: appID, Method: method, Data: data, ContentType: opts.ContentType,
		Metadata: opts.Metadata, CallerAppID: opts.CallerAppID, TraceParent: opts.TraceParent}
	var r InvokeReply
	if _, _, err := c.do(ctx, &spec{opcode: OpInvoke, req: req, reply: &r}, nil); err != nil {
		return nil, err
	}
	return &r, nil
}

// Apps returns every app id reachable from the daemon: those registered on
// this node and those its peers announced.
func (c *Client) Apps(ctx context.Context) ([]AppEntry, error) {
	var r AppsReply
	if _, _, err := c.do(ctx, &spec{opcode: OpInvokeApps, reply: &r, idempotent: true}, nil); err != nil {
		return nil, err
	}
	return r.Apps, nil
}

// Call is one call delivered to a registration: the InvokeCall, and what
// answering it needs.
type Call struct {
	InvokeCall
	// Deadline is when the caller stops waiting (from the frame's
	// deadline_ms, measured on arrival).
	Deadline  time.Time
	requestID uint32
	conn      *conn
}

// Registration serves an app id on the client's connection (SPEC §7.8.1).
// Calls queue up for Next; callers wait (within their deadline) while nobody
// reads them. Next and Cancel are for one goroutine at a time; Reply and Fail
// may be called from any goroutine, in any order.
type Registration struct {
	// Registered is the latest opening answer: the app id and the node.
	Registered RegisterReply
	c          *Client
	methods    []string
	s          *stream
}

// Register serves appID on this client's connection, for methods (none:
// every method). ErrPermissionDenied when the tenant may not serve it. The
// registration registers again by itself when the invoke module restarts.
func (c *Client) Register(ctx context.Context, appID string, methods ...string) (*Registration, error) {
	r := &Registration{c: c, methods: methods}
	if err := r.open(ctx, appID); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Registration) open(ctx context.Context, appID string) error {
	var reply RegisterReply
	st, err := r.c.openStream(ctx, &spec{opcode: OpInvokeRegister, req: &RegisterRequest{AppID: appID, Methods: r.methods},
		reply: &reply, idempotent: true}, nil)
	if err != nil {
		return err
	}
	// The reader has already pointed the app id at st (conn.dispatch).
	r.Registered, r.s = reply, st
	return nil
}

// Next returns the next call, waiting until ctx is done. It returns io.EOF
// once the registration was cancelled, or the error that ended it.
func (r *Registration) Next(ctx context.Context) (*Call, error) {
	for {
		f, err := r.s.next(ctx)
		var se *StatusError
		if errors.As(err, &se) && se.Status == StatusUnavailable {
			// The invoke module restarted (SPEC §7.8.1): register again,
			// for as long as the caller is willing to wait.
			if err := r.reopen(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if f.h.flags != 0 || f.h.opcode != OpInvokeCall {
			continue // a registration has no pushes (SPEC §7.8.1)
		}
		call := &Call{requestID: f.h.requestID, conn: r.s.c}
		if f.h.deadlineMs > 0 {
			call.Deadline = time.Now().Add(time.Duration(f.h.deadlineMs) * time.Millisecond)
		}
		if err := Unmarshal(f.payload, &call.InvokeCall); err != nil {
			// The reader decoded it already; kept so a bad frame never panics.
			_ = call.conn.answerCall(call.requestID, StatusInvalidArgument, &ErrorBody{Message: err.Error()})
			continue
		}
		return call, nil
	}
}

func (r *Registration) reopen(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := r.open(ctx, r.Registered.AppID)
		var se *StatusError
		if err == nil || !errors.As(err, &se) || se.Status != StatusUnavailable {
			return err
		}
		t := time.NewTimer(backoff(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// Reply answers call with OK and reply (nil: an empty reply).
func (r *Registration) Reply(call *Call, reply *InvokeReply) error {
	if reply == nil {
		reply = &InvokeReply{}
	}
	return call.conn.answerCall(call.requestID, StatusOK, reply)
}

// Fail answers call with status (not StatusOK) and message, which the
// caller receives as its *StatusError.
func (r *Registration) Fail(call *Call, status Status, message string) error {
	if status == StatusOK {
		return fmt.Errorf("mecha: Fail needs an error status, not %v", status)
	}
	return call.conn.answerCall(call.requestID, status, &ErrorBody{Message: message})
}

// Serve answers every call with handler, each in a goroutine of its own,
// until ctx is done or the registration ends; it returns nil after Cancel.
// A *StatusError the handler returns is its status for the caller, any
// other error INTERNAL.
func (r *Registration) Serve(ctx context.Context, handler func(context.Context, *Call) (*InvokeReply, error)) error {
	for {
		call, err := r.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		go func() {
			cctx, cancel := ctx, context.CancelFunc(func() {})
			if !call.Deadline.IsZero() {
				cctx, cancel = context.WithDeadline(ctx, call.Deadline)
			}
			defer cancel()
			reply, herr := handler(cctx, call)
			var se *StatusError
			switch {
			case herr == nil:
				_ = r.Reply(call, reply)
			case errors.As(herr, &se) && se.Status != StatusOK:
				_ = r.Fail(call, se.Status, se.Message)
			default:
				_ = r.Fail(call, StatusInternal, herr.Error())
			}
		}()
	}
}

// Cancel stops serving the app id (STREAM_CANCEL); Next then returns the
// calls already queued, then io.EOF.
func (r *Registration) Cancel(ctx context.Context) error {
	c := r.s.c
	c.mu.Lock()
	if c.callees[r.Registered.AppID] == r.s {
		delete(c.callees, r.Registered.AppID)
	}
	c.mu.Unlock()
	return r.s.cancel(ctx)
}
