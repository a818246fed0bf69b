"""An engine restart is seen at once. Runs last, whatever the file names (marker
engine_restart, moved to the end of the session by conftest.py): it stops the local
dockerd and starts it again with the project's script, so other modules' sandboxes
must be gone by then."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pybox

from .conftest import BACKEND, IMAGE

START_DOCKERD = Path(__file__).resolve().parents[2] / ".ci" / "start-dockerd"

pytestmark = [
    pytest.mark.engine_restart,
    pytest.mark.skipif(
        BACKEND != "docker" or os.environ.get("DOCKER_HOST") or os.geteuid() != 0 or not shutil.which("dockerd")
        or os.environ.get("PYBOX_TEST_ENGINE_RESTART") != "1",
        reason="restarts the local dockerd: root, the docker backend and PYBOX_TEST_ENGINE_RESTART=1 only",
    ),
]


def dockerd_pid():
    """The local engine's pid (its default pidfile; other dockerds, such as the one
    playing the remote host, keep theirs elsewhere)."""
    try:
        return int(Path("/var/run/docker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def test_engine_stopping_under_a_running_execution_is_seen_at_once():
    sb = pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    try:
        sb.run("1")
        pid = dockerd_pid()
        assert pid and Path(f"/proc/{pid}").exists(), "no local dockerd to restart"
        assert pid, "no dockerd to restart"
        threading.Timer(1.0, os.kill, args=(pid, signal.SIGTERM)).start()
        started = time.monotonic()
        with pytest.raises(pybox.KernelDied) as info:
            sb.run("import time\ntime.sleep(120)", timeout=300)
        elapsed = time.monotonic() - started
        print(f"engine stop seen after {elapsed - 1.0:.2f} s: {info.value.reason}")
        assert elapsed < 1.0 + 2.0, elapsed
        assert "engine" in info.value.reason or "container" in info.value.reason
    finally:
        deadline = time.monotonic() + 60
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the old engine must be gone before the script looks for one
        subprocess.run(["bash", str(START_DOCKERD)], check=True, timeout=120)
        sb.stop()
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as again:
        assert again.run("print('engine back')").text == "engine back"
