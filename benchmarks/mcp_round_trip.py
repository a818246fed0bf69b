"""The cost of MCP: one ``execute_ipython_cell`` call of ``print(1)`` through ``pybox mcp``
over stdio (the MCP SDK's client, a server subprocess) beside ``sb.run("print(1)")`` on a
sandbox of this process, in the same run on the same engine and image.

    python benchmarks/mcp_round_trip.py [--runs 200] [--backend docker]

Prints the median and p90 of each, and their difference and ratio. Needs pybox[mcp].
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

import pybox


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{name:<40} median {statistics.median(times) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms"


def direct(runs: int, backend: str | None, image: str) -> list[float]:
    times = []
    with pybox.Sandbox(image=image, backend=backend) as sb:
        sb.run("pass")  # warm up
        for _ in range(runs):
            started = time.perf_counter()
            result = sb.run("print(1)")
            times.append(time.perf_counter() - started)
            assert result.text == "1", result
    return times


async def over_mcp(runs: int, backend: str | None, image: str) -> list[float]:
    args = ["-m", "pybox", "mcp", "--image", image] + (["--backend", backend] if backend else [])
    times = []
    async with stdio_client(StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))) as streams:
        async with ClientSession(*streams) as session:
            await session.initialize()
            await session.call_tool("execute_ipython_cell", {"code": "pass"})  # starts the sandbox
            for _ in range(runs):
                started = time.perf_counter()
                result = await session.call_tool("execute_ipython_cell", {"code": "print(1)"})
                times.append(time.perf_counter() - started)
                assert not result.is_error and result.content[0].text == "1", result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    args = parser.parse_args()
    plain = direct(args.runs, args.backend, args.image)
    mcp = anyio.run(over_mcp, args.runs, args.backend, args.image)
    print(f"print(1), {args.runs} calls each")
    print(summary('sb.run("print(1)")', plain))
    print(summary("execute_ipython_cell over stdio (MCP)", mcp))
    overhead = statistics.median(mcp) - statistics.median(plain)
    print(f"MCP adds {overhead * 1000:.2f} ms per call (median), "
          f"{statistics.median(mcp) / statistics.median(plain):.2f}x sb.run")


if __name__ == "__main__":
    main()
