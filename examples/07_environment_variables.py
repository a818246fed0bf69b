"""Environment variables: passed to the container, visible to the code."""

import pybox

with pybox.Sandbox(env={"API_KEY": "secret-value", "MODE": "test"}) as sb:
    print(sb.run("import os\nprint(os.environ['API_KEY'], os.environ['MODE'])").text)
