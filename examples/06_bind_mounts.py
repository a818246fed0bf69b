"""Bind mounts: host paths (relative or absolute) -> container paths (relative to /app).
The code reads from data/ and writes to output/; the result is checked on the host.
The sandbox runs as uid 1000: output/ must be writable for it."""

import os
import tempfile
from pathlib import Path

import pybox

root = Path(tempfile.mkdtemp(prefix="pybox-binds-"))
(root / "data").mkdir()
(root / "data" / "numbers.txt").write_text("1\n2\n3\n")
(root / "output").mkdir()
os.chmod(root / "output", 0o777)  # writable for the sandbox's user

os.chdir(root)
with pybox.Sandbox(binds={"data": "data", str(root / "output"): "output"}) as sb:
    print(sb.run("print(open('data/numbers.txt').read().split())").text)
    sb.run("total = sum(int(n) for n in open('/app/data/numbers.txt'))\n"
           "open('output/total.txt', 'w').write(str(total))")

print("on the host:", (root / "output" / "total.txt").read_text())
