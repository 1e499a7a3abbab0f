package mecha_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	mecha "mecha.dev/client"
)

// The README's example. Compiled by go test, not run (it needs a daemon).
func Example() {
	ctx := context.Background()
	c, err := mecha.Dial(ctx, "") // $MECHA_SOCKET, else the default socket
	if err != nil {
		log.Fatal(err) // "… is mechad running? socket: …"
	}
	defer c.Close()
	if _, err := c.Set(ctx, "order:1", []byte(`{"qty":3}`), mecha.WithTTL(time.Minute)); err != nil {
		log.Fatal(err)
	}
	entry, _ := c.Get(ctx, "order:1") // nil when missing
	_, err = c.Set(ctx, "order:1", []byte(`{"qty":4}`), mecha.WithETag(entry.ETag))
	if errors.Is(err, mecha.ErrEtagMismatch) {
		fmt.Println("changed meanwhile")
	}
	lock, _ := c.TryLock(ctx, "invoice:7", "worker-1", 10*time.Second)
	if lock.Acquired {
		fmt.Println("fencing token", lock.FencingToken)
		_, _ = c.Unlock(ctx, "invoice:7", "worker-1")
	}
	id, _ := c.NextID(ctx, "invoice")
	pw, _ := c.GetSecret(ctx, "DB_PASSWORD")
	fmt.Println(id, len(pw))
}
