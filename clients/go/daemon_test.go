package mecha

// Tests against the real mechad, started once for the package on a temporary
// socket with its embedded default configuration (durable state, lock,
// sequencer and pubsub stores, a memory configuration store, and secrets from
// the daemon's MECHA_SECRET_* environment). `go test -short` skips them.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const secretValue = "s3cr3t-from-env"

// mechadProc is one running mechad in a temporary directory.
type mechadProc struct {
	sock   string
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result
	dir    string
	log    *os.File
}

// daemon is the shared daemon on the embedded default configuration.
var daemon struct {
	once sync.Once
	proc *mechadProc
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	daemon.proc.stop()
	bindingsDaemon.proc.stop()
	os.Exit(code)
}

// mechad returns the socket of the shared daemon, starting it on first use.
func mechad(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no real daemon")
	}
	daemon.once.Do(func() { daemon.proc, daemon.err = startMechad(t, "", nil) })
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
	return daemon.proc.sock
}

// binaries returns the directory holding mechad and every module binary:
// $MECHA_BIN_DIR, else ${CARGO_TARGET_DIR:-/work/target}/debug, built there
// with cargo when something is missing. The build is retried because other
// crates of the workspace may be mid-edit.
func binaries(t testing.TB) (string, error) {
	root := repoRoot(t)
	mains, _ := filepath.Glob(filepath.Join(root, "modules", "*", "src", "main.rs"))
	want := []string{"mechad"}
	for _, m := range mains {
		want = append(want, "mecha-mod-"+filepath.Base(filepath.Dir(filepath.Dir(m))))
	}
	missing := func(dir string) []string {
		var out []string
		for _, b := range want {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				out = append(out, b)
			}
		}
		return out
	}
	if dir := os.Getenv("MECHA_BIN_DIR"); dir != "" {
		if m := missing(dir); len(m) > 0 {
			return "", fmt.Errorf("MECHA_BIN_DIR=%s lacks %s", dir, strings.Join(m, ", "))
		}
		return dir, nil
	}
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		target = "/work/target"
	}
	dir := filepath.Join(target, "debug")
	var lastErr error
	for attempt := 1; attempt <= 3 && len(missing(dir)) > 0; attempt++ {
		t.Logf("building %s with cargo (attempt %d)", strings.Join(missing(dir), ", "), attempt)
		cmd := exec.Command("cargo", "build", "--workspace", "--bins", "--exclude", "mecha-bench")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CARGO_TARGET_DIR="+target)
		out, err := cmd.CombinedOutput()
		if err == nil {
			lastErr = nil
			break
		}
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		lastErr = fmt.Errorf("cargo build failed: %v\n%s", err, out)
		time.Sleep(15 * time.Second)
	}
	if m := missing(dir); len(m) > 0 {
		if lastErr != nil {
			return "", lastErr
		}
		return "", fmt.Errorf("%s lacks %s after building", dir, strings.Join(m, ", "))
	}
	return dir, nil
}

