"""Creating and returning plots: matplotlib figures come back as PIL images."""

import sys
from pathlib import Path

import pybox

out = Path(sys.argv[1] if len(sys.argv) > 1 else "output")
out.mkdir(parents=True, exist_ok=True)

with pybox.Sandbox() as sb:
    result = sb.run("""
import matplotlib.pyplot as plt
import math
xs = [i / 10 for i in range(100)]
plt.figure(figsize=(6, 4))
plt.plot(xs, [math.sin(x) for x in xs], label="sin")
plt.plot(xs, [math.cos(x) for x in xs], label="cos")
plt.legend()
plt.show()
""")
    for number, image in enumerate(result.images):
        path = out / f"plot-{number}.png"
        image.save(path)
        print("saved", path, image.size)
