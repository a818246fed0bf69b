"""Swarm benchmark: the swarm backend beside the local Docker engine, in one run.

    python benchmarks/bench_swarm.py [--cold 5] [--runs 1000] [--concurrent 16]
                                     [--swarm-env /tmp/pybox-ci/swarm.env]

For each backend (``docker``: the local engine, DOCKER_* unset; ``swarm``: the settings in
``--swarm-env``, the file ``.ci/start-swarm`` writes, or DOCKER_* from the environment):

- start to first result: ``Sandbox()`` opened -> first ``run`` result, median (and max)
  of --cold sequential starts;
- ``print(i)`` round trip: median and p99 over --runs runs, each output checked;
- --concurrent sandboxes opened at once from as many threads: wall time until every one
  has answered its first run, each one's start-to-first-result median and max, and (swarm)
  how many landed on each node.

Needs the image on every engine (``pybox build``; ``.ci/start-swarm`` loads it into the
nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pybox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import report_round_trips, round_trips  # noqa: E402

DOCKER_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")


def read_env_file(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            found[name] = value
    return found


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """DOCKER_* exactly as ``values`` says (the others unset) while a backend is measured."""
    saved = {name: os.environ.get(name) for name in DOCKER_VARIABLES}
    try:
        for name in DOCKER_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_to_first_result(image: str, backend: str) -> float:
    started = time.perf_counter()
    with pybox.Sandbox(image=image, backend=backend) as sb:
        assert sb.run("print('ready')").text == "ready"
        return time.perf_counter() - started


def node_of(backend: str, sandbox_id: str) -> str:
    if backend != "swarm":
        return "local"
    from pybox.plugins import get_plugins

    engine = get_plugins().backend("swarm")()
    try:
        task = engine._task(sandbox_id)  # type: ignore[attr-defined]
        node = engine.api.inspect_node(task.node_id)  # type: ignore[attr-defined]
        return str(node["Status"].get("Addr") or task.node_id[:12])
    finally:
        engine.close()


def concurrent_opens(image: str, backend: str, count: int) -> None:
    starts: list[float] = []
    nodes: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def work(n: int) -> None:
        try:
            barrier.wait()
            started = time.perf_counter()
            with pybox.Sandbox(image=image, backend=backend, limits=pybox.Limits(memory="512m"),
                               startup_timeout=300) as sb:
                assert sb.run(f"print({n})", timeout=120).text == str(n)
                elapsed = time.perf_counter() - started
                node = node_of(backend, sb.id or "")
            with lock:
                starts.append(elapsed)
                nodes.append(node)
        except Exception as exc:  # noqa: BLE001 -- counted and printed
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    spread = ", ".join(f"{node}: {n}" for node, n in sorted(Counter(nodes).items()))
    print(f"  {count} opened at once: all answered in {wall:.2f} s (includes closing); each start to first "
          f"result median {statistics.median(starts) if starts else float('nan'):.2f} s, "
          f"max {max(starts) if starts else float('nan'):.2f} s; nodes: {spread}; failures: {len(errors)}")
    for error in errors[:3]:
        print(f"    {error}")


def measure(label: str, backend: str, image: str, args: argparse.Namespace) -> None:
    print(f"{label}:")
    cold = [start_to_first_result(image, backend) for _ in range(args.cold)]
    print(f"  start to first result: median {statistics.median(cold):.2f} s, max {max(cold):.2f} s "
          f"over {len(cold)} starts")
    with pybox.Sandbox(image=image, backend=backend) as sb, sb.kernel() as kernel:
        times, lost = round_trips(kernel, args.runs)
    report_round_trips("  print(i) round trip", times, lost)
    concurrent_opens(image, backend, args.concurrent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=5, help="sequential starts to measure (default 5)")
    parser.add_argument("--runs", type=int, default=1000, help="print(i) round trips (default 1000)")
    parser.add_argument("--concurrent", type=int, default=16, help="sandboxes opened at once (default 16)")
    parser.add_argument("--swarm-env", type=Path,
                        default=Path(os.environ.get("PYBOX_CI_DIR", "/tmp/pybox-ci")) / "swarm.env",
                        help="DOCKER_* of the swarm manager (default: the file .ci/start-swarm writes)")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--skip-local", action="store_true", help="measure the swarm only")
    args = parser.parse_args()

    if args.swarm_env.is_file():
        swarm_env = read_env_file(args.swarm_env)
    else:
        swarm_env = {name: os.environ[name] for name in DOCKER_VARIABLES if name in os.environ}
    if not swarm_env.get("DOCKER_HOST"):
        parser.error(f"no swarm: {args.swarm_env} is missing and DOCKER_HOST is unset (run .ci/start-swarm)")
    if not args.skip_local:
        with environment({}):
            measure("docker (local engine)", "docker", args.image, args)
    with environment(swarm_env):
        measure(f"swarm (manager {swarm_env['DOCKER_HOST']})", "swarm", args.image, args)


if __name__ == "__main__":
    main()