// startMechad starts mechad in a new temporary directory: with the YAML
// configuration that config returns for that directory, or on its embedded
// default when config is nil.
func startMechad(t testing.TB, name string, config func(dir string) (string, error)) (*mechadProc, error) {
	bins, err := binaries(t)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mecha-go-"+name)
	if err != nil {
		return nil, err
	}
	p := &mechadProc{dir: dir, sock: filepath.Join(dir, "mecha.sock")}
	log, err := os.Create(filepath.Join(dir, "mechad.log"))
	if err != nil {
		return p, err
	}
	p.log = log
	args := []string{"--socket", p.sock, "--data-dir", filepath.Join(dir, "data"), "--module-dir", bins}
	if config != nil {
		text, err := config(dir)
		if err != nil {
			return p, err
		}
		path := filepath.Join(dir, "mecha.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			return p, err
		}
		args = append(args, "--config", path)
	}
	cmd := exec.Command(filepath.Join(bins, "mechad"), args...)
	// The daemon reads MECHA_* settings from the environment; only the
	// secret the tests read may come through.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MECHA_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "MECHA_SECRET_DB_PASSWORD="+secretValue)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return p, err
	}
	p.cmd = cmd
	p.exited = make(chan error, 1)
	go func() { p.exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-p.exited:
			p.cmd = nil
			out, _ := os.ReadFile(log.Name())
			return p, fmt.Errorf("mechad exited (%v):\n%s", err, out)
		default:
		}
		if c, err := dial(context.Background(), p.sock); err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			return p, errors.New("mechad did not create its socket within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the daemon (SIGTERM, then SIGKILL after 15 s) and removes its
// directory; nil does nothing.
func (p *mechadProc) stop() {
	if p == nil {
		return
	}
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if p.log != nil {
		p.log.Close()
	}
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
}

// client dials the shared daemon; the connection closes with the test.
func client(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(context.Background(), mechad(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// key returns a key (or resource, topic, sequence) no other test uses: the
// daemon and its durable stores live for the whole run.
func key(t *testing.T) string {
	return fmt.Sprintf("go-%s-%d", t.Name(), time.Now().UnixNano())
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDaemonHelloPingStatus(t *testing.T) {
	c, ctx := client(t), context.Background()
	h := c.Hello()
	if h.Version != 1 || !strings.HasPrefix(h.Tenant, "uid:") || h.MaxFrame < 4<<20 || h.DaemonVersion == "" {
		t.Errorf("HELLO reply %+v", h)
	}
	must(t, c.Ping(ctx))
	st, err := c.Status(ctx)
	must(t, err)
	names := map[string]bool{}
	for _, m := range st.Modules {
		names[m.Name] = true
	}
	for _, want := range []string{"state", "lock", "sequencer", "secrets"} {
		if !names[want] {
			t.Errorf("STATUS lacks module %s: %+v", want, st.Modules)
		}
	}
	if st.PID == 0 {
		t.Errorf("STATUS pid 0")
	}
}

func TestDaemonStateRoundTrip(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	if e, err := c.Get(ctx, k); e != nil || err != nil {
		t.Fatalf("Get of a missing key: %v, %v; want nil, nil", e, err)
	}
	value := []byte("\x00hello\xff")
	etag, err := c.Set(ctx, k, value)
	must(t, err)
	e, err := c.Get(ctx, k)
	must(t, err)
	if e == nil || !bytes.Equal(e.Value, value) || e.ETag != etag {
		t.Fatalf("Get = %+v, want %q with etag %q", e, value, etag)
	}
	if _, err := c.Set(ctx, k, nil); err != nil { // the empty value is a value
		t.Fatal(err)
	}
	if e, _ := c.Get(ctx, k); e == nil || len(e.Value) != 0 {
		t.Fatalf("empty value read back as %+v", e)
	}
	existed, err := c.Delete(ctx, k)
	must(t, err)
	again, err := c.Delete(ctx, k)
	must(t, err)
	if !existed || again {
		t.Errorf("Delete = %v then %v; want true then false", existed, again)
	}

	etags, err := c.BulkSet(ctx, []SetItem{{Key: k + "/a", Value: []byte("A")}, {Key: k + "/b", Value: []byte("B")}})
	must(t, err)
	items, err := c.BulkGet(ctx, []string{k + "/a", k + "/missing", k + "/b"})
	must(t, err)
	if len(etags) != 2 || len(items) != 3 || items[0].Entry == nil || string(items[0].Entry.Value) != "A" ||
		items[0].Entry.ETag != etags[0] || items[1].Key != k+"/missing" || items[1].Entry != nil ||
		items[2].Entry == nil || string(items[2].Entry.Value) != "B" {
		t.Errorf("BulkGet = %+v (etags %v)", items, etags)
	}
}

func TestDaemonETagConflict(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	first, err := c.Set(ctx, k, []byte("1"))
	must(t, err)
	second, err := c.Set(ctx, k, []byte("2"), WithETag(first))
	must(t, err)
	if second == first {
		t.Fatal("a write kept its ETag")
	}
	_, err = c.Set(ctx, k, []byte("3"), WithETag(first))
	var se *StatusError
	if !errors.Is(err, ErrEtagMismatch) || !errors.As(err, &se) || se.Status != StatusEtagMismatch || !strings.Contains(se.Message, k) {
		t.Fatalf("stale Set: %v; want ETAG_MISMATCH naming the key", err)
	}
	if _, err := c.Delete(ctx, k, WithETag(first)); !errors.Is(err, ErrEtagMismatch) {
		t.Fatalf("stale Delete: %v", err)
	}
	if e, _ := c.Get(ctx, k); e == nil || string(e.Value) != "2" {
		t.Fatalf("after the conflicts: %+v", e)
	}
	if ok, err := c.Delete(ctx, k, WithETag(second)); !ok || err != nil {
		t.Fatalf("Delete with the current ETag: %v, %v", ok, err)
	}
	if _, err := c.Set(ctx, k, []byte("x"), WithETag(second)); !errors.Is(err, ErrEtagMismatch) {
		t.Fatalf("conditional Set of a missing key: %v", err)
	}
}

func TestDaemonTTLExpiry(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	_, err := c.Set(ctx, k, []byte("short-lived"), WithTTL(200*time.Millisecond))
	must(t, err)
	if e, err := c.Get(ctx, k); e == nil || err != nil {
		t.Fatalf("just written: %v, %v", e, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e, err := c.Get(ctx, k)
		must(t, err)
		if e == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the key did not expire within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := c.Set(ctx, k, []byte("x"), WithTTL(0)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("TTL 0: %v; want INVALID_ARGUMENT", err)
	}
}

func TestDaemonTransactionAtomicity(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	a, b := k+"/a", k+"/b"
	etagA, err := c.Set(ctx, a, []byte("a1"))
	must(t, err)
	_, err = c.Set(ctx, b, []byte("b1"))
	must(t, err)
	stale := "no-such-etag"
	_, err = c.Transact(ctx, []TxOp{
		SetItem{Key: a, Value: []byte("a2")},
		SetItem{Key: b, Value: []byte("b2"), ETag: &stale},
	})
	if !errors.Is(err, ErrEtagMismatch) {
		t.Fatalf("transaction with a stale ETag: %v", err)
	}
	if e, _ := c.Get(ctx, a); e == nil || string(e.Value) != "a1" || e.ETag != etagA {
		t.Fatalf("a failed transaction changed %s: %+v", a, e)
	}
	etags, err := c.Transact(ctx, []TxOp{
		SetItem{Key: a, Value: []byte("a3"), ETag: &etagA},
		DeleteItem{Key: b},
	})
	must(t, err)
	if len(etags) != 2 || etags[0] == nil || etags[1] != nil {
		t.Fatalf("etags %v; want [Some, None]", etags)
	}
	if e, _ := c.Get(ctx, a); e == nil || string(e.Value) != "a3" || e.ETag != *etags[0] {
		t.Errorf("%s = %+v", a, e)
	}
	if e, _ := c.Get(ctx, b); e != nil {
		t.Errorf("%s survived its delete: %+v", b, e)
	}
}

// 100 goroutines share one client while a lock request waits in the lock
// module. The waiter can only finish once the lock is released after the 100
// calls, so they cannot have queued behind it: requests are pipelined.
func TestDaemonPipelining(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	res := k + "/lock"
	got, err := c.TryLock(ctx, res, "holder", time.Minute)
	must(t, err)
	if !got.Acquired {
		t.Fatal("fresh lock not acquired")
	}
	waiter := make(chan TryLockReply, 1)
	go func() {
		r, err := c.TryLock(ctx, res, "waiter", time.Second, WithWait(30*time.Second))
		if err != nil {
			t.Error(err)
		}
		waiter <- r
	}()
	time.Sleep(50 * time.Millisecond) // let the waiting request go out first
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			kk := fmt.Sprintf("%s/%d", k, i)
			v := []byte(fmt.Sprint(i))
			if _, err := c.Set(ctx, kk, v); err != nil {
				t.Error(err)
				return
			}
			e, err := c.Get(ctx, kk)
			if err != nil || e == nil || !bytes.Equal(e.Value, v) {
				t.Errorf("%s: %+v, %v", kk, e, err)
			}
		}(i)
	}
	wg.Wait()
	select {
	case r := <-waiter:
		t.Fatalf("the waiting TryLock finished (%+v) while the lock was held", r)
	default:
	}
	if st, err := c.Unlock(ctx, res, "holder"); err != nil || st != UnlockSuccess {
		t.Fatalf("Unlock: %v, %v", st, err)
	}
	if r := <-waiter; !r.Acquired {
		t.Errorf("the waiter did not get the released lock: %+v", r)
	}
}

func TestDaemonLocks(t *testing.T) {
	c, ctx, res := client(t), context.Background(), key(t)
	a, err := c.TryLock(ctx, res, "worker-a", 10*time.Second)
	must(t, err)
	if !a.Acquired || a.FencingToken == 0 {
		t.Fatalf("first TryLock: %+v", a)
	}
	b, err := c.TryLock(ctx, res, "worker-b", 10*time.Second)
	must(t, err)
	if b.Acquired || b.FencingToken != 0 {
		t.Fatalf("second owner got a held lock: %+v", b)
	}
	again, err := c.TryLock(ctx, res, "worker-a", 10*time.Second)
	must(t, err)
	if again.Acquired {
		t.Fatal("re-acquiring a held lock succeeded (SPEC §7.4: it is not a grant)")
	}
	if st, err := c.Unlock(ctx, res, "worker-b"); err != nil || st != LockBelongsToOthers {
		t.Fatalf("Unlock by another owner: %v, %v", st, err)
	}
	ext, err := c.ExtendLock(ctx, res, "worker-a", 20*time.Second)
	must(t, err)
	if ext.Status != UnlockSuccess || ext.FencingToken != a.FencingToken {
		t.Fatalf("ExtendLock: %+v; want Success with token %d", ext, a.FencingToken)
	}
	if st, err := c.Unlock(ctx, res, "worker-a"); err != nil || st != UnlockSuccess {
		t.Fatalf("Unlock by the holder: %v, %v", st, err)
	}
	if st, err := c.Unlock(ctx, res, "worker-a"); err != nil || st != LockDoesNotExist {
		t.Fatalf("second Unlock: %v, %v", st, err)
	}
	b, err = c.TryLock(ctx, res, "worker-b", time.Second)
	must(t, err)
	if !b.Acquired || b.FencingToken <= a.FencingToken {
		t.Fatalf("next grant %+v; want a token above %d", b, a.FencingToken)
	}
	if _, err := c.TryLock(ctx, res, "", time.Second); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty owner: %v", err)
	}
	// A wait longer than the context allows is refused before sending.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := c.TryLock(short, res, "worker-c", time.Second, WithWait(time.Second)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("wait beyond the deadline: %v", err)
	}
}

func TestDaemonSequencer(t *testing.T) {
	c, ctx, seq := client(t), context.Background(), key(t)
	first, err := c.NextID(ctx, seq)
	must(t, err)
	if first < 1 {
		t.Fatalf("first id %d", first)
	}
	prev := first
	for i := 0; i < 20; i++ {
		id, err := c.NextID(ctx, seq)
		must(t, err)
		if id <= prev {
			t.Fatalf("id %d after %d", id, prev)
		}
		prev = id
	}
	r, err := c.NextIDs(ctx, seq, 10)
	must(t, err)
	if r.First <= prev || r.Count != 10 {
		t.Fatalf("NextIDs = %+v after %d", r, prev)
	}
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := c.NextID(ctx, seq)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[id] || id < r.First+uint64(r.Count) {
				t.Errorf("id %d repeated or not above the earlier allocations", id)
			}
			seen[id] = true
		}()
	}
	wg.Wait()
	if _, err := c.NextIDs(ctx, seq, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("count 0: %v", err)
	}
}

func TestDaemonSecrets(t *testing.T) {
	c, ctx := client(t), context.Background()
	s, err := c.GetSecret(ctx, "DB_PASSWORD")
	must(t, err)
	if len(s) != 1 || s["DB_PASSWORD"] != secretValue {
		t.Fatalf("GetSecret = %v", s)
	}
	if _, err := c.GetSecret(ctx, "NO_SUCH_SECRET"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing secret: %v; want NOT_FOUND", err)
	}
	all, err := c.BulkGetSecrets(ctx)
	must(t, err)
	if all["DB_PASSWORD"]["DB_PASSWORD"] != secretValue {
		t.Errorf("BulkGetSecrets = %v", all)
	}
}

func TestDaemonErrors(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	if _, err := c.Get(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty key: %v", err)
	}
	_, err := c.Get(ctx, k, WithStore("no-such-store"))
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "no-such-store") {
		t.Errorf("unknown store: %v", err)
	}
	big := make([]byte, c.Hello().MaxFrame)
	if _, err := c.Set(ctx, k, big); !errors.Is(err, ErrResourceExhausted) {
		t.Errorf("payload over max_frame: %v", err)
	}
	must(t, c.Ping(ctx)) // the connection survived all of it
}

