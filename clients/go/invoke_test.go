// Service invocation against the real mechad: Invoke, a registration
// answered by hand and by Serve (on the caller's own connection and on
// another), error statuses, and NOT_FOUND for an unknown app.

package mecha

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestDaemonInvokeByHand(t *testing.T) {
	callee, caller := client(t), client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	app := key(t)
	reg, err := callee.Register(ctx, app)
	must(t, err)
	if reg.Registered.AppID != app || reg.Registered.Node == "" {
		t.Errorf("RegisterReply %+v", reg.Registered)
	}
	apps, err := caller.Apps(ctx)
	must(t, err)
	found := false
	for _, a := range apps {
		found = found || (a.AppID == app && a.Local && a.Instances == 1)
	}
	if !found {
		t.Errorf("Apps lacks %s: %+v", app, apps)
	}

	got := make(chan *Call, 2)
	go func() {
		for i := 0; i < 2; i++ {
			call, err := reg.Next(ctx)
			if err != nil {
				t.Errorf("Next: %v", err)
				close(got)
				return
			}
			got <- call
			if call.Method == "shout" {
				_ = reg.Reply(call, &InvokeReply{Data: bytes.ToUpper(call.Data), ContentType: "text/plain"})
			} else {
				_ = reg.Fail(call, StatusInvalidArgument, "no such order")
			}
		}
	}()
	reply, err := caller.Invoke(ctx, app, "shout", []byte("hi"),
		&InvokeOptions{ContentType: "text/plain", Metadata: []Pair{{Key: "k", Value: "v"}}})
	must(t, err)
	if string(reply.Data) != "HI" || reply.ContentType != "text/plain" {
		t.Errorf("reply %+v", reply)
	}
	_, err = caller.Invoke(ctx, app, "order", nil, nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Status != StatusInvalidArgument || !strings.Contains(se.Message, "no such order") {
		t.Errorf("the callee's error: got %v", err)
	}
	call := <-got
	if call == nil || call.AppID != app || string(call.Data) != "hi" || call.ContentType != "text/plain" ||
		len(call.Metadata) != 1 || !strings.HasPrefix(call.TraceParent, "00-") || call.Deadline.IsZero() {
		t.Errorf("the delivered call: %+v", call)
	}
	must(t, reg.Cancel(ctx))
	if _, err := reg.Next(ctx); err != io.EOF {
		t.Errorf("Next after Cancel: %v, want io.EOF", err)
	}
	if _, err := caller.Invoke(ctx, app, "shout", nil, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Cancel: %v, want NOT_FOUND", err)
	}
}

func TestDaemonInvokeServeOnTheSameConnection(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	app := key(t)
	reg, err := c.Register(ctx, app)
	must(t, err)
	served := make(chan error, 1)
	go func() {
		served <- reg.Serve(ctx, func(_ context.Context, call *Call) (*InvokeReply, error) {
			if call.Method == "boom" {
				return nil, errors.New("kaput")
			}
			return &InvokeReply{Data: append([]byte("echo:"), call.Data...)}, nil
		})
	}()
	for i := 0; i < 5; i++ {
		reply, err := c.Invoke(ctx, app, "echo", []byte{byte('a' + i)}, nil)
		must(t, err)
		if want := "echo:" + string(rune('a'+i)); string(reply.Data) != want {
			t.Errorf("reply %q, want %q", reply.Data, want)
		}
	}
	_, err = c.Invoke(ctx, app, "boom", nil, nil)
	if !errors.Is(err, ErrInternal) || !strings.Contains(err.Error(), "kaput") {
		t.Errorf("a handler error: %v, want INTERNAL kaput", err)
	}
	must(t, reg.Cancel(ctx))
	if err := <-served; err != nil {
		t.Errorf("Serve after Cancel: %v", err)
	}
}

func TestDaemonInvokeUnknownApp(t *testing.T) {
	c, ctx := client(t), context.Background()
	if _, err := c.Invoke(ctx, key(t), "m", nil, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("an unknown app: %v, want NOT_FOUND", err)
	}
	if _, err := c.Invoke(ctx, "", "m", nil, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("an empty app id: %v, want INVALID_ARGUMENT", err)
	}
}

// A hot restart of the invoke module ends the registration with UNAVAILABLE
// (SPEC §7.8.1): Next registers again and the app id is served again.
func TestDaemonInvokeRegistersAgainAfterRestart(t *testing.T) {
	callee, caller := client(t), client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := key(t)
	reg, err := callee.Register(ctx, app)
	must(t, err)
	if _, err := caller.ModuleRestart(ctx, "invoke", ""); err != nil {
		t.Fatal(err)
	}
	replied := make(chan error, 1)
	go func() {
		for {
			r, err := caller.Invoke(ctx, app, "m", []byte("again"), nil)
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnavailable) {
				time.Sleep(50 * time.Millisecond) // not registered again yet
				continue
			}
			if err == nil && string(r.Data) != "ok" {
				err = errors.New("reply " + string(r.Data))
			}
			replied <- err
			return
		}
	}()
	call, err := reg.Next(ctx)
	must(t, err)
	if string(call.Data) != "again" {
		t.Errorf("call data %q", call.Data)
	}
	must(t, reg.Reply(call, &InvokeReply{Data: []byte("ok")}))
	must(t, <-replied)
	must(t, reg.Cancel(ctx))
}
