"""Installing dependencies at runtime: `!pip install` streams its progress, then the
package imports. (Build-time dependencies: `pybox build --dependencies requirements.txt`.)"""

import pybox

with pybox.Sandbox() as sb:
    for chunk in sb.submit("!pip install --progress-bar off tabulate==0.9.0").stream(timeout=300):
        print(chunk, end="")
    print(sb.run("import tabulate; print('tabulate', tabulate.__version__)").text)
