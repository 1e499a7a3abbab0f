package mecha

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// frame is one frame read from the daemon. stream is set on the response that
// opened a stream (SPEC §6.11).
type frame struct {
	h       header
	payload []byte
	stream  *stream
}

// waiter is a request in flight: the opcode its answer must echo and where
// the reader delivers that answer (buffered, so the reader never blocks).
type waiter struct {
	opcode      uint16
	ch          chan frame
	streamLimit int // pushes to buffer if the answer opens a stream
}

// conn is one connection to the daemon. Any number of goroutines send on it
// (whole frames, under wmu); a single reader goroutine reads every frame and
// hands each answer to the waiter with its request id, so answers may arrive
// in any order (SPEC §1) and a slow request never holds up the others. The
// reader never blocks on a caller, which is what keeps the daemon's
// backpressure (SPEC §6.4) from turning into a deadlock.
type conn struct {
	nc       net.Conn
	path     string
	version  uint8  // negotiated by HELLO; fixed before the conn is shared
	maxFrame uint32 // from HELLO; checked by Client.exchange, which HELLO bypasses

	wmu sync.Mutex // one frame written at a time

	mu      sync.Mutex
	pending map[uint32]waiter
	streams map[uint32]*stream
	callees map[string]*stream // app id -> its registration stream (SPEC §7.8.3)
	lastID  uint32
	closing bool          // a connection-fatal answer arrived: send nothing more
	fatal   *StatusError  // that answer (SPEC §6.3, §6.4)
	err     error         // why the connection ended; set once
	done    chan struct{} // closed when err is set
}

func newConn(nc net.Conn, path string) *conn {
	c := &conn{
		nc:      nc,
		path:    path,
		version: ABIVersion,
		pending: make(map[uint32]waiter),
		streams: make(map[uint32]*stream),
		callees: make(map[string]*stream),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// usable reports whether new requests may be sent.
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.closing
}

func (c *conn) readLoop() {
	r := bufio.NewReaderSize(c.nc, 64<<10)
	var hb [HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			c.fail(&ConnectionError{Path: c.path, Err: lostReason(err)})
			return
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			c.fail(&ProtocolError{Reason: err.Error()})
			return
		}
		if h.payloadLen > maxIncoming {
			c.fail(&ProtocolError{Reason: fmt.Sprintf("frame of %d bytes exceeds the 64 MiB limit", h.payloadLen)})
			return
		}
		payload := make([]byte, h.payloadLen)
		if _, err := io.ReadFull(r, payload); err != nil {
			c.fail(&ConnectionError{Path: c.path, Err: lostReason(err)})
			return
		}
		if err := c.dispatch(h, payload); err != nil {
			c.fail(err)
			return
		}
	}
}

func lostReason(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("connection closed by mechad")
	}
	return err
}