func TestDaemonAdmin(t *testing.T) {
	// The tests run as the daemon's own uid, so they are admins (SPEC §6.10).
	c, ctx, k := client(t), context.Background(), key(t)
	_, err := c.Set(ctx, k, []byte("kept"))
	must(t, err)
	pid, err := c.ModuleRestart(ctx, "state", "")
	must(t, err)
	if pid == 0 {
		t.Error("ModuleRestart returned pid 0")
	}
	if e, err := c.Get(ctx, k); err != nil || e == nil || string(e.Value) != "kept" {
		t.Fatalf("after the hot restart: %+v, %v", e, err)
	}
	if _, err := c.ModuleRestart(ctx, "no-such-module", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("restart of an unknown module: %v", err)
	}
	r, err := c.Reload(ctx)
	must(t, err)
	if len(r.Started)+len(r.Restarted)+len(r.Stopped) != 0 || len(r.Unchanged) == 0 {
		t.Errorf("Reload of an unchanged configuration: %+v", r)
	}
	must(t, c.Ping(ctx))
}

func TestDaemonPubsub(t *testing.T) {
	c, ctx, topic := client(t), context.Background(), key(t)
	sub, err := c.Subscribe(ctx, &SubscribeRequest{Topic: topic, Group: "g", MaxInFlight: 8})
	must(t, err)
	if sub.Reply.Group != "g" {
		t.Errorf("SubscribeReply %+v", sub.Reply)
	}
	for i := 0; i < 3; i++ {
		r, err := c.Publish(ctx, &PublishRequest{Topic: topic, Data: []byte(fmt.Sprint(i)), ContentType: "text/plain"})
		must(t, err)
		if r.Offset != uint64(i+1) {
			t.Errorf("publish %d stored at offset %d", i, r.Offset)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		d, err := sub.Next(rctx)
		must(t, err)
		if string(d.Data) != fmt.Sprint(i) || d.Topic != topic || d.Attempt != 1 || d.SpecVersion != "1.0" {
			t.Errorf("delivery %d: %+v", i, d)
		}
		must(t, sub.Ack(ctx, d))
	}
	must(t, sub.Cancel(ctx))
	if d, err := sub.Next(rctx); err != io.EOF {
		t.Errorf("after Cancel: %+v, %v; want io.EOF", d, err)
	}
}

func TestDaemonConfig(t *testing.T) {
	c, ctx, k := client(t), context.Background(), key(t)
	versions, err := c.ConfigSet(ctx, []ConfigSetItem{{Key: k + "/a", Value: "1"}}, nil)
	must(t, err)
	w, err := c.WatchConfig(ctx, []string{k + "/a", k + "/b"})
	must(t, err)
	if len(w.Snapshot) != 1 || w.Snapshot[0].Value != "1" || w.Snapshot[0].Version != versions[0] {
		t.Fatalf("snapshot %+v", w.Snapshot)
	}
	_, err = c.ConfigSet(ctx, []ConfigSetItem{{Key: k + "/b", Value: "2", Metadata: []Pair{{Key: "owner", Value: "go"}}}},
		[]string{k + "/a"})
	must(t, err)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u, err := w.Next(rctx)
	must(t, err)
	if u.Seq != 1 || len(u.Items) != 1 || u.Items[0].Key != k+"/b" || len(u.Deleted) != 1 || u.Deleted[0] != k+"/a" {
		t.Errorf("update %+v", u)
	}
	items, err := c.ConfigGet(ctx, []string{k + "/a", k + "/b"})
	must(t, err)
	if len(items) != 1 || items[0].Value != "2" || len(items[0].Metadata) != 1 {
		t.Errorf("ConfigGet = %+v", items)
	}
	must(t, w.Cancel(ctx))
	if _, err := w.Next(rctx); err != io.EOF {
		t.Errorf("after Cancel: %v", err)
	}
}

func TestDaemonAbsent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nobody-listens.sock")
	_, err := Dial(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "is mechad running? socket: "+path) || !errors.Is(err, ErrDaemonAbsent) {
		t.Fatalf("Dial of an absent daemon: %v", err)
	}
	t.Setenv("MECHA_SOCKET", path)
	if _, err := Dial(context.Background(), ""); !errors.Is(err, ErrDaemonAbsent) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Dial via $MECHA_SOCKET: %v", err)
	}
}

