"""Start-up code and module sources on a real kernel."""

import pytest

import pybox

from .conftest import BACKEND, IMAGE


def test_startup_code_runs_in_every_kernel_and_after_restart():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, startup_code="import math\nSTARTED = 'yes'") as sb:
        assert sb.run("print(STARTED, round(math.pi, 2))").text == "yes 3.14"
        with sb.kernel() as second:
            assert second.run("print(STARTED)").text == "yes"
        sb.run("STARTED = 'changed'")
        sb.restart()
        after = sb.run("print(STARTED)")
        assert after.text == "yes"
        assert after.execution_count == 1  # start-up code is not user history


def test_failing_startup_code_is_reported():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, startup_code="raise RuntimeError('bad setup')") as sb:
        with pytest.raises(pybox.KernelError, match="bad setup"):
            sb.run("1")


def test_module_sources(sandbox):
    sandbox.run("import os\nos.makedirs('mypkg', exist_ok=True)\n"
                "open('mypkg/__init__.py', 'w').write('VALUE = 1\\n')\n"
                "open('mypkg/tool.py', 'w').write('def tool():\\n    return 42\\n')")
    sources = sandbox.module_sources(["mypkg", "mypkg.tool", "json"])
    assert sources["mypkg"] == "VALUE = 1\n"
    assert sources["mypkg.tool"] == "def tool():\n    return 42\n"
    assert "def dumps" in sources["json"]
    assert "__pybox_module_sources" not in sandbox.run("print(dir())").text
    with pytest.raises(pybox.ExecutionError, match="no_such_module"):
        sandbox.module_sources(["no_such_module"])
    with pytest.raises(pybox.InvalidArgument):
        sandbox.module_sources("json")


def test_a_fork_starts_as_a_copy_of_the_kernel_and_leaves_it_untouched(fresh_sandbox):
    fresh_sandbox.run("import json, os as operating\nx = 41\nbig = b'x' * (8 << 20)\nf = lambda v: v + 1\n"
                      "class C:\n    def m(self):\n        return 'method'\nc = C()\n"
                      "gen = (i for i in range(3))\n_private = 1\n"
                      # fails after a megabyte is streamed: dropped whole, and the values after it arrive
                      "mixed = [b'y' * (1 << 20), (i for i in range(2))]\nafter = 'arrived'")
    fork = fresh_sandbox.default_kernel.fork()
    assert fork.id != fresh_sandbox.default_kernel.id
    assert fork.fork_skipped == ["gen", "mixed"]  # a generator cannot be copied; `_` names are not
    assert fork.run("print(f(x), len(big), c.m(), json.dumps(operating.sep), '_private' in dir(), after, "
                    "'mixed' in dir())").text == '42 8388608 method "/" False arrived False'
    fork.run("x = 0\nbig = None\nimport sys")
    # The original is untouched, and its process is not the fork's.
    assert fresh_sandbox.run("print(x, len(big), 'sys' in dir())").text == "41 8388608 False"
    assert fork.run("import os; print(os.getpid())").text != fresh_sandbox.run("print(operating.getpid())").text
    # A fork of a fork; and the sandbox closes forks with itself.
    assert fork.fork().run("print(x)").text == "0"
    with pytest.raises(pybox.InvalidArgument, match="Python kernel"):
        fresh_sandbox.kernel("bash").fork()
