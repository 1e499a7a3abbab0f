"""Informal latency check of the Python client against a running mechad (not a test).

    python bench.py SOCKET [OPS]

Prints p50/p99 of sync ``get`` and ``ping`` round trips (one request at a time, like
mecha-bench's concurrency-1 scenarios, 100-byte value) and the ops/s of the asyncio
client with 64 requests in flight on one connection.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable

import mecha
import mecha.aio


def timed(fn: Callable[[], object], ops: int) -> list[float]:
    for _ in range(ops // 10):  # warm-up
        fn()
    samples = []
    for _ in range(ops):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(name: str, us: list[float]) -> None:
    q = statistics.quantiles(us, n=100)
    print(f"{name:<32} p50 {q[49]:8.1f} µs   p99 {q[98]:8.1f} µs   ({len(us)} ops)")


async def pipelined(path: str, ops: int) -> float:
    async with mecha.aio.Client(path) as c:
        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                await c.get("bench:py")
        start = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(ops)])
        return ops / (time.perf_counter() - start)


def main() -> None:
    path, ops = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with mecha.Client(path) as c:
        c.set("bench:py", bytes(100))
        report("sync ping", timed(c.ping, ops))
        report("sync get (100 B value)", timed(lambda: c.get("bench:py"), ops))
    print(f"{'asyncio get, 64 in flight':<32} {asyncio.run(pipelined(path, ops * 5)):8.0f} ops/s")


if __name__ == "__main__":
    main()