// bindingsDaemon is a second daemon, configured with a bindings.localstorage
// output binding "files" over an empty directory and a bindings.cron input
// binding "ticks" firing every second.
var bindingsDaemon struct {
	once sync.Once
	proc *mechadProc
	err  error
}

func bindingsClient(t *testing.T) *Client {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no real daemon")
	}
	bindingsDaemon.once.Do(func() {
		bindingsDaemon.proc, bindingsDaemon.err = startMechad(t, "bindings-", func(dir string) (string, error) {
			root := filepath.Join(dir, "files")
			if err := os.Mkdir(root, 0o700); err != nil {
				return "", err
			}
			doc := "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: %s}\n" +
				"spec: {type: %s, version: v1, metadata: [{name: %s, value: %q}]}\n---\n"
			// Bindings that reach outside mecha serve nobody without allowedTenants.
			files := "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: files}\n" +
				"spec: {type: bindings.localstorage, version: v1, metadata: " +
				fmt.Sprintf("[{name: rootPath, value: %q}, {name: allowedTenants, value: \"*\"}]}\n---\n", root)
			return files +
				fmt.Sprintf(doc, "ticks", "bindings.cron", "schedule", "@every 1s"), nil
		})
	})
	if bindingsDaemon.err != nil {
		t.Fatal(bindingsDaemon.err)
	}
	c, err := Dial(context.Background(), bindingsDaemon.proc.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fileName(name string) []Pair { return []Pair{{Key: "fileName", Value: name}} }

func TestDaemonBindingsLocalStorage(t *testing.T) {
	c, ctx := bindingsClient(t), context.Background()
	created, err := c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "create",
		Data: []byte("hello from Go"), Metadata: fileName("go.txt")})
	must(t, err)
	if len(created.Data) != 0 || len(created.Metadata) != 1 || created.Metadata[0] != (Pair{Key: "fileName", Value: "go.txt"}) {
		t.Errorf("create answered %+v", created)
	}
	got, err := c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "get", Metadata: fileName("go.txt")})
	must(t, err)
	if string(got.Data) != "hello from Go" {
		t.Errorf("get answered %q", got.Data)
	}
	listed, err := c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "list"})
	must(t, err)
	if !bytes.Contains(listed.Data, []byte(`"go.txt"`)) {
		t.Errorf("list answered %s", listed.Data)
	}
	_, err = c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "delete", Metadata: fileName("go.txt")})
	must(t, err)
	_, err = c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "files", Operation: "get", Metadata: fileName("go.txt")})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("get of a deleted file: %v", err)
	}
	if _, err := c.InvokeBinding(ctx, &InvokeBindingRequest{Name: "ticks", Operation: "get"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("invoking an input binding: %v", err)
	}
}

