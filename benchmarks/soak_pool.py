"""pybox.Pool soak: many sandboxes acquired and released through a small pool.

    python benchmarks/soak_pool.py [--count 1000] [--size 4] [--threads 4] [--json soak_pool.json]

``--threads`` workers take ``--count`` sandboxes in all from one pool of ``--size``;
in each they check that nothing of an earlier user is there, run ``print(i)`` and check
its output. Then the pool is closed and it reports, through the real engine:
- containers of this process left on the engine (by pybox's owner labels): must be 0;
- client memory (RSS) growth from after the first tenth of the sandboxes (imports and
  first-use allocations done) to the end: must be at most 20 MB; from the start, too;
- pybox threads still alive, failed starts, wrong outputs. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from typing import Any

import pybox
from pybox.backend import LABEL
from pybox.ownership import SESSION, SESSION_LABEL
from pybox.plugins import get_plugins, resolve_backend_name

GROWTH_LIMIT_MB = 20.0


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def settled_rss_mb() -> float:
    gc.collect()
    return rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="sandboxes to take in all (default 1000)")
    parser.add_argument("--size", type=int, default=4, help="pool size (default 4)")
    parser.add_argument("--threads", type=int, default=4, help="workers acquiring at once (default 4)")
    parser.add_argument("--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--json", default="soak_pool.json", help="where to write the figures")
    args = parser.parse_args()

    backend_name = resolve_backend_name(args.backend)
    engine = get_plugins().backend(backend_name)()
    labels = {LABEL: "1", SESSION_LABEL: SESSION}
    warmup = max(1, args.count // 10)
    lock = threading.Lock()
    taken = 0
    wrong: list[str] = []
    rss: dict[str, float] = {}

    def take() -> int | None:
        nonlocal taken
        with lock:
            if taken >= args.count:
                return None
            taken += 1
            return taken

    def work(pool: pybox.Pool) -> None:
        while (number := take()) is not None:
            try:
                with pool.sandbox(timeout=600) as sb:
                    leftover = sb.run("print('marker' in dir())").text
                    text = sb.run(f"marker = {number}; print({number})").text
                if leftover != "False" or text != str(number):
                    raise AssertionError(f"sandbox {number}: marker seen {leftover!r}, output {text!r}")
            except Exception as exc:  # counted and shown, the soak goes on
                with lock:
                    wrong.append(f"{type(exc).__name__}: {exc}")
            if number == warmup:
                rss["after_warmup"] = settled_rss_mb()
            if number % 100 == 0:
                print(f"  {number} sandboxes, {time.monotonic() - started:.0f} s, RSS {rss_mb():.1f} MB, "
                      f"{pool.stats()}", flush=True)

    print(f"pybox {pybox.__version__}, image {args.image}, backend {backend_name}: {args.count} sandboxes through "
          f"a pool of {args.size}, {args.threads} workers")
    before = set(engine.list_containers(labels))
    threads_before = {t.ident for t in threading.enumerate()}
    rss["start"] = settled_rss_mb()
    started = time.monotonic()
    with pybox.Pool(size=args.size, image=args.image, backend=args.backend) as pool:
        workers = [threading.Thread(target=work, args=(pool,), name=f"soak-{n}") for n in range(args.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    elapsed = time.monotonic() - started
    stats = pool.stats()
    rss["end"] = settled_rss_mb()
    left = sorted(set(engine.list_containers(labels)) - before)
    threads_left = [t.name for t in threading.enumerate() if t.ident not in threads_before and t.name != "pybox-reaper"]
    engine.close()

    growth = rss["end"] - rss.get("after_warmup", rss["start"])
    checks = {
        "no container left": not left,
        f"RSS growth after warm-up <= {GROWTH_LIMIT_MB:g} MB": growth <= GROWTH_LIMIT_MB,
        "every output right, no state seen": not wrong,
        "no pybox thread left": not threads_left,
    }
    print(f"\n{args.count} sandboxes in {elapsed:.0f} s ({args.count / elapsed:.2f}/s)")
    print(f"pool stats: {stats}")
    print(f"containers of this process left on the engine: {len(left)}")
    print(f"client RSS: {rss['start']:.1f} MB at start, {rss.get('after_warmup', float('nan')):.1f} MB after "
          f"{warmup} sandboxes, {rss['end']:.1f} MB at the end: growth {growth:+.1f} MB after warm-up, "
          f"{rss['end'] - rss['start']:+.1f} MB from the start")
    print(f"threads left: {threads_left or 'none'}; wrong outputs or errors: {len(wrong)}")
    for line in wrong[:10]:
        print(f"  {line}")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    report: dict[str, Any] = {
        "pybox": pybox.__version__, "image": args.image, "backend": backend_name, "count": args.count,
        "pool_size": args.size, "threads": args.threads, "seconds": elapsed, "containers_left": len(left),
        "rss_mb": rss, "rss_growth_after_warmup_mb": growth, "threads_left": threads_left, "errors": wrong,
        "pool_stats": stats.__dict__, "checks": checks,
    }
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"figures written to {args.json}")
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
