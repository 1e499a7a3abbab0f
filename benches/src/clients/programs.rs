//! The small programs `mecha-bench clients` builds and runs for the clients
//! in other languages (Python, Go, C), each doing timed gets and printing its
//! raw per-get times, and the link flags of the C one.

/// The Python program: the sync client, `ops` gets after `warmup`.
pub(super) const PYTHON: &str = r#"import sys
import time

import mecha


def main() -> None:
    sock, key = sys.argv[1], sys.argv[2]
    ops, warmup, size = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    clock = time.perf_counter_ns
    with mecha.Client(sock) as client:
        def get() -> None:
            entry = client.get(key)
            if entry is None or len(entry.value) != size:
                raise SystemExit(f"get {key}: unexpected answer {entry!r}")

        for _ in range(warmup):
            get()
        samples = [0] * ops
        start = clock()
        for i in range(ops):
            t = clock()
            get()
            samples[i] = clock() - t
        elapsed = clock() - start
    sys.stdout.write(f"elapsed_ns {elapsed}\n" + "".join(f"{s}\n" for s in samples))


main()
"#;

/// The Go program: `mecha.dev/client`, `ops` gets after `warmup`. The
/// baseline program (for the client's share of the binary) is this one with
/// the client calls taken out: `GO_BASELINE`.
pub(super) const GO: &str = r#"package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	mecha "mecha.dev/client"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	sock, key := os.Args[1], os.Args[2]
	ops, _ := strconv.Atoi(os.Args[3])
	warmup, _ := strconv.Atoi(os.Args[4])
	size, _ := strconv.Atoi(os.Args[5])
	ctx := context.Background()
	c, err := mecha.Dial(ctx, sock)
	if err != nil {
		fail(err)
	}
	defer c.Close()
	get := func() {
		e, err := c.Get(ctx, key)
		if err != nil {
			fail(err)
		}
		if e == nil || len(e.Value) != size {
			fail(fmt.Errorf("get %s: unexpected answer", key))
		}
	}
	for i := 0; i < warmup; i++ {
		get()
	}
	samples := make([]int64, ops)
	start := time.Now()
	for i := range samples {
		t := time.Now()
		get()
		samples[i] = time.Since(t).Nanoseconds()
	}
	elapsed := time.Since(start).Nanoseconds()
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "elapsed_ns %d\n", elapsed)
	for _, s := range samples {
		fmt.Fprintln(w, s)
	}
	w.Flush()
}
"#;

/// The Go program without the client, for the size comparison only.
pub(super) const GO_BASELINE: &str = r#"package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	ctx := context.Background()
	ops, _ := strconv.Atoi(os.Args[3])
	samples := make([]int64, ops)
	start := time.Now()
	for i := range samples {
		t := time.Now()
		_ = ctx
		samples[i] = time.Since(t).Nanoseconds()
	}
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "elapsed_ns %d\n", time.Since(start).Nanoseconds())
	w.Flush()
}
"#;

/// The C program: libmecha, `ops` gets after `warmup`.
pub(super) const C: &str = r#"#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mecha.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void get(mecha_client *c, const char *key, size_t size) {
    uint8_t *value = NULL;
    size_t len = 0;
    mecha_status st = mecha_state_get(c, NULL, key, &value, &len, NULL);
    if (st != MECHA_OK) {
        fprintf(stderr, "get %s: %s: %s\n", key, mecha_status_name(st), mecha_last_error());
        exit(1);
    }
    if (len != size) {
        fprintf(stderr, "get %s: %zu bytes, expected %zu\n", key, len, size);
        exit(1);
    }
    mecha_free(value);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s SOCKET KEY OPS WARMUP SIZE\n", argv[0]);
        return 2;
    }
    const char *key = argv[2];
    long ops = atol(argv[3]), warmup = atol(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    mecha_client *c = NULL;
    mecha_status st = mecha_connect(argv[1], &c);
    if (st != MECHA_OK) {
        fprintf(stderr, "connect: %s\n", mecha_last_error());
        return 1;
    }
    for (long i = 0; i < warmup; i++)
        get(c, key, size);
    int64_t *samples = malloc((size_t)ops * sizeof *samples);
    if (samples == NULL)
        return 1;
    int64_t start = now_ns();
    for (long i = 0; i < ops; i++) {
        int64_t t = now_ns();
        get(c, key, size);
        samples[i] = now_ns() - t;
    }
    int64_t elapsed = now_ns() - start;
    mecha_close(c);
    printf("elapsed_ns %lld\n", (long long)elapsed);
    for (long i = 0; i < ops; i++)
        printf("%lld\n", (long long)samples[i]);
    free(samples);
    return 0;
}
"#;

/// The system libraries libmecha.a needs (clients/c/mecha.pc.in,
/// `Libs.private`), and the README's advice to drop unused sections.
pub(super) const C_LINK: [&str; 7] = [
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-Wl,--gc-sections",
];