func TestDaemonBindingsCron(t *testing.T) {
	c := bindingsClient(t)
	// The wait only bounds a failure: a tick comes every second.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.SubscribeBinding(ctx, &BindingSubscribeRequest{Name: "ticks", MaxInFlight: 8})
	must(t, err)
	if sub.Reply.Name != "ticks" {
		t.Errorf("opening answer %+v", sub.Reply)
	}
	// next returns the next event with the wanted offset (any, for 0),
	// acknowledging the others on the way.
	next := func(offset uint64) *BindingEvent {
		t.Helper()
		for {
			ev, err := sub.Next(ctx)
			must(t, err)
			if offset == 0 || ev.Offset == offset {
				return ev
			}
			must(t, sub.Ack(ctx, ev))
		}
	}
	tick := next(0)
	if tick.Name != "ticks" || tick.Attempt != 1 || len(tick.Data) != 0 {
		t.Errorf("tick %+v", tick)
	}
	at := pairMap(tick.Metadata)["time"]
	if !strings.HasSuffix(at, "Z") || len(at) < 20 {
		t.Errorf("tick time %q", at)
	}
	must(t, sub.Ack(ctx, tick))
	if n, err := c.AckBinding(ctx, &BindingAckRequest{Name: "ticks", Items: []AckItem{{Offset: tick.Offset, Attempt: tick.Attempt}}}); err != nil || n != 0 {
		t.Errorf("a second ack: %d, %v (want 0 applied)", n, err)
	}
	nacked := next(0)
	must(t, sub.Nack(ctx, nacked))
	again := next(nacked.Offset)
	if again.Attempt != nacked.Attempt+1 {
		t.Errorf("redelivered as attempt %d after attempt %d", again.Attempt, nacked.Attempt)
	}
	must(t, sub.Ack(ctx, again))
	must(t, sub.Cancel(ctx))
	for {
		if _, err := sub.Next(ctx); err != nil {
			if err != io.EOF {
				t.Errorf("after cancel: %v", err)
			}
			break
		}
	}
}
