package mecha

import (
	"context"
	"errors"
	"io"
	"reflect"
	"sync"
	"testing"
)

// The binding calls send their requests under the bindings opcodes, read
// the answers, and acknowledge an event by the name, offset and attempt its
// push carried; a reset stream ends with UNAVAILABLE, as pub/sub's does.
func TestBindingsAgainstAFake(t *testing.T) {
	var mu sync.Mutex
	var acks []BindingAckRequest
	d := newFake(t, func(f *fakeConn, h header, p []byte) {
		switch h.opcode {
		case OpBindingInvoke:
			var req InvokeBindingRequest
			must(t, Unmarshal(p, &req))
			f.ok(h, &InvokeBindingReply{Data: append([]byte(req.Operation+":"), req.Data...), Metadata: req.Metadata})
		case OpBindingSubscribe:
			var req BindingSubscribeRequest
			must(t, Unmarshal(p, &req))
			f.reply(h, FlagResponse|FlagStream, StatusOK, Marshal(&BindingSubscribeReply{SubscriptionID: 9, Name: req.Name}))
			f.reply(h, FlagStream, StatusOK, Marshal(&BindingEvent{Name: req.Name, Offset: 4, Attempt: 2,
				Metadata: []Pair{{Key: "time", Value: "2026-12-07T02:00:00Z"}}}))
			if req.Name == "reset" {
				f.reply(h, FlagStream|FlagEnd, StatusUnavailable, Marshal(&ErrorBody{Message: "module exited"}))
			}
		case OpBindingAck:
			var req BindingAckRequest
			must(t, Unmarshal(p, &req))
			mu.Lock()
			acks = append(acks, req)
			mu.Unlock()
			f.ok(h, &AckReply{Applied: 1})
		case OpStreamCancel:
			var sc StreamCancel
			must(t, Unmarshal(p, &sc))
			f.ok(h, nil)
			f.reply(header{opcode: OpBindingSubscribe, requestID: sc.StreamID}, FlagStream|FlagEnd, StatusOK, nil)
		}
	})
	c, ctx := dialFake(t, d), context.Background()

	r, err := c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "create", Data: []byte("x"),
		Metadata: []Pair{{Key: "fileName", Value: "a.txt"}}})
	must(t, err)
	if string(r.Data) != "create:x" || !reflect.DeepEqual(r.Metadata, []Pair{{Key: "fileName", Value: "a.txt"}}) {
		t.Errorf("InvokeBinding answered %+v", r)
	}

	sub, err := c.SubscribeBinding(ctx, &BindingSubscribeRequest{Name: "nightly", MaxInFlight: 8})
	must(t, err)
	if sub.Reply != (BindingSubscribeReply{SubscriptionID: 9, Name: "nightly"}) {
		t.Errorf("opening answer %+v", sub.Reply)
	}
	ev, err := sub.Next(ctx)
	must(t, err)
	if ev.Offset != 4 || ev.Attempt != 2 || ev.Metadata[0].Value != "2026-12-07T02:00:00Z" {
		t.Errorf("event %+v", ev)
	}
	must(t, sub.Ack(ctx, ev))
	must(t, sub.Nack(ctx, ev))
	mu.Lock()
	want := []BindingAckRequest{
		{Name: "nightly", Items: []AckItem{{Offset: 4, Attempt: 2}}},
		{Name: "nightly", Items: []AckItem{{Offset: 4, Attempt: 2}}, Nack: true},
	}
	if !reflect.DeepEqual(acks, want) {
		t.Errorf("acks sent %+v, want %+v", acks, want)
	}
	mu.Unlock()
	must(t, sub.Cancel(ctx))
	if _, err := sub.Next(ctx); err != io.EOF {
		t.Errorf("after END OK: %v", err)
	}

	reset, err := c.SubscribeBinding(ctx, &BindingSubscribeRequest{Name: "reset"})
	must(t, err)
	_, err = reset.Next(ctx) // the queued event comes before the end
	must(t, err)
	if _, err := reset.Next(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("after END UNAVAILABLE: %v", err)
	}
}
