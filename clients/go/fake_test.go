package mecha

// Behaviour the real daemon cannot be made to show on demand — UNAVAILABLE,
// answers out of order, silence, connection-fatal frames, stream pushes —
// against a scripted fake daemon.

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeConn is the daemon side of one connection.
type fakeConn struct {
	nc  net.Conn
	wmu sync.Mutex
}

// reply sends a frame answering req with the given flags, status and payload.
func (f *fakeConn) reply(req header, flags uint8, status Status, payload []byte) {
	h := header{version: 1, flags: flags, opcode: req.opcode, requestID: req.requestID, status: uint16(status),
		payloadLen: uint32(len(payload))}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, _ = f.nc.Write(append(h.appendTo(nil), payload...))
}

func (f *fakeConn) ok(req header, m Message) {
	var p []byte
	if m != nil {
		p = Marshal(m)
	}
	f.reply(req, FlagResponse, StatusOK, p)
}

func (f *fakeConn) fail(req header, s Status, msg string) {
	f.reply(req, FlagResponse, s, Marshal(&ErrorBody{Message: msg}))
}

// fakeDaemon answers HELLO itself and hands every other request to handle,
// which runs on the connection's reading goroutine.
type fakeDaemon struct {
	path   string
	ln     net.Listener
	mu     sync.Mutex
	seen   []header
	handle func(f *fakeConn, h header, payload []byte)
}

func newFake(t *testing.T, handle func(f *fakeConn, h header, payload []byte)) *fakeDaemon {
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDaemon{path: path, ln: ln, handle: handle}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go d.serve(nc)
		}
	}()
	return d
}

func (d *fakeDaemon) serve(nc net.Conn) {
	defer nc.Close()
	f := &fakeConn{nc: nc}
	for {
		var hb [HeaderSize]byte
		if _, err := io.ReadFull(nc, hb[:]); err != nil {
			return
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			return
		}
		payload := make([]byte, h.payloadLen)
		if _, err := io.ReadFull(nc, payload); err != nil {
			return
		}
		if h.opcode == OpHello {
			f.ok(h, &HelloReply{Version: 1, DaemonVersion: "fake", Tenant: "uid:0", MaxFrame: 1024})
			continue
		}
		d.mu.Lock()
		d.seen = append(d.seen, h)
		d.mu.Unlock()
		d.handle(f, h, payload)
	}
}

func (d *fakeDaemon) requests() []header {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]header(nil), d.seen...)
}

func dialFake(t *testing.T, d *fakeDaemon, opts ...DialOption) *Client {
	c, err := Dial(context.Background(), d.path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRetryOfIdempotentCalls(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n%3 != 0 { // two UNAVAILABLE, then an answer
			f.fail(h, StatusUnavailable, "module state is restarting")
			return
		}
		switch h.opcode {
		case OpStateGet:
			f.ok(h, &StateEntry{Value: []byte("v"), ETag: "1"})
		case OpStateSet:
			f.ok(h, &SetReply{ETag: "2"})
		}
	})
	c, ctx := dialFake(t, d), context.Background()
	if e, err := c.Get(ctx, "k"); err != nil || e == nil || string(e.Value) != "v" {
		t.Fatalf("Get with two UNAVAILABLE first: %+v, %v", e, err)
	}
	if n := len(d.requests()); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}
	// An unconditional write is not retried …
	if _, err := c.Set(ctx, "k", []byte("v")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unconditional Set: %v; want UNAVAILABLE at once", err)
	}
	if n := len(d.requests()); n != 4 {
		t.Errorf("%d requests after the unconditional Set, want 4", n)
	}
	// … unless asked, and one carrying an ETag is.
	if _, err := c.Set(ctx, "k", []byte("v"), WithRetry(true)); err != nil {
		t.Fatalf("Set WithRetry(true): %v", err)
	}
	if _, err := c.Set(ctx, "k", []byte("v"), WithETag("1")); err != nil {
		t.Fatalf("Set WithETag: %v", err)
	}
	if n := len(d.requests()); n != 9 {
		t.Errorf("%d requests, want 9", n)
	}
}

func TestRetryStopsAtTheDeadline(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) { f.fail(h, StatusUnavailable, "down") })
	c := dialFake(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "k")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v; want the last UNAVAILABLE", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("gave up after %v, deadline was 300 ms", el)
	}
	n := len(d.requests())
	if n < 2 || n > 12 { // about 6 with 10 ms doubling backoff
		t.Errorf("%d attempts in 300 ms", n)
	}
	// Each attempt carries the time left, not the original budget.
	reqs := d.requests()
	if first, last := reqs[0].deadlineMs, reqs[len(reqs)-1].deadlineMs; first > 300 || last >= first {
		t.Errorf("deadline_ms went %d … %d", first, last)
	}
}

func TestLocksAreNotRetried(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) { f.fail(h, StatusUnavailable, "down") })
	c := dialFake(t, d)
	if _, err := c.TryLock(context.Background(), "r", "o", time.Second); !errors.Is(err, ErrUnavailable) {
		t.Fatal(err)
	}
	if n := len(d.requests()); n != 1 {
		t.Errorf("TryLock sent %d times", n)
	}
}

