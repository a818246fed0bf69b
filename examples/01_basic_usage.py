"""Basic usage: start a sandbox, run code, keep state, get errors back.

Run it after `pybox build` (or `tox -e example`, which starts the engine and builds
the image first).
"""

import pybox

with pybox.Sandbox() as sb:  # default image pybox.DEFAULT_IMAGE, default backend
    print(sb.run("print('Hello, world!')").text)  # Hello, world!

    sb.run("x = 40")  # state lives on between runs
    result = sb.run("x += 2\nx")
    print("x is", result.text)

    try:
        sb.run("1 / 0")
    except pybox.ExecutionError as error:
        print("the code raised:", error.ename, "-", error.evalue)

    execution = sb.submit("import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.5)")
    for chunk in execution.stream(timeout=30):
        print("streamed:", chunk, end="")
