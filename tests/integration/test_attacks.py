"""Attacks by code in the sandbox, run for real on every engine (SECURITY.md lists what
each one proves). The code is hostile and knows pybox's source: the host, other
sandboxes and the calling process must stay untouched and responsive."""

from __future__ import annotations

import gc
import os
import time

import pytest

import pybox
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE


@pytest.fixture(scope="module")
def engine():
    backend = get_plugins().backend(BACKEND)()
    yield backend
    backend.close()


# -- downloads never escape the target ---------------------------------------------------


def test_download_through_chained_links_is_refused_and_leaves_nothing(sandbox, tmp_path):
    (tmp_path / "secret.txt").write_text("host file")
    os.chmod(tmp_path / "secret.txt", 0o600)
    sandbox.run("import os\nos.makedirs('evil/d1', exist_ok=True)\nos.symlink('..', 'evil/d1/up')\n"
                "os.symlink('d1/up/d1/up/../../secret.txt', 'evil/escape')\n"
                "open('evil/innocent.txt', 'w').write('x')")
    with pytest.raises(pybox.UnsafeArchive):
        sandbox.download("evil", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["secret.txt"]
    assert (tmp_path / "secret.txt").read_text() == "host file"
    assert os.stat(tmp_path / "secret.txt").st_mode & 0o777 == 0o600


def test_a_download_never_writes_through_a_link_at_or_in_the_target(sandbox, tmp_path):
    (tmp_path / "victim.txt").write_text("host file")
    (tmp_path / "report.txt").symlink_to(tmp_path / "victim.txt")
    sandbox.run("open('report.txt', 'w').write('from the sandbox')")
    with pytest.raises(pybox.UnsafeArchive, match="symbolic link"):  # the target itself is a link
        sandbox.download("report.txt", tmp_path / "report.txt")
    sandbox.download("report.txt", tmp_path)  # into the directory, where a link has the name
    assert (tmp_path / "victim.txt").read_text() == "host file"
    assert (tmp_path / "report.txt").read_text() == "from the sandbox"
    assert not (tmp_path / "report.txt").is_symlink()


def test_a_huge_download_stops_at_the_cap(sandbox, tmp_path):
    sandbox.run("with open('huge.bin', 'wb') as f:\n    f.truncate(3 << 30)")  # sparse in the sandbox
    started = time.monotonic()
    with pytest.raises(pybox.DownloadTooLarge):
        sandbox.download("huge.bin", tmp_path / "huge.bin")
    assert not (tmp_path / "huge.bin").exists() and os.listdir(tmp_path) == []
    assert time.monotonic() - started < 60
    sandbox.run("import os; os.remove('huge.bin')")


# -- the host's disk and memory are bounded ----------------------------------------------


def test_the_sandbox_cannot_fill_the_host_disk_through_its_log(engine):
    if BACKEND not in ("docker", "podman"):
        pytest.skip("reads the log file on this host")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        # Straight to the container's stdout, past the kernel: the engine's log file.
        sb.run("import os\nchunk = b'x' * (1 << 20) + b'\\n'\nfor _ in range(40):\n    os.write(1, chunk)",
               timeout=120)
        logs = engine.logs(sb.id, tail=1_000_000)
        assert len(logs) < 25 << 20, f"{len(logs)} bytes of log kept for 40 MiB written"


@pytest.mark.parametrize("memory", ["0", "0g", "0.5b", 0])
def test_limits_that_would_mean_unlimited_are_refused(memory):
    with pytest.raises(pybox.InvalidArgument, match="memory limit"):
        pybox.Limits(memory=memory)


def test_the_default_limits_are_finite(fresh_sandbox):
    read = ("import os\nv1, v2 = '/sys/fs/cgroup/{v1}', '/sys/fs/cgroup/{v2}'\n"
            "print(open(v1 if os.path.exists(v1) else v2).read().strip())")
    memory = fresh_sandbox.run(read.format(v1="memory/memory.limit_in_bytes", v2="memory.max")).text
    pids = fresh_sandbox.run(read.format(v1="pids/pids.max", v2="pids.max")).text
    assert int(memory) == 2 << 30 and pids == "1024"


# -- forgotten sandboxes are collected -----------------------------------------------------


def test_a_forgotten_sandbox_with_a_kernel_open_is_collected_and_its_container_removed(engine):
    sandbox = pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    sandbox.run("x = 1")
    kernel = sandbox.kernel()
    kernel.run("y = 2")
    container = sandbox.id
    del sandbox, kernel
    with pytest.warns(ResourceWarning, match="unclosed"):
        gc.collect()
    deadline = time.monotonic() + 30
    while engine.inspect(container).status != "removed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.inspect(container).status == "removed"
