"""pybox speed at scale, in one run: a table (and JSON) of what a sandbox costs to start,
to keep and to use, beside the stock kernel gateway from the same image.

    python benchmarks/bench_speed.py                  # --runs 10000 --cold 5 --concurrent 16
    python benchmarks/bench_speed.py --soak 1000      # also the 1,000-sandbox pool soak
    python benchmarks/bench_speed.py --runs 1000 --cold 3 --json speed.json   # quicker

Rows (pybox, and where it applies the stock gateway: the same image's ``jupyter
kernelgateway`` with no pybox configuration, started as a container by the same backend):
- cold start: ``Sandbox()`` -> first ``print(1)`` result, median of --cold;
- CPU-seconds per start: the container's CPU time (its cgroup, read inside it) once the
  first result is in, median of the cold starts;
- idle memory per sandbox: the container's memory (cgroup usage without inactive file
  cache) 2 s after its first result;
- N concurrent opens: wall time for --concurrent sandboxes opened at once from threads,
  each to its first result;
- pool: ``pybox.Pool`` acquire -> first result from a warm, quiet pool;
- new kernel: ``sb.kernel()`` -> first result in a running sandbox: the first one, and
  later ones (median), each after a pause (a kernel is opened by code, not in a loop);
- ``print(i)`` round trip median and p99 over --runs, every output checked;
- 10 MB of stdout: MB/s, byte-exact;
- client peak RSS; and, with --soak N, the pool soak (benchmarks/soak_pool.py).

Absolute times vary between machines: compare the ratios to the stock gateway, measured
in the same run. ipybox is not measured: it needs its own image from a registry.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pybox

sys.path.insert(0, str(Path(__file__).parent))
from bench import StockGateway, percentile, round_trips, throughput_figures  # noqa: E402
from bench_pool import pool_acquires  # noqa: E402

#: Read inside the container: its CPU time (s) and memory without inactive file cache
#: (MiB), from cgroup v1 or v2.
CGROUP_FIGURES = r"""
def _figures():
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None
    usage = read('/sys/fs/cgroup/cpuacct/cpuacct.usage')
    if usage is not None:
        cpu = int(usage) / 1e9
        stat = dict(line.split() for line in read('/sys/fs/cgroup/memory/memory.stat').splitlines())
        memory = int(read('/sys/fs/cgroup/memory/memory.usage_in_bytes')) - int(stat['total_inactive_file'])
    else:
        stat = dict(line.split() for line in read('/sys/fs/cgroup/cpu.stat').splitlines())
        cpu = int(stat['usage_usec']) / 1e6
        mstat = dict(line.split() for line in read('/sys/fs/cgroup/memory.stat').splitlines())
        memory = int(read('/sys/fs/cgroup/memory.current')) - int(mstat['inactive_file'])
    print(cpu, memory / 2**20)
