"""Every example runs end to end and prints what it promises."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BACKEND

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL_ONLY = {"06_bind_mounts.py"}  # host bind mounts need an engine on this host

EXPECTED = {
    "01_basic_usage.py": ["Hello, world!", "x is 42", "ZeroDivisionError", "streamed: tick 2"],
    "02_state_management.py": ["first kernel", "second kernel", "False written by the first kernel"],
    "03_output_streaming.py": ["line 0", "line 4", "done in"],
    "04_installing_dependencies.py": ["Successfully installed tabulate", "tabulate 0.9.0"],
    "05_plots.py": ["saved", "plot-0.png"],
    "06_bind_mounts.py": ["['1', '2', '3']", "on the host: 6"],
    "07_environment_variables.py": ["secret-value test"],
    "08_manual_lifecycle.py": ["second process read: hello"],
    "09_remote_docker_host.py": ["SENT OVER THE ARCHIVE API"],
    "10_smolagents.py": ["count: 8", "NameError: name 'numbrs' is not defined", "3.875",
                         "final answer: {'mean': 3.875, 'max': 9}"],
    "11_deepagents.py": ["mean 3.875", "exit code 1]", "timed out after 1 seconds", "file_not_found",
                         "['/app/stats.py']"],
    "12_mcp_session.py": ["-> tools/list", "execute_ipython_cell", "notifications/progress", "ZeroDivisionError",
                          "image/png", "timed out after 2 s", "still here, x is 42", "characters truncated",
                          "NameError", "session closed"],
}
# Examples of the agent framework adapters need their extra.
FRAMEWORK = {"10_smolagents.py": "smolagents", "11_deepagents.py": "deepagents"}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name, tmp_path):
    if name == "09_remote_docker_host.py" and BACKEND != "docker-remote":
        pytest.skip("needs the remote engine (integration-docker-remote)")
    if name in LOCAL_ONLY and BACKEND in ("docker-remote", "swarm", "kubernetes"):
        pytest.skip("host bind mounts need a local engine")
    if name == "04_installing_dependencies.py" and BACKEND == "kubernetes":
        pytest.skip("the CI cluster's nodes have no route out of this machine: its pods cannot reach the package index")
    if name in FRAMEWORK and importlib.util.find_spec(FRAMEWORK[name]) is None:
        pytest.skip(f"needs pybox[{FRAMEWORK[name]}]")
    env = {**os.environ, "PYBOX_BACKEND": BACKEND}
    out = subprocess.run([sys.executable, str(EXAMPLES / name), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    for expected in EXPECTED[name]:
        assert expected in out.stdout, f"{expected!r} not in the output of {name}:\n{out.stdout}"
    if name == "03_output_streaming.py":
        # One line per second arrives one line per second: "[ 1.7 s] line 1".
        stamps = [float(line[1:].split("s]")[0]) for line in out.stdout.splitlines() if "] line " in line]
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert len(stamps) == 5 and all(0.7 < gap < 1.5 for gap in gaps), out.stdout
