// Package mecha is a small client for mechad, the mecha node daemon, written
// from the ABI specification (abi/SPEC.md) with the standard library only.
//
// A Client holds one Unix-socket connection and is safe for concurrent use:
// any number of goroutines may call it at once, and their requests are
// pipelined on the connection and matched to answers by request id.
//
// Every call takes a context. Its deadline (or the client's default timeout,
// 5 s) is sent to the daemon as the request's deadline, so both sides give up
// together. Calls that are safe to repeat are retried on UNAVAILABLE (a
// module restarting) with jittered exponential backoff within that deadline;
// see WithRetry.
//
// Expected outcomes are results, not errors: Get of a missing key returns a
// nil *StateEntry and a nil error, TryLock that did not get the lock returns
// Acquired == false, Delete of a missing key returns false. Failures are
// *StatusError values that match the Err* sentinels with errors.Is.
package mecha

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// ClientName is sent in HELLO for the daemon's logs.
const ClientName = "mecha-go/0.1.0"

// DefaultTimeout is a call's deadline when its context has none.
const DefaultTimeout = 5 * time.Second

// Default deadlines of the admin operations, which can take seconds and are
// not abandoned by the daemon at their deadline (SPEC §7.1.4, §7.1.5).
const (
	moduleRestartTimeout = 30 * time.Second
	reloadTimeout        = 60 * time.Second
)

// grace is how long past the deadline sent in the header a call without a
// context deadline keeps waiting: the daemon answers DEADLINE_EXCEEDED itself
// (with a message naming the module), which is more useful than our guess,
// and admin operations may legitimately answer late.
const grace = time.Second

// DefaultSocketPath returns the socket mechad and mechactl use when none is
// given: $MECHA_SOCKET; else /run/mecha/mecha.sock when running as root; else
// $XDG_RUNTIME_DIR/mecha/mecha.sock; else <tmpdir>/mecha-<uid>/mecha.sock,
// where tmpdir is $TMPDIR or /tmp.
func DefaultSocketPath() string {
	if p := os.Getenv("MECHA_SOCKET"); p != "" {
		return p
	}
	uid := os.Geteuid()
	if uid == 0 {
		return "/run/mecha/mecha.sock"
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "mecha", "mecha.sock")
	}
	return filepath.Join(os.TempDir(), "mecha-"+strconv.Itoa(uid), "mecha.sock")
}

// Client is a connection to mechad. Create it with Dial; it is safe for
// concurrent use. If the connection is lost, calls in flight fail with a
// *ConnectionError and the next call reconnects (with a new HELLO).
type Client struct {
	path    string
	timeout time.Duration
	name    string

	mu     sync.Mutex // guards the fields below; held while reconnecting
	conn   *conn
	hello  HelloReply
	closed bool
}

// DialOption configures Dial.
type DialOption func(*Client)

// WithTimeout sets the deadline of calls whose context has none (default
// DefaultTimeout). It does not change the admin operations' longer defaults.
func WithTimeout(d time.Duration) DialOption { return func(c *Client) { c.timeout = d } }

// WithClientName sets the client name sent in HELLO (default ClientName).
func WithClientName(name string) DialOption { return func(c *Client) { c.name = name } }

// Dial connects to mechad at socketPath (DefaultSocketPath() when empty) and
// negotiates the ABI version with HELLO. When no daemon listens, the error
// is a *ConnectionError matching ErrDaemonAbsent whose text reads
// "is mechad running? socket: PATH".
func Dial(ctx context.Context, socketPath string, opts ...DialOption) (*Client, error) {
	if socketPath == "" {
		socketPath = DefaultSocketPath()
	}
	c := &Client{path: socketPath, timeout: DefaultTimeout, name: ClientName}
	for _, o := range opts {
		o(c)
	}
	local, ok := ctx.Deadline()
	if !ok {
		local = time.Now().Add(c.timeout)
	}
	if _, err := c.connection(ctx, local); err != nil {
		return nil, err
	}
	return c, nil
}

// Path returns the socket path the client connects to.
func (c *Client) Path() string { return c.path }

