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
