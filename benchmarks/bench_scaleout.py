"""Scale-out figures: each backend named, measured in the same run, side by side.

    python benchmarks/bench_scaleout.py [--backends docker,kubernetes,kubernetes@pod-ip] [--cold 5]
                                        [--runs 300] [--concurrent 16] [--memory 256m]

``kubernetes@pod-ip`` is the kubernetes backend with PYBOX_K8S_CONNECT=pod-ip (this machine
must route to the pod network, as a client inside the cluster does); plain ``kubernetes``
reaches the gateway as the environment says (outside a cluster: through the API server).

For each backend (its engine reached as the environment says: for kubernetes the
kubeconfig, e.g. KUBECONFIG=/tmp/pybox-ci/kubeconfig):
- start to first result: ``Sandbox()`` opened -> first ``run`` result (median of --cold);
- round trip of ``print(i)``: median and p99 over --runs runs, each output checked (for
  kubernetes with the default connection: through the API server, port-forward);
- --concurrent sandboxes opened at once (threads): wall time until every one answered its
  first run, and (kubernetes) how the pods spread over the nodes.
Limits: --memory per sandbox (16 x the default 2 GiB would not fit one node's requests), no
process limit (Kubernetes has only the node-wide one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections import Counter

import pybox


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def limits(memory: str) -> pybox.Limits:
    return pybox.Limits(memory=memory, pids=None)


def cold_starts(backend: str, image: str, count: int, memory: str) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with pybox.Sandbox(image=image, backend=backend, limits=limits(memory)) as sb:
            assert sb.run("print('ready')").text == "ready"
            times.append(time.perf_counter() - started)
    return times


def round_trips(backend: str, image: str, runs: int, memory: str) -> tuple[list[float], int]:
    with pybox.Sandbox(image=image, backend=backend, limits=limits(memory)) as sb:
        sb.run("pass")
        times, wrong = [], 0
        for i in range(runs):
            started = time.perf_counter()
            result = sb.run(f"print({i})", timeout=60)
            times.append(time.perf_counter() - started)
            wrong += result.stdout != f"{i}\n"
    return times, wrong


def concurrent_opens(backend: str, image: str, count: int, memory: str) -> tuple[float, int, Counter[str]]:
    nodes: Counter[str] = Counter()
    errors: list[BaseException] = []
    barrier = threading.Barrier(count + 1)
    done = threading.Barrier(count + 1)
    lock = threading.Lock()

    def one(n: int) -> None:
        try:
            barrier.wait()
            with pybox.Sandbox(image=image, backend=backend, limits=limits(memory)) as sb:
                assert sb.run(f"print({n})", timeout=300).text == str(n)
                node = node_of(backend, sb.id)
                with lock:
                    nodes[node] += 1
                done.wait()
        except BaseException as exc:  # noqa: BLE001 -- counted and printed
            errors.append(exc)
            done.abort()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    try:
        done.wait()  # every sandbox answered its first run
    except threading.BrokenBarrierError:
        pass
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join(timeout=600)
    for error in errors[:3]:
        print(f"  error: {type(error).__name__}: {error}")
    return elapsed, len(errors), nodes


def node_of(backend: str, container: str | None) -> str:
    if backend != "kubernetes" or container is None:
        return "this host"
    from pybox.plugins import get_plugins

    engine = get_plugins().backend(backend)()
    try:
        pod = engine.core.read_namespaced_pod(container, engine.namespace)  # type: ignore[attr-defined]
        return str(pod.spec.node_name)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="docker,kubernetes")
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--memory", default="256m")
    args = parser.parse_args()
    for spec in [b.strip() for b in args.backends.split(",") if b.strip()]:
        backend, _, connect = spec.partition("@")
        if connect:
            os.environ["PYBOX_K8S_CONNECT"] = connect
        else:
            os.environ.pop("PYBOX_K8S_CONNECT", None)
        print(f"== {spec}")
        starts = cold_starts(backend, args.image, args.cold, args.memory)
        print(f"start to first result: median {statistics.median(starts):.2f} s, "
              f"min {min(starts):.2f} s, max {max(starts):.2f} s over {len(starts)} starts")
        times, wrong = round_trips(backend, args.image, args.runs, args.memory)
        print(f"round trip of print(i): median {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {percentile(times, 99) * 1000:.1f} ms over {len(times)} runs, wrong outputs: {wrong}")
        elapsed, failed, nodes = concurrent_opens(backend, args.image, args.concurrent, args.memory)
        spread = ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items()))
        print(f"{args.concurrent} sandboxes opened at once: all answered in {elapsed:.2f} s, "
              f"failed: {failed}; spread: {spread}")


if __name__ == "__main__":
    main()
