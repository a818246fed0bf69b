"""Output streaming: one line per second arrives one line per second."""

import time

import pybox

code = """
import time
for i in range(5):
    print(f"line {i}", flush=True)
    time.sleep(1)
"""

with pybox.Sandbox() as sb:
    started = time.monotonic()
    execution = sb.submit(code)
    for chunk in execution.stream(timeout=30):
        print(f"[{time.monotonic() - started:4.1f} s] {chunk}", end="")
    print("done in", round(execution.result().duration, 1), "s")
