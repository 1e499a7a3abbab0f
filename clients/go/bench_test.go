package mecha

import (
	"context"
	"sort"
	"testing"
	"time"
)

// BenchmarkDaemonStateGet measures sequential STATE_GET round trips against
// the real daemon and reports the latency percentiles. Informal: nothing is
// asserted. Run it with
//
//	go test -run '^$' -bench DaemonStateGet -benchtime 2000x
func BenchmarkDaemonStateGet(b *testing.B) {
	sock := mechad(b)
	ctx := context.Background()
	c, err := Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Set(ctx, "go-bench", []byte(`{"qty":3}`)); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 200; i++ { // warm up the connection and the module
		if _, err := c.Get(ctx, "go-bench"); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := c.Get(ctx, "go-bench"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