_figures()
del _figures
"""


def cgroup_figures(kernel: pybox.Kernel) -> tuple[float, float]:
    cpu, memory = kernel.run(CGROUP_FIGURES, timeout=60).text.split()
    return float(cpu), float(memory)


def ms(seconds: float) -> float:
    return seconds * 1000


def cold_starts(count: int, image: str, backend: str | None) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"start": [], "cpu": [], "memory": []}
    for _ in range(count):
        started = time.perf_counter()
        with pybox.Sandbox(image=image, backend=backend) as sb:
            assert sb.run("print(1)").text == "1"
            figures["start"].append(time.perf_counter() - started)
            cpu, _ = cgroup_figures(sb.default_kernel)
            figures["cpu"].append(cpu)
            time.sleep(2)
            figures["memory"].append(cgroup_figures(sb.default_kernel)[1])
    return figures


def concurrent_opens(count: int, image: str, backend: str | None) -> float:
    errors: list[BaseException] = []
    opened: list[pybox.Sandbox] = []
    lock = threading.Lock()

    def open_one() -> None:
        try:
            sb = pybox.Sandbox(image=image, backend=backend).start()
            with lock:
                opened.append(sb)
            assert sb.run("print(1)").text == "1"
        except BaseException as exc:  # reported below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for sb in opened:
        sb.close()
    if errors:
        raise SystemExit(f"{len(errors)} of {count} concurrent opens failed: {errors[0]!r}")
    return elapsed


def new_kernels(open_kernel: Callable[[], pybox.Kernel], count: int) -> list[float]:
    """``open_kernel()`` -> first result, ``count`` times."""
    times = []
    for _ in range(count):
        time.sleep(0.5)  # a kernel is opened by code now and then, not in a tight loop
        started = time.perf_counter()
        kernel = open_kernel()
        assert kernel.run("print(2)").text == "2"
        times.append(time.perf_counter() - started)
        kernel.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="print(i) round trips (default 10000)")
    parser.add_argument("--stock-runs", type=int, default=500, help="round trips through the stock gateway")
    parser.add_argument("--cold", type=int, default=5, help="cold starts (default 5)")
    parser.add_argument("--concurrent", type=int, default=16, help="sandboxes opened at once (default 16)")
    parser.add_argument("--kernels", type=int, default=10, help="new kernels opened (default 10)")
    parser.add_argument("--acquires", type=int, default=20, help="pool acquires (default 20)")
    parser.add_argument("--soak", type=int, default=0, help="sandboxes through a pool of 4 (default 0: no soak)")
    parser.add_argument("--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--json", default="bench_speed.json", help="where to write the figures")
    args = parser.parse_args()

    print(f"pybox {pybox.__version__}, image {args.image}, backend {args.backend or 'default'}, "
          f"{platform.platform()}", flush=True)
    rows: list[tuple[str, float | None, float | None, str]] = []  # name, pybox, stock, unit

    cold = cold_starts(args.cold, args.image, args.backend)
    stock = StockGateway(args.image, args.backend)
    try:
        stock_cpu, stock_memory = cgroup_figures(stock.first)
        time.sleep(2)
        stock_memory = cgroup_figures(stock.first)[1]
        rows.append(("cold start -> first result", ms(statistics.median(cold["start"])), ms(stock.cold_start), "ms"))
        rows.append(("CPU-seconds per start", statistics.median(cold["cpu"]), stock_cpu, "s"))
        rows.append(("idle memory per sandbox", statistics.median(cold["memory"]), stock_memory, "MiB"))
        stock_kernels = new_kernels(stock.new_kernel, args.kernels)
        stock_times, stock_lost = round_trips(stock.first, args.stock_runs)
    finally:
        stock.close()
    print("cold starts, stock gateway: done", flush=True)

    concurrent = concurrent_opens(args.concurrent, args.image, args.backend)
    rows.append((f"{args.concurrent} concurrent opens, each to its first result", ms(concurrent), None, "ms"))
    with pybox.Pool(size=2, image=args.image, backend=args.backend) as pool:
        totals, _ = pool_acquires(pool, args.acquires, quiet=True)
    rows.append(("pool (size 2, warm): acquire -> first result", ms(statistics.median(totals)), None, "ms"))
    print("concurrent opens, pool: done", flush=True)

    with pybox.Sandbox(image=args.image, backend=args.backend) as sb:
        kernels = new_kernels(sb.kernel, args.kernels)
        rows.append(("new kernel -> first result, the first", ms(kernels[0]), ms(stock_kernels[0]), "ms"))
        rows.append(("new kernel -> first result, later (median)", ms(statistics.median(kernels[1:])),
                     ms(statistics.median(stock_kernels[1:])), "ms"))
        times, lost = round_trips(sb.default_kernel, args.runs)
        rows.append((f"print(i) round trip median ({args.runs} runs, {lost} lost)", ms(statistics.median(times)),
                     ms(statistics.median(stock_times)), "ms"))
        rows.append(("print(i) round trip p99", ms(percentile(times, 99)), ms(percentile(stock_times, 99)), "ms"))
        size, elapsed, exact = throughput_figures(sb)
        rows.append((f"10 MB stdout (byte-exact: {exact})", size / 1e6 / elapsed, None, "MB/s"))
    rows.append(("client peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None, "MB"))
    soak: dict[str, Any] | None = None
    if args.soak:
        out = Path(args.json).with_suffix(".soak.json")
        command = [sys.executable, str(Path(__file__).parent / "soak_pool.py"), "--count", str(args.soak),
                   "--image", args.image, "--json", str(out)] + (["--backend", args.backend] if args.backend else [])
        subprocess.run(command, check=False)
        soak = json.loads(out.read_text())
        rows.append((f"soak: {args.soak} sandboxes through a pool of 4, containers left", soak["containers_left"],
                     None, ""))
        rows.append(("soak: client RSS growth after warm-up", soak["rss_growth_after_warmup_mb"], None, "MB"))

    width = max(len(name) for name, *_ in rows)
    print(f"\n{'':{width}}  {'pybox':>10}  {'stock gateway':>13}  {'stock/pybox':>11}")
    for name, value, stock_value, unit in rows:
        mine = f"{value:.2f} {unit}".strip() if value is not None else "-"
        theirs = f"{stock_value:.2f} {unit}".strip() if stock_value is not None else "-"
        ratio = f"{stock_value / value:.2f}x" if value and stock_value else ""
        print(f"{name:{width}}  {mine:>10}  {theirs:>13}  {ratio:>11}")
    report = {"pybox": pybox.__version__, "image": args.image, "backend": args.backend or "default",
              "machine": platform.platform(),
              "rows": [{"figure": name, "pybox": value, "stock_gateway": stock_value, "unit": unit}
                       for name, value, stock_value, unit in rows],
              "soak": soak}
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