// Hello returns the daemon's answer to the current connection's HELLO: the
// agreed version, the daemon's version, the caller's tenant and max_frame.
func (c *Client) Hello() HelloReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello
}

// Close closes the connection. Calls in flight fail; later calls return
// ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	conn := c.conn
	c.closed, c.conn = true, nil
	c.mu.Unlock()
	if conn != nil {
		conn.fail(ErrClosed)
	}
	return nil
}

// connection returns the open connection, dialing and negotiating HELLO when
// there is none. Callers wait on c.mu meanwhile, so nothing is sent before
// HELLO is answered (SPEC §6.1).
func (c *Client) connection(ctx context.Context, local time.Time) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.conn != nil && c.conn.usable() {
		return c.conn, nil
	}
	dctx, cancel := context.WithDeadline(ctx, local)
	defer cancel()
	nc, err := dial(dctx, c.path)
	if err != nil {
		return nil, err
	}
	conn := newConn(nc, c.path)
	buf := newFrameBuf(&Hello{MinVersion: ABIVersion, MaxVersion: ABIVersion, Client: c.name})
	f, err := conn.roundTrip(ctx, OpHello, buf, deadlineMs(time.Until(local)), local, 0)
	if err == nil && f.h.status != 0 {
		err = newStatusError(&f.h, f.payload)
	}
	var reply HelloReply
	if err == nil {
		if derr := Unmarshal(f.payload, &reply); derr != nil {
			err = &ProtocolError{Reason: "undecodable HelloReply: " + derr.Error()}
		} else if reply.Version != ABIVersion {
			err = &ProtocolError{Reason: fmt.Sprintf("mechad agreed to ABI version %d, outside the offered 1..1", reply.Version)}
		}
	}
	if err != nil {
		conn.fail(err)
		return nil, err
	}
	conn.version, conn.maxFrame = reply.Version, reply.MaxFrame
	c.conn, c.hello = conn, reply
	return conn, nil
}

// CallOption adjusts one call.
type CallOption func(*callOpts)

type callOpts struct {
	store string
	etag  *string
	ttlMs *uint64
	wait  time.Duration
	retry *bool
}

// WithStore selects the component (store) by name; the default, "", is the
// family's first configured component.
func WithStore(name string) CallOption { return func(o *callOpts) { o.store = name } }

// WithETag makes Set or Delete conditional: it applies only if the key's
// current ETag equals etag, else the call fails with ErrEtagMismatch. It also
// makes the call safe to retry.
func WithETag(etag string) CallOption { return func(o *callOpts) { o.etag = &etag } }

// WithTTL makes a Set's key expire d after the write (rounded up to whole
// milliseconds). Without it the key never expires, and any earlier TTL is
// cleared. A d <= 0 is sent as 0, which the daemon rejects.
func WithTTL(d time.Duration) CallOption {
	return func(o *callOpts) { ms := durationMs(d); o.ttlMs = &ms }
}

// WithWait makes TryLock wait up to d for a held lock. When the context has
// no deadline, the call's timeout grows by d; with a deadline, the deadline
// must leave more than d.
func WithWait(d time.Duration) CallOption { return func(o *callOpts) { o.wait = d } }

// WithRetry overrides whether the call is retried on UNAVAILABLE. By default
// reads, writes carrying an ETag (for BulkSet and Transact: any item
// carrying one) and NextID(s) are retried, other writes, locks and admin
// operations are not. A write answered UNAVAILABLE may or may not have been
// applied; retry one only if applying it twice is harmless to you.
func WithRetry(on bool) CallOption { return func(o *callOpts) { o.retry = &on } }

func durationMs(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}

func collect(opts []CallOption) callOpts {
	var o callOpts
	for _, f := range opts {
		f(&o)
	}
	return o
}

// spec describes one call for do.
type spec struct {
	opcode     uint16
	req        Message       // nil: empty payload
	reply      Message       // nil: empty payload expected
	idempotent bool          // retried on UNAVAILABLE unless WithRetry says otherwise
	missingOK  bool          // NOT_FOUND is an answer (found = false), not an error
	timeout    time.Duration // default deadline; 0 = the client's
	extra      time.Duration // added to the default deadline (a lock's wait)
	stream     int           // buffer of the stream the answer opens; 0 = default
}

