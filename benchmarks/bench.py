"""pybox benchmark: prints cold start, round trip, throughput and lost outputs.

    python benchmarks/bench.py [--runs 10000] [--cold 5] [--backend docker]

Figures (all through the real engine and the built image):
- cold start: ``Sandbox()`` opened -> first ``run`` result (median of --cold starts);
- round trip of ``print(i)``: median and p99 over --runs runs, each checked for its
  exact output (a lost or misrouted output is counted, not hidden);
- 10 MB of stdout in one execution: MB/s, byte-exact check;
- a stress run: --stress executions across 8 kernels in 4 threads, every output
  checked (lost and misrouted counted);
- the same ``print(i)`` round trip through a stock, unconfigured kernel gateway
  (same image, the gateway started without pybox's configuration), in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import secrets
import statistics
import time

import pybox
from pybox.backend import ContainerSpec
from pybox.kernel.gateway import Gateway
from pybox.launch import prepare_launch
from pybox.plugins import get_plugins


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def round_trips(kernel: pybox.Kernel, runs: int) -> tuple[list[float], int]:
    kernel.run("pass")  # warm up
    times, lost = [], 0
    for i in range(runs):
        started = time.perf_counter()
        result = kernel.run(f"print({i})", timeout=60)
        times.append(time.perf_counter() - started)
        if result.stdout != f"{i}\n":
            lost += 1
    return times, lost


def report_round_trips(label: str, times: list[float], lost: int) -> None:
    print(
        f"{label}: median {statistics.median(times) * 1000:.2f} ms, "
        f"p99 {percentile(times, 99) * 1000:.2f} ms over {len(times)} runs, "
        f"lost or wrong outputs: {lost}"
    )


def cold_start(image: str, backend: str | None) -> float:
    started = time.perf_counter()
    with pybox.Sandbox(image=image, backend=backend) as sb:
        assert sb.run("print('ready')").text == "ready"
        return time.perf_counter() - started


def throughput(sb: pybox.Sandbox, megabytes: int = 10) -> None:
    size, elapsed, exact = throughput_figures(sb, megabytes)
    print(f"stdout throughput: {size / 1e6:.1f} MB in {elapsed:.3f} s = {size / 1e6 / elapsed:.1f} MB/s, "
          f"byte-exact: {exact}")


def throughput_figures(sb: pybox.Sandbox, megabytes: int = 10) -> tuple[int, float, bool]:
    """(characters received, seconds, byte-exact) for ``megabytes`` MB printed in 99-byte lines."""
    line = "0123456789" * 9 + "abcdefgh\n"  # 99 bytes
    count = megabytes * 1_000_000 // len(line) + 1
    expected = hashlib.sha256((line * count).encode()).hexdigest()
    code = f"import sys\nline = {line!r}\nfor _ in range({count}):\n    sys.stdout.write(line)\n"
    # max_output=None: the whole 10 MB is kept, to be checked byte for byte (the default
    # keeps 1,000,000 characters).
    sb.run(code, timeout=300, max_output=None)  # warm up (first run allocates)
    started = time.perf_counter()
    result = sb.run(code, timeout=300, max_output=None)
    elapsed = time.perf_counter() - started
    exact = hashlib.sha256(result.stdout.encode()).hexdigest() == expected
    return len(result.stdout), elapsed, exact


def stress(sb: pybox.Sandbox, executions: int, kernels: int = 8, threads: int = 4) -> None:
    """``executions`` runs across ``kernels`` kernels driven by ``threads`` threads, each
    output checked: a lost or misrouted output (another run's text) is counted."""
    import threading

    opened = [sb.kernel() for _ in range(kernels)]
    per_thread = executions // threads
    lost = misrouted = 0
    lock = threading.Lock()

    def work(worker: int) -> None:
        nonlocal lost, misrouted
        mine = opened[worker::threads]
        for i in range(per_thread):
            kernel = mine[i % len(mine)]
            token = f"{worker}-{i}"
            result = kernel.run(f"print({token!r})", timeout=120)
            if result.stdout != f"{token}\n":
                with lock:
                    if result.stdout.strip():
                        misrouted += 1
                    else:
                        lost += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    for kernel in opened:
        kernel.close()
    print(f"stress: {per_thread * threads} executions across {kernels} kernels in {threads} threads in "
          f"{elapsed:.1f} s ({per_thread * threads / elapsed:.0f}/s): lost {lost}, misrouted {misrouted}")


class StockGateway:
    """The same image's kernel gateway with no pybox configuration at all, as a container
    of the same backend, with one kernel (``first``) answering; ``cold_start`` is the
    time from the container's start to that kernel's first result."""

    def __init__(self, image: str, backend_name: str | None, ready_within: float = 120.0) -> None:
        self.backend = get_plugins().backend(backend_name)()
        self.token = secrets.token_hex(16)
        spec = ContainerSpec(
            image=image, env={"KG_AUTH_TOKEN": self.token},
            labels={"pybox": "1", "pybox.benchmark": "stock-gateway"},
            command=["jupyter", "kernelgateway", "--KernelGatewayApp.ip=0.0.0.0", "--KernelGatewayApp.port=8888"],
        )
        plan = prepare_launch(spec, self.backend)
        started = time.perf_counter()
        self.container = self.backend.start(plan)
        try:
            endpoint = self.backend.endpoint(self.container, plan)
            self.host, self.port = endpoint.host, endpoint.port
            Gateway(self.host, self.port, self.token).wait_ready(time.monotonic() + ready_within)
            self.first = self.new_kernel()
            assert self.first.run("print(1)").text == "1"
        except BaseException:
            self.backend.remove(self.container)
            self.backend.close()
            raise
        self.cold_start = time.perf_counter() - started

    def new_kernel(self) -> pybox.Kernel:
        return pybox.Kernel.connect(self.host, self.port, self.token)  # a new kernel, shut down by close()

    def close(self) -> None:
        self.first.close()
        self.backend.remove(self.container)
        self.backend.close()


def stock_gateway(image: str, backend_name: str | None, runs: int) -> None:
    """The same ``print(i)`` round trip through the stock gateway."""
    stock = StockGateway(image, backend_name, ready_within=60)
    try:
        times, lost = round_trips(stock.first, runs)
        report_round_trips("print(i) round trip, stock kernel gateway", times, lost)
    finally:
        stock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="print(i) round trips (default 10000)")
    parser.add_argument("--stock-runs", type=int, default=500, help="round trips through the stock gateway")
    parser.add_argument("--cold", type=int, default=5, help="cold starts to measure (default 5)")
    parser.add_argument("--stress", type=int, default=10_000,
                        help="executions of the stress run across 8 kernels in 4 threads (0: skip)")
    parser.add_argument("--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    args = parser.parse_args()

    print(f"pybox {pybox.__version__}, image {args.image}, backend {args.backend or 'default'}")
    colds = [cold_start(args.image, args.backend) for _ in range(args.cold)]
    print(f"cold start (Sandbox open -> first result): median {statistics.median(colds):.3f} s, "
          f"min {min(colds):.3f} s, max {max(colds):.3f} s over {len(colds)}")

    with pybox.Sandbox(image=args.image, backend=args.backend) as sb:
        times, lost = round_trips(sb.default_kernel, args.runs)
        report_round_trips("print(i) round trip, pybox", times, lost)
        throughput(sb)
        if args.stress:
            stress(sb, args.stress)
    stock_gateway(args.image, args.backend, args.stock_runs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"client peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()
