"""Kernel.fork(): a new kernel with a copy of a namespace of --megabytes MB, each run
checked (the fork sees the data, the original keeps its own).

    python benchmarks/bench_fork.py [--megabytes 100] [--forks 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pybox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100, help="namespace size (default 100)")
    parser.add_argument("--forks", type=int, default=5, help="forks to time (default 5)")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    args = parser.parse_args()
    with pybox.Sandbox(image=args.image, backend=args.backend) as sb:
        # 100 variables of 1 MB (bytes, a list, a dict): what an agent's namespace holds
        sb.run(f"import random\ndata = {{i: random.randbytes(1 << 20) for i in range({args.megabytes})}}\n"
               "rows = [list(range(1000)) for _ in range(100)]\nsize = sum(map(len, data.values()))")
        sb.kernel().close()  # the sandbox's second kernel: the fork server and a spare are up
        times = []
        for _ in range(args.forks):
            time.sleep(1)
            started = time.perf_counter()
            fork = sb.default_kernel.fork()
            times.append(time.perf_counter() - started)
            assert fork.run("print(size, len(rows))").text == f"{args.megabytes << 20} 100"
            fork.run("data.clear()")
            fork.close()
        assert sb.run("print(len(data))").text == str(args.megabytes)
    print(f"Kernel.fork() of {args.megabytes} MB: median {statistics.median(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {len(times)}")


if __name__ == "__main__":
    main()
