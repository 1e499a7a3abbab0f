package mecha

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// streamBuffer is how many pushes a stream holds for a consumer that has not
// read them yet (the Rust client's figure, SPEC §6.11). A subscription asking
// for more unacknowledged deliveries than this gets a buffer that size, so
// that a consumer keeping up never overflows (SPEC §7.3.5).
const streamBuffer = 256

// stream receives the frames the daemon sends on a stream this connection
// opened (SPEC §6.11). The reader routes every frame with the STREAM flag and
// without RESPONSE here by stream id (the opening request's id).
//
// The reader must never wait for a slow consumer (that would stall every
// other answer on the connection), so pushes go into a bounded queue. A push
// that finds it full is dropped, and the stream ends for the consumer with
// RESOURCE_EXHAUSTED after the pushes already queued, exactly as the daemon
// treats a connection that does not read; the client then cancels it. The
// END frame never needs queue room: it only sets ended.
type stream struct {
	c     *conn
	id    uint32
	limit int
	mu    sync.Mutex
	queue []frame
	ready chan struct{} // capacity 1: "the queue grew or the stream ended"
	ended bool
	err   error // once ended: nil after an OK END, else why it ended
}

func newStream(c *conn, id uint32) *stream {
	return &stream{c: c, id: id, limit: streamBuffer, ready: make(chan struct{}, 1)}
}

func (s *stream) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// push takes a frame from the reader: a push, or the END (whose status says
// why the stream ended; SPEC §6.11). It reports whether the frame was taken:
// false when it was dropped.
func (s *stream) push(f frame) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false // ended here already (overflow): drop until the daemon's END
	}
	if f.h.flags&FlagEnd != 0 {
		s.ended = true
		if f.h.status != 0 {
			s.err = newStatusError(&f.h, f.payload)
		}
		s.signal()
		return true
	}
	if len(s.queue) >= s.limit {
		s.ended = true
		s.err = &StatusError{Status: StatusResourceExhausted, Code: uint16(StatusResourceExhausted), Opcode: f.h.opcode,
			Message: fmt.Sprintf("stream %d ended: %d pushes were left unread and one was dropped (client side); open it again", s.id, s.limit)}
		go s.cancel(context.Background()) // best effort; the daemon's END then arrives and is dropped
		s.signal()
		return false
	}
	s.queue = append(s.queue, f)
	s.signal()
	return true
}

// pushCall queues a call delivered for the registration this stream is; false
// when it was not queued (the stream has ended, or it overflowed and ends
// now): the caller must then be answered, not left to its deadline. Calls
// count against the same bound as pushes (SPEC §7.8.3).
func (s *stream) pushCall(f frame) bool { return s.push(f) }

// end ends the stream with err (the connection was lost) unless it already
// ended; frames already queued are still delivered.
func (s *stream) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.ended, s.err = true, err
		s.signal()
	}
}

// next returns the next pushed frame; after the last one, io.EOF if the
// stream ended normally, or the error that ended it.
func (s *stream) next(ctx context.Context) (frame, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			f := s.queue[0]
			s.queue[0] = frame{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return f, nil
		}
		if s.ended {
			err := s.err
			s.mu.Unlock()
			if err == nil {
				err = io.EOF
			}
			return frame{}, err
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			return frame{}, ctx.Err()
		}
	}
}

// nextMessage decodes the next push into m.
func (s *stream) nextMessage(ctx context.Context, m Message) error {
	f, err := s.next(ctx)
	if err != nil {
		return err
	}
	if err := Unmarshal(f.payload, m); err != nil {
		return &ProtocolError{Reason: fmt.Sprintf("undecodable push on stream %d: %v", s.id, err)}
	}
	return nil
}

// cancel sends STREAM_CANCEL (SPEC §7.1.6); the END frame follows. NOT_FOUND
// (the stream has ended already) is not an error here.
func (s *stream) cancel(ctx context.Context) error {
	local, ok := ctx.Deadline()
	if !ok {
		local = time.Now().Add(DefaultTimeout)
	}
	buf := newFrameBuf(&StreamCancel{StreamID: s.id})
	f, err := s.c.roundTrip(ctx, OpStreamCancel, buf, deadlineMs(time.Until(local)), local, 0)
	if err != nil {
		return err
	}
	if f.h.status != 0 && Status(f.h.status) != StatusNotFound {
		return newStatusError(&f.h, f.payload)
	}
	return nil
}

// Subscription is an open PUBSUB_SUBSCRIBE stream: the deliveries of a
// consumer group's messages to this member (SPEC §7.3.2).
type Subscription struct {
	// Reply is the opening answer: subscription id, store and group.
	Reply SubscribeReply
	pushStream
}

// pushStream is what pub/sub and binding subscriptions share: the client
// their acks go through and the stream their pushes arrive on.
type pushStream struct {
	c *Client
	s *stream
}

// Cancel ends the subscription (STREAM_CANCEL). Pushes already on their way
// are still returned by Next, then io.EOF; what was not acknowledged is
// delivered again, to this or another subscriber.
func (p *pushStream) Cancel(ctx context.Context) error { return p.s.cancel(ctx) }

// Next returns the next delivery. When the stream has ended it returns
// io.EOF (cancelled), or a *StatusError: ErrUnavailable when the module
// restarted, ErrResourceExhausted when deliveries were left unread; in both
// cases subscribe again — nothing unacknowledged is lost, it is delivered
// again (SPEC §7.3.4). Deliveries must be acknowledged with Ack.
func (sub *Subscription) Next(ctx context.Context) (*Delivery, error) {
	var d Delivery
	if err := sub.s.nextMessage(ctx, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Ack acknowledges a delivery: its message is done for the group.
func (sub *Subscription) Ack(ctx context.Context, d *Delivery) error {
	return sub.ackOne(ctx, d, false)
}

// Nack rejects a delivery: the message is delivered again at once (or moves
// to the dead-letter topic).
func (sub *Subscription) Nack(ctx context.Context, d *Delivery) error {
	return sub.ackOne(ctx, d, true)
}

func (sub *Subscription) ackOne(ctx context.Context, d *Delivery, nack bool) error {
	_, err := sub.c.Ack(ctx, &AckRequest{Store: d.Store, Topic: d.Topic, Group: d.Group,
		Items: []AckItem{{Offset: d.Offset, Attempt: d.Attempt}}, Nack: nack})
	return err
}

// ConfigWatch is an open CONFIG_SUBSCRIBE stream (SPEC §7.6.2).
type ConfigWatch struct {
	// Snapshot is the watched items at the moment the watch started; every
	// later change arrives through Next.
	Snapshot []ConfigItem
	s        *stream
}

// Next returns the next change. Seq grows by one per update; a gap, or an
// end with ErrUnavailable (the module restarted) or ErrResourceExhausted (the
// watcher fell behind), means changes were missed: watch again and compare
// the new Snapshot with what you knew. io.EOF follows Cancel.
func (w *ConfigWatch) Next(ctx context.Context) (*ConfigUpdate, error) {
	var u ConfigUpdate
	if err := w.s.nextMessage(ctx, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// Cancel ends the watch (STREAM_CANCEL).
func (w *ConfigWatch) Cancel(ctx context.Context) error { return w.s.cancel(ctx) }