// dispatch routes one frame. An error ends the connection.
func (c *conn) dispatch(h header, payload []byte) error {
	if h.flags&^(FlagResponse|FlagStream|FlagEnd) != 0 {
		return &ProtocolError{Reason: fmt.Sprintf("undefined flag bits %#02x", h.flags)}
	}
	// This client offers only version 1, so every frame, including the
	// connection-fatal ones, is version 1 (SPEC §2, §6.1).
	if h.version != ABIVersion {
		return &ProtocolError{Reason: fmt.Sprintf("frame of ABI version %d on a version %d connection", h.version, ABIVersion)}
	}
	if h.flags&FlagResponse == 0 {
		if h.flags == 0 && h.opcode == OpInvokeCall {
			c.routeCall(h, payload)
			return nil
		}
		if h.flags&FlagStream == 0 {
			return &ProtocolError{Reason: fmt.Sprintf("mechad sent a request frame (opcode %#06x)", h.opcode)}
		}
		// A push on a stream. One for an unknown stream belongs to a stream
		// this side already ended or never saw open (its opener gave up):
		// dropping it is all there is to do.
		c.mu.Lock()
		s := c.streams[h.requestID]
		if s != nil && h.flags&FlagEnd != 0 {
			delete(c.streams, h.requestID)
		}
		c.mu.Unlock()
		if s != nil {
			s.push(frame{h: h, payload: payload})
		}
		return nil
	}
	if h.opcode == 0 {
		// SPEC §6.3 (request id 0, bad magic) and §6.4 (the oversized frame's
		// id): the daemon answers what is in flight and then closes. Stop
		// sending; remember why, so the final "connection closed" says it.
		se := newStatusError(&h, payload)
		c.mu.Lock()
		c.closing = true
		if c.fatal == nil {
			c.fatal = se
		}
		w, ok := c.pending[h.requestID]
		delete(c.pending, h.requestID)
		c.mu.Unlock()
		if ok {
			w.ch <- frame{h: h, payload: payload}
		}
		return nil
	}
	c.mu.Lock()
	w, ok := c.pending[h.requestID]
	if ok && w.opcode != h.opcode {
		c.mu.Unlock()
		return &ProtocolError{Reason: fmt.Sprintf("answer to request %d has opcode %#06x, expected %#06x", h.requestID, h.opcode, w.opcode)}
	}
	delete(c.pending, h.requestID)
	var s *stream
	if h.flags&FlagStream != 0 && h.status == 0 {
		// Registered before the reader reads on, so no push can overtake it.
		s = newStream(c, h.requestID)
		if w.streamLimit > s.limit {
			s.limit = w.streamLimit
		}
		c.streams[h.requestID] = s
		if h.opcode == OpInvokeRegister {
			// The daemon may deliver a call right after this answer: the
			// app id must lead to the new stream before the next frame is
			// read, not once the caller of Register has run again.
			var reg RegisterReply
			if Unmarshal(payload, &reg) == nil {
				c.callees[reg.AppID] = s
			}
		}
	}
	c.mu.Unlock()
	if !ok {
		// Nobody waits (the caller's deadline passed). A stream it opened
		// would push forever: end it.
		if s != nil {
			go s.cancel(context.Background()) // best effort; its answer is not needed
		}
		return nil
	}
	w.ch <- frame{h: h, payload: payload, stream: s}
	return nil
}

// routeCall queues a call the daemon delivered (INVOKE_CALL, a request in the
// daemon's own id space) on its app id's registration stream, where
// Registration.Next reads it. A call nobody here serves is answered at once,
// so that its caller does not wait for its deadline.
func (c *conn) routeCall(h header, payload []byte) {
	var call InvokeCall
	if err := Unmarshal(payload, &call); err != nil {
		go c.answerCall(h.requestID, StatusInvalidArgument, &ErrorBody{Message: "undecodable InvokeCall: " + err.Error()})
		return
	}
	c.mu.Lock()
	s := c.callees[call.AppID]
	c.mu.Unlock()
	if s == nil || !s.pushCall(frame{h: h, payload: payload}) {
		go c.answerCall(h.requestID, StatusUnavailable, &ErrorBody{Message: fmt.Sprintf("this connection serves no app %q", call.AppID)})
	}
}

// answerCall writes the response to a delivered call: flags RESPONSE, opcode
// INVOKE_CALL, the call's request id, and InvokeReply (OK) or ErrorBody. The
// daemon never answers it.
func (c *conn) answerCall(requestID uint32, status Status, body Message) error {
	buf := newFrameBuf(body)
	h := header{version: c.version, flags: FlagResponse, opcode: OpInvokeCall, requestID: requestID,
		status: uint16(status), payloadLen: uint32(len(buf) - HeaderSize)}
	h.appendTo(buf[:0])
	c.wmu.Lock()
	// A daemon that stopped reading must not hold the callee for ever.
	_ = c.nc.SetWriteDeadline(time.Now().Add(DefaultTimeout))
	n, err := c.nc.Write(buf)
	c.wmu.Unlock()
	if err != nil {
		cerr := &ConnectionError{Path: c.path, Err: err}
		if n > 0 { // part of a frame went out: the stream is out of step
			c.fail(cerr)
		}
		return cerr
	}
	return nil
}

// fail ends the connection with err: callers waiting on it see done, and
// every open stream ends with err.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if c.fatal != nil {
		// The daemon told us why before closing: keep that as the cause.
		err = &ConnectionError{Path: c.path, Err: c.fatal}
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*stream{}
	c.mu.Unlock()
	close(c.done)
	c.nc.Close()
	for _, s := range streams {
		s.end(err)
	}
}

