"""pybox.Pool benchmark: acquire + first result from a warm pool, beside cold starts.

    python benchmarks/bench_pool.py [--acquires 100] [--cold 5] [--size 4] [--json bench_pool.json]

Rows, all through the real engine and image, measured in the same run:
- cold start: ``Sandbox()`` opened -> first ``print(1)`` result (the baseline);
- pool, idle: ``pool.acquire()`` -> first ``print(1)`` result, each taken when the pool is
  full and quiet (no start or removal in flight): what a caller sees from a warm pool;
- pool, refilling: the same, taken as soon as the pool is full again after the previous
  release, while the previous sandbox is still being removed (the engine busy).
Each row: median and p99 (ms), min and max; the ratio of cold to pool medians. Every
output is checked. The table is printed and the figures written as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import pybox


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def summary(times: list[float]) -> dict[str, Any]:
    ms = [t * 1000 for t in times]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "min_ms": min(ms),
            "max_ms": max(ms)}


def first_result(sb: pybox.Sandbox) -> None:
    text = sb.run("print(1)", timeout=60).text
    if text != "1":
        raise SystemExit(f"wrong output from a sandbox: {text!r}")


def cold_starts(count: int, image: str, backend: str | None) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with pybox.Sandbox(image=image, backend=backend) as sb:
            first_result(sb)
            times.append(time.perf_counter() - started)
    return times


def wait_for(pool: pybox.Pool, quiet: bool, timeout: float = 120.0) -> None:
    """Until the pool is full (and, with ``quiet``, nothing is being started or removed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = pool.stats()
        full = s.ready == s.size and s.starting == 0
        removed = s.destroyed == s.created - s.ready - s.in_use
        if full and (removed or not quiet):
            return
        time.sleep(0.01)
    raise SystemExit(f"the pool did not fill within {timeout:g} s: {pool.stats()}")


def pool_acquires(pool: pybox.Pool, count: int, quiet: bool) -> tuple[list[float], list[float]]:
    """(acquire + first result, acquire alone) for ``count`` sandboxes."""
    totals, acquires = [], []
    for _ in range(count):
        wait_for(pool, quiet)
        if quiet:
            time.sleep(0.2)  # let the engine settle after the last removal
        started = time.perf_counter()
        sb = pool.acquire(timeout=60)
        acquired = time.perf_counter()
        try:
            first_result(sb)
            totals.append(time.perf_counter() - started)
            acquires.append(acquired - started)
        finally:
            pool.release(sb)
    return totals, acquires


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acquires", type=int, default=100, help="acquires per pool row (default 100)")
    parser.add_argument("--cold", type=int, default=5, help="cold starts (default 5)")
    parser.add_argument("--size", type=int, default=4, help="pool size (default 4)")
    parser.add_argument("--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--json", default="bench_pool.json", help="where to write the figures")
    args = parser.parse_args()

    print(f"pybox {pybox.__version__}, image {args.image}, backend {args.backend or 'default'}, "
          f"pool size {args.size}")
    rows: dict[str, dict[str, Any]] = {}
    rows["cold start -> first result"] = summary(cold_starts(args.cold, args.image, args.backend))
    with pybox.Pool(size=args.size, image=args.image, backend=args.backend) as pool:
        totals, acquires = pool_acquires(pool, args.acquires, quiet=True)
        rows["pool, idle: acquire -> first result"] = summary(totals)
        rows["pool, idle: acquire alone"] = summary(acquires)
        totals, acquires = pool_acquires(pool, args.acquires, quiet=False)
        rows["pool, refilling: acquire -> first result"] = summary(totals)
        rows["pool, refilling: acquire alone"] = summary(acquires)
        stats = pool.stats()

    cold = rows["cold start -> first result"]["median_ms"]
    width = max(len(name) for name in rows)
    print(f"\n{'':{width}}  {'n':>5}  {'median ms':>10}  {'p99 ms':>9}  {'min ms':>8}  {'max ms':>8}  {'cold/this':>9}")
    for name, row in rows.items():
        print(f"{name:{width}}  {row['n']:>5}  {row['median_ms']:>10.1f}  {row['p99_ms']:>9.1f}  "
              f"{row['min_ms']:>8.1f}  {row['max_ms']:>8.1f}  {cold / row['median_ms']:>8.0f}x")
    target = rows["pool, idle: acquire -> first result"]["median_ms"]
    print(f"\ntarget: acquire + first result <= 50 ms median from a warm pool: {target:.1f} ms "
          f"({'met' if target <= 50 else 'NOT met'})")
    print(f"pool stats at the end: {stats}")
    report = {"pybox": pybox.__version__, "image": args.image, "backend": args.backend or "default",
              "pool_size": args.size, "machine": platform.platform(), "rows": rows,
              "target_met": target <= 50, "pool_stats": stats.__dict__}
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