func TestDeadlinesInTheHeader(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {
		f.ok(h, &TryLockReply{Acquired: true, FencingToken: 1})
	})
	c := dialFake(t, d, WithTimeout(2*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	_, err := c.TryLock(ctx, "r", "o", time.Second)
	must(t, err)
	_, err = c.TryLock(context.Background(), "r", "o", time.Second, WithWait(3*time.Second))
	must(t, err)
	reqs := d.requests()
	if dl := reqs[0].deadlineMs; dl < 100 || dl > 250 {
		t.Errorf("context deadline 250 ms sent as %d ms", dl)
	}
	// No context deadline: the client's 2 s plus the lock's 3 s wait.
	if dl := reqs[1].deadlineMs; dl < 4500 || dl > 5000 {
		t.Errorf("2 s timeout + 3 s wait sent as %d ms", dl)
	}
}

func TestNoAnswerIsAClientSideDeadline(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {})
	c := dialFake(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "k")
	if !errors.Is(err, ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v; want a DEADLINE_EXCEEDED that is also context.DeadlineExceeded", err)
	}
	// A cancelled context is reported as such.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// Answers may come in any order (SPEC §1): the fake answers the first of two
// requests only after the second.
func TestAnswersOutOfOrder(t *testing.T) {
	var mu sync.Mutex
	var held *header
	d := newFake(t, func(f *fakeConn, h header, p []byte) {
		var req GetRequest
		must(t, Unmarshal(p, &req))
		mu.Lock()
		defer mu.Unlock()
		if held == nil {
			held = &h
			return
		}
		f.ok(h, &StateEntry{Value: []byte("second"), ETag: "2"})
		f.ok(*held, &StateEntry{Value: []byte("first"), ETag: "1"})
	})
	c := dialFake(t, d)
	first := make(chan string, 1)
	go func() {
		e, err := c.Get(context.Background(), "a")
		if err != nil {
			t.Error(err)
			first <- ""
			return
		}
		first <- string(e.Value)
	}()
	for len(d.requests()) == 0 {
		time.Sleep(time.Millisecond)
	}
	e, err := c.Get(context.Background(), "b")
	must(t, err)
	if string(e.Value) != "second" || <-first != "first" {
		t.Error("answers were not matched by request id")
	}
}

// SPEC §6.3: a connection-fatal answer (opcode 0), then the daemon closes.
// The call fails with the daemon's reason; the next call reconnects.
func TestConnectionFatalFrameAndReconnect(t *testing.T) {
	var mu sync.Mutex
	n := 0
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			f.reply(header{opcode: 0, requestID: h.requestID}, FlagResponse, StatusResourceExhausted,
				Marshal(&ErrorBody{Message: "payload too large"}))
			f.nc.Close()
			return
		}
		f.ok(h, nil)
	})
	c := dialFake(t, d)
	err := c.Ping(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Status != StatusResourceExhausted || se.Opcode != 0 {
		t.Fatalf("first Ping: %v", err)
	}
	// The next call may race the close: it either reconnects at once or
	// fails with the lost connection and the one after reconnects.
	if err := c.Ping(context.Background()); err != nil {
		var ce *ConnectionError
		if !errors.As(err, &ce) {
			t.Fatalf("second Ping: %v", err)
		}
		must(t, c.Ping(context.Background()))
	}
}

func TestPayloadOverMaxFrameIsRefusedLocally(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) { f.ok(h, &SetReply{ETag: "1"}) })
	c := dialFake(t, d) // the fake's max_frame is 1024
	if _, err := c.Set(context.Background(), "k", make([]byte, 2000)); !errors.Is(err, ErrResourceExhausted) {
		t.Fatalf("%v", err)
	}
	if len(d.requests()) != 0 {
		t.Error("the oversized frame was sent")
	}
}

func TestUnknownStatusIsInternal(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) { f.fail(h, Status(42), "from the future") })
	c := dialFake(t, d)
	err := c.Ping(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Status != StatusInternal || se.Code != 42 || !strings.Contains(se.Message, "from the future") {
		t.Fatalf("%v", err)
	}
}

func TestUndecodableAnswerIsAProtocolError(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {
		f.reply(h, FlagResponse, StatusOK, []byte{1, 2, 3}) // not a StateEntry
	})
	c := dialFake(t, d)
	var pe *ProtocolError
	if _, err := c.Get(context.Background(), "k"); !errors.As(err, &pe) {
		t.Fatalf("%v", err)
	}
}