// backoff returns the pause before retry number attempt (0-based): 10 ms
// doubling to 500 ms, jittered to 50–100 % so that clients that failed
// together do not retry together.
func backoff(attempt int) time.Duration {
	base := 500 * time.Millisecond
	if attempt < 6 {
		base = 10 * time.Millisecond << uint(attempt)
	}
	jitterMu.Lock()
	j := jitter.Int63n(int64(base/2) + 1)
	jitterMu.Unlock()
	return base/2 + time.Duration(j)
}

// Go 1.19's global math/rand source is not seeded, so every process would
// draw the same "jitter"; this one is.
var (
	jitterMu sync.Mutex
	jitter   = rand.New(rand.NewSource(time.Now().UnixNano()))
)

// do runs one call within its deadline, retrying UNAVAILABLE when allowed,
// and decodes an OK answer into s.reply. It returns found = false (and no
// error) for NOT_FOUND when s.missingOK. The returned stream is set when the
// answer opened one.
func (c *Client) do(ctx context.Context, s *spec, o *callOpts) (found bool, st *stream, err error) {
	timeout := s.timeout
	if timeout == 0 {
		timeout = c.timeout
	}
	deadline, hasDeadline := ctx.Deadline()
	local := deadline
	if !hasDeadline {
		deadline = time.Now().Add(timeout + s.extra)
		local = deadline.Add(grace)
	}
	retry := s.idempotent
	if o != nil && o.retry != nil {
		retry = *o.retry
	}
	buf := newFrameBuf(s.req)
	for attempt := 0; ; attempt++ {
		var f frame
		f, err = c.exchange(ctx, s.opcode, buf, deadline, local, s.stream)
		if err != nil {
			return false, nil, err
		}
		if f.h.status == 0 {
			if s.reply == nil {
				if len(f.payload) != 0 {
					return false, nil, &ProtocolError{Reason: fmt.Sprintf("%s answered %d bytes where the payload is empty", opName(s.opcode), len(f.payload))}
				}
			} else if derr := Unmarshal(f.payload, s.reply); derr != nil {
				return false, nil, &ProtocolError{Reason: fmt.Sprintf("undecodable answer to %s: %v", opName(s.opcode), derr)}
			}
			return true, f.stream, nil
		}
		se := newStatusError(&f.h, f.payload)
		if se.Status == StatusNotFound && s.missingOK {
			return false, nil, nil
		}
		if se.Status != StatusUnavailable || !retry {
			return false, nil, se
		}
		pause := backoff(attempt)
		if time.Now().Add(pause).After(deadline) {
			return false, nil, se // no time left for another try
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, nil, se
		}
	}
}

// exchange sends one request (buf: a frame buffer) on the current
// connection and returns the answering frame, whatever its status.
func (c *Client) exchange(ctx context.Context, opcode uint16, buf []byte, deadline, local time.Time, streamLimit int) (frame, error) {
	conn, err := c.connection(ctx, local)
	if err != nil {
		return frame{}, err
	}
	if n := len(buf) - HeaderSize; uint64(n) > uint64(conn.maxFrame) {
		// SPEC §6.4: the daemon would close the connection on it.
		return frame{}, &StatusError{Status: StatusResourceExhausted, Code: uint16(StatusResourceExhausted), Opcode: opcode,
			Message: fmt.Sprintf("payload of %d bytes exceeds max_frame %d (client side)", n, conn.maxFrame)}
	}
	left := time.Until(deadline)
	if left <= 0 {
		return frame{}, deadlineError(opcode, "the deadline passed before the request was sent")
	}
	return conn.roundTrip(ctx, opcode, buf, deadlineMs(left), local, streamLimit)
}

// openStream sends a request that opens a stream (SPEC §6.11), decoding the
// opening answer into s.reply. The stream has no deadline once open.
func (c *Client) openStream(ctx context.Context, s *spec, o *callOpts) (*stream, error) {
	_, st, err := c.do(ctx, s, o)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, &ProtocolError{Reason: fmt.Sprintf("%s answered OK without opening a stream", opName(s.opcode))}
	}
	return st, nil
}