// register reserves a request id: the next after the last, skipping 0 (the
// daemon's id for a connection-fatal answer) and any id still in flight or
// naming an open stream, so ids stay unique however long a request lasts.
func (c *conn) register(opcode uint16, streamLimit int) (uint32, chan frame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, nil, c.err
	}
	if c.closing {
		return 0, nil, &ConnectionError{Path: c.path, Err: c.fatal}
	}
	for {
		c.lastID++
		if c.lastID == 0 {
			continue
		}
		if _, busy := c.pending[c.lastID]; busy {
			continue
		}
		if _, busy := c.streams[c.lastID]; busy {
			continue
		}
		break
	}
	ch := make(chan frame, 1)
	c.pending[c.lastID] = waiter{opcode: opcode, ch: ch, streamLimit: streamLimit}
	return c.lastID, ch, nil
}

func (c *conn) unregister(id uint32) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// roundTrip sends one request and waits for its answer until local. buf is a
// whole frame whose header roundTrip fills in (so retries reuse the buffer).
// It returns a non-OK answer as a frame too: the caller decides what it means.
// streamLimit sizes the buffer of a stream the answer opens (0: default).
func (c *conn) roundTrip(ctx context.Context, opcode uint16, buf []byte, deadlineMs uint32, local time.Time, streamLimit int) (frame, error) {
	id, ch, err := c.register(opcode, streamLimit)
	if err != nil {
		return frame{}, err
	}
	h := header{version: c.version, opcode: opcode, requestID: id, deadlineMs: deadlineMs, payloadLen: uint32(len(buf) - HeaderSize)}
	h.appendTo(buf[:0])

	c.wmu.Lock()
	// The write deadline keeps a daemon that stopped reading from holding
	// the caller past its deadline.
	_ = c.nc.SetWriteDeadline(local)
	n, err := c.nc.Write(buf)
	c.wmu.Unlock()
	if err != nil {
		c.unregister(id)
		var ne net.Error
		if n == 0 && errors.As(err, &ne) && ne.Timeout() {
			return frame{}, deadlineError(opcode, "the request could not be sent before the deadline")
		}
		// Part of a frame may have gone out: the stream is out of step.
		cerr := &ConnectionError{Path: c.path, Err: err}
		c.fail(cerr)
		return frame{}, cerr
	}

	timer := time.NewTimer(time.Until(local))
	defer timer.Stop()
	select {
	case f := <-ch:
		return f, nil
	case <-c.done:
		select {
		case f := <-ch: // answered just before the connection ended
			return f, nil
		default:
		}
		return frame{}, c.err
	case <-timer.C:
		c.unregister(id)
		return frame{}, deadlineError(opcode, "no answer from mechad before the deadline")
	case <-ctx.Done():
		c.unregister(id)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return frame{}, deadlineError(opcode, "no answer from mechad before the context's deadline")
		}
		return frame{}, fmt.Errorf("mecha: %s: %w", opName(opcode), ctx.Err())
	}
}

// deadlineError is the client's own DEADLINE_EXCEEDED, for when the deadline
// passes before the daemon's answer arrives.
func deadlineError(opcode uint16, why string) *StatusError {
	return &StatusError{Status: StatusDeadlineExceeded, Code: uint16(StatusDeadlineExceeded), Opcode: opcode, Message: why + " (client side)"}
}

// deadlineMs converts the time left into the header's deadline_ms: rounded
// up, at least 1 (0 would mean "the daemon's default") and at most u32 max.
func deadlineMs(left time.Duration) uint32 {
	ms := (left + time.Millisecond - 1) / time.Millisecond
	if ms < 1 {
		return 1
	}
	if ms > 0xFFFFFFFF {
		return 0xFFFFFFFF
	}
	return uint32(ms)
}

// newFrameBuf returns a frame buffer: room for the header, then m's payload.
func newFrameBuf(m Message) []byte {
	e := encoder{b: make([]byte, HeaderSize, 128)}
	if m != nil {
		m.encode(&e)
	}
	return e.b
}

// dial connects to path. A missing socket or a refused connection means no
// daemon: that gets the "is mechad running?" error.
func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		return nc, nil
	}
	absent := errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
	return nil, &ConnectionError{Path: path, Err: err, absent: absent}
}
