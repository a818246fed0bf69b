"""What a sandbox costs to start, for two or more images in one run: the container's
CPU-seconds from its start to the first result and its idle memory (bench_speed.py's
"CPU-seconds per start" and "idle memory per sandbox" rows, alone).

    python benchmarks/bench_start_cost.py pybox:0.2.0 pybox-cpu:dev          # --starts 9
    python benchmarks/bench_start_cost.py pybox:0.2.0 pybox-cpu:dev --json start_cost.json

Also the part of the gateway and of the first kernel (their CPU time from /proc), and the
machine's: all CPU time spent on this machine from `Sandbox()` to the first result (from
/proc/stat), so that what the engine and the client spend outside the container shows as
the difference; and the machine's CPU to remove the sandbox. The machine-wide rows count
everything that runs, so they mean something on a quiet machine with a local engine only.
The images' starts are interleaved (A, B, A, B, ...) so that load from elsewhere on the
machine falls on both alike; the figures are read inside each container from its cgroup,
which counts its own processes only. Each row gives the median and the spread (min-max),
and each image after the first its ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pybox

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import cgroup_figures  # noqa: E402

#: Read inside the container at the first result: the CPU-seconds of the gateway (pid 1,
#: with the children it reaped: pybox-init's commands) and of the kernel running this.
PROCESS_FIGURES = r"""
def _figures():
    import os
    def cpu(pid):
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return sum(int(value) for value in fields[11:15]) / os.sysconf('SC_CLK_TCK')
    print(cpu(1), cpu(os.getpid()))
_figures()
del _figures
"""


def machine_cpu() -> float:
    """CPU-seconds this machine has spent so far, all cores and processes (/proc/stat:
    user, nice, system, irq, softirq, steal; guest time is inside user)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cold_start(image: str, backend: str | None) -> dict[str, float]:
    machine_before = machine_cpu()
    started = time.perf_counter()
    sb = pybox.Sandbox(image=image, backend=backend)
    try:
        assert sb.run("print(1)").text == "1"
        figures = {"start": time.perf_counter() - started, "machine": machine_cpu() - machine_before}
        gateway, kernel = sb.default_kernel.run(PROCESS_FIGURES, timeout=60).text.split()
        figures["cpu"], _ = cgroup_figures(sb.default_kernel)
        figures["outside"] = figures["machine"] - figures["cpu"]
        figures["gateway"], figures["kernel"] = float(gateway), float(kernel)
        time.sleep(2)
        figures["memory"] = cgroup_figures(sb.default_kernel)[1]
    finally:
        machine_before = machine_cpu()
        sb.close()
    figures["remove"] = machine_cpu() - machine_before
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="images to compare; the first is the baseline")
    parser.add_argument("--starts", type=int, default=9, help="sandboxes started per image (default 9)")
    parser.add_argument("--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    parser.add_argument("--json", default=None, help="where to write the figures")
    args = parser.parse_args()

    figures: dict[str, dict[str, list[float]]] = {image: {} for image in args.images}
    for _ in range(args.starts):
        for image in args.images:
            for name, value in cold_start(image, args.backend).items():
                figures[image].setdefault(name, []).append(value)
    base = args.images[0]
    rows = [("CPU-seconds per start", "cpu", "s", 3),
            ("  of which the gateway (pid 1, and pybox-init's commands; 10 ms ticks)", "gateway", "s", 2),
            ("  of which the first kernel (10 ms ticks)", "kernel", "s", 2),
            ("machine CPU-seconds, Sandbox() -> first result (every process; quiet machine only)",
             "machine", "s", 2),
            ("  of which outside the container (engine, client; machine minus the container's)",
             "outside", "s", 2),
            ("machine CPU-seconds to remove a sandbox (quiet machine only)", "remove", "s", 2),
            ("idle memory per sandbox", "memory", "MiB", 1),
            ("cold start -> first result", "start", "s", 3)]
    print(f"{args.starts} starts per image, interleaved")
    for title, key, unit, digits in rows:
        print(f"\n{title} ({unit}): median [min-max]")
        for image in args.images:
            values = figures[image][key]
            median = statistics.median(values)
            ratio = "" if image == base else f"  x{median / statistics.median(figures[base][key]):.2f}"
            print(f"  {image:30} {median:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]{ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
