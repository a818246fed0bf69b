"""Sandbox.snapshot benchmark: how long a snapshot takes, and starting from it.

    python benchmarks/snapshot.py [--backend docker] [--image pybox:latest] [--runs 5]

Rows, through the real engine and image, in the same run:
- snapshot: ``sb.snapshot(tag)`` of a sandbox that installed one small wheel with pip
  (made in the sandbox: no network) and wrote a file; ``--runs`` snapshots, each to a new tag;
- cold start, base image: ``Sandbox(image=base)`` opened -> first ``print(1)`` result;
- cold start, snapshot: the same from the snapshot, its package imported in that first run.
Starts alternate between the two images. Median, min and max (ms). Every image made is
removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import pybox
from pybox.plugins import get_plugins

MAKE_WHEEL = '''
import base64, hashlib, subprocess, sys, zipfile
files = {
    "snapdemo/__init__.py": "VALUE = 'from-a-wheel'\\n",
    "snapdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: snapdemo\\nVersion: 1.0\\n",
    "snapdemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: bench\\nRoot-Is-Purelib: true\\n"
                                    "Tag: py3-none-any\\n",
}
record = []
for name, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text.encode())}")
record.append("snapdemo-1.0.dist-info/RECORD,,")
files["snapdemo-1.0.dist-info/RECORD"] = "\\n".join(record) + "\\n"
with zipfile.ZipFile("/tmp/snapdemo-1.0-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                       "--disable-pip-version-check", "/tmp/snapdemo-1.0-py3-none-any.whl"],
                      capture_output=True, text=True)
print(done.returncode)
_ = open("/app/data.txt", "w").write("x" * 100_000)
'''


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    median = statistics.median(ms)
    return f"{name:<28} median {median:8.0f} ms   min {min(ms):8.0f}   max {max(ms):8.0f}   (n={len(ms)})"


def cold_start(image: str, backend: str | None, code: str, expected: str) -> float:
    started = time.monotonic()
    with pybox.Sandbox(image=image, backend=backend) as sb:
        assert sb.run(code).text == expected
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--image", default=pybox.DEFAULT_IMAGE)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tags = [f"pybox-bench-snapshot:{uuid.uuid4().hex[:10]}" for _ in range(args.runs)]
    snapshots: list[float] = []
    try:
        with pybox.Sandbox(image=args.image, backend=args.backend) as sb:
            assert sb.run(MAKE_WHEEL, timeout=120).text == "0"
            backend_name = sb.backend_name
            for tag in tags:
                started = time.monotonic()
                sb.snapshot(tag)
                snapshots.append(time.monotonic() - started)
        base: list[float] = []
        from_snapshot: list[float] = []
        for _ in range(args.runs):
            base.append(cold_start(args.image, args.backend, "print(1)", "1"))
            from_snapshot.append(cold_start(tags[-1], args.backend, "import snapdemo; print(1)", "1"))
    finally:
        engine = get_plugins().backend(pybox.plugins.resolve_backend_name(args.backend))()
        for tag in tags:
            engine.remove_image(tag)
        engine.close()
    print(f"backend {backend_name}, base image {args.image}")
    print(row("snapshot", snapshots))
    print(row("cold start, base image", base))
    print(row("cold start, snapshot", from_snapshot))


if __name__ == "__main__":
    main()