// Stream frames (SPEC §6.11) go to their stream by id, interleaved with
// other answers; the END's status says how the stream ended.
func TestStreamsAreRoutedByID(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, p []byte) {
		switch h.opcode {
		case OpPubsubSubscribe:
			var req SubscribeRequest
			must(t, Unmarshal(p, &req))
			f.reply(h, FlagResponse|FlagStream, StatusOK, Marshal(&SubscribeReply{SubscriptionID: 1, Store: "s", Group: "g"}))
			for i := uint64(1); i <= 2; i++ {
				f.reply(h, FlagStream, StatusOK, Marshal(&Delivery{Topic: req.Topic, Offset: i, Attempt: 1}))
			}
			if req.Topic == "reset" {
				f.reply(h, FlagStream|FlagEnd, StatusUnavailable, Marshal(&ErrorBody{Message: "module exited"}))
			}
		case OpPing:
			f.ok(h, nil)
		case OpStreamCancel:
			var sc StreamCancel
			must(t, Unmarshal(p, &sc))
			f.ok(h, nil)
			f.reply(header{opcode: OpPubsubSubscribe, requestID: sc.StreamID}, FlagStream|FlagEnd, StatusOK, nil)
		}
	})
	c, ctx := dialFake(t, d), context.Background()
	sub, err := c.Subscribe(ctx, &SubscribeRequest{Topic: "t"})
	must(t, err)
	must(t, c.Ping(ctx)) // an ordinary answer between pushes
	for i := uint64(1); i <= 2; i++ {
		dl, err := sub.Next(ctx)
		must(t, err)
		if dl.Offset != i || dl.Topic != "t" {
			t.Errorf("push %d: %+v", i, dl)
		}
	}
	must(t, sub.Cancel(ctx))
	if _, err := sub.Next(ctx); err != io.EOF {
		t.Errorf("after END OK: %v", err)
	}

	reset, err := c.Subscribe(ctx, &SubscribeRequest{Topic: "reset"})
	must(t, err)
	for i := 0; i < 2; i++ { // queued pushes come before the end
		_, err := reset.Next(ctx)
		must(t, err)
	}
	if _, err := reset.Next(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("after END UNAVAILABLE: %v", err)
	}
}

// A consumer that does not read loses its stream with RESOURCE_EXHAUSTED
// after the pushes buffered, and the client cancels it (SPEC §6.11).
func TestStreamOverflowEndsTheStream(t *testing.T) {
	cancelled := make(chan uint32, 1)
	d := newFake(t, func(f *fakeConn, h header, p []byte) {
		switch h.opcode {
		case OpPubsubSubscribe:
			f.reply(h, FlagResponse|FlagStream, StatusOK, Marshal(&SubscribeReply{}))
			for i := 0; i < streamBuffer+10; i++ {
				f.reply(h, FlagStream, StatusOK, Marshal(&Delivery{Offset: uint64(i + 1)}))
			}
		case OpStreamCancel:
			var sc StreamCancel
			must(t, Unmarshal(p, &sc))
			f.ok(h, nil)
			cancelled <- sc.StreamID
		}
	})
	c, ctx := dialFake(t, d), context.Background()
	sub, err := c.Subscribe(ctx, &SubscribeRequest{Topic: "t"})
	must(t, err)
	select {
	case id := <-cancelled:
		if id != sub.s.id {
			t.Errorf("cancelled stream %d, not %d", id, sub.s.id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no STREAM_CANCEL after the overflow")
	}
	for i := 1; i <= streamBuffer; i++ {
		dl, err := sub.Next(ctx)
		must(t, err)
		if dl.Offset != uint64(i) {
			t.Fatalf("push %d has offset %d", i, dl.Offset)
		}
	}
	if _, err := sub.Next(ctx); !errors.Is(err, ErrResourceExhausted) {
		t.Errorf("after the overflow: %v", err)
	}
}

func TestConnectionLossFailsCallsAndStreams(t *testing.T) {
	d := newFake(t, func(f *fakeConn, h header, _ []byte) {
		if h.opcode == OpPubsubSubscribe {
			f.reply(h, FlagResponse|FlagStream, StatusOK, Marshal(&SubscribeReply{}))
			return
		}
		f.nc.Close()
	})
	c, ctx := dialFake(t, d), context.Background()
	sub, err := c.Subscribe(ctx, &SubscribeRequest{Topic: "t"})
	must(t, err)
	var ce *ConnectionError
	if err := c.Ping(ctx); !errors.As(err, &ce) {
		t.Fatalf("Ping on a closed connection: %v", err)
	}
	if _, err := sub.Next(ctx); !errors.As(err, &ce) {
		t.Errorf("stream after the connection closed: %v", err)
	}
	must(t, c.Close())
	if err := c.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestDefaultSocketPath(t *testing.T) {
	t.Setenv("MECHA_SOCKET", "/x/y.sock")
	if p := DefaultSocketPath(); p != "/x/y.sock" {
		t.Errorf("with $MECHA_SOCKET: %s", p)
	}
	t.Setenv("MECHA_SOCKET", "")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	want := "/run/user/1000/mecha/mecha.sock"
	if isRoot() {
		want = "/run/mecha/mecha.sock"
	}
	if p := DefaultSocketPath(); p != want {
		t.Errorf("DefaultSocketPath() = %s, want %s", p, want)
	}
}

func isRoot() bool { return os.Geteuid() == 0 }
