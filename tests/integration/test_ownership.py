"""Containers of clients that die are reaped; containers of live clients never are."""

import os
import signal
import subprocess
import sys
import time

import pybox
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

CLIENT = """
import sys, pybox
sb = pybox.Sandbox(image=sys.argv[1], backend=sys.argv[2]).start()
print(sb.id, flush=True)
sys.stdin.read()  # wait to be killed
"""


def start_client():
    process = subprocess.Popen([sys.executable, "-c", CLIENT, IMAGE, BACKEND], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ})
    container_id = process.stdout.readline().strip()
    assert container_id, "the client did not start a sandbox"
    return process, container_id


def test_killed_clients_are_reaped_by_cleanup_and_live_ones_kept(sandbox):
    engine = get_plugins().backend(BACKEND)()
    process, orphan = start_client()
    live_process, live_container = start_client()
    try:
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert engine.inspect(orphan).running  # SIGKILL: no chance to clean up
        out = subprocess.run([sys.executable, "-m", "pybox", "cleanup", "--backend", BACKEND],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert orphan[:12] in out.stdout
        assert engine.inspect(orphan).status == "removed"
        assert engine.inspect(live_container).running
        assert engine.inspect(sandbox.id).running
        assert sandbox.run("print('still answering')").text == "still answering"
    finally:
        live_process.kill()
        live_process.wait()
        engine.remove(live_container)
        engine.close()


def test_the_next_start_reaps_orphans():
    from pybox import ownership

    engine = get_plugins().backend(BACKEND)()
    process, orphan = start_client()
    process.send_signal(signal.SIGKILL)
    process.wait()
    ownership._reaped_backends.discard(BACKEND)  # this process already reaped once
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        deadline = time.monotonic() + 20
        while engine.inspect(orphan).status != "removed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.inspect(orphan).status == "removed"
        assert sb.run("print(1)").text == "1"
    engine.close()


def test_sigterm_stops_the_sandbox():
    engine = get_plugins().backend(BACKEND)()
    process, container = start_client()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert engine.inspect(container).status == "removed"
    engine.close()


def test_interpreter_exit_stops_a_forgotten_sandbox():
    engine = get_plugins().backend(BACKEND)()
    code = "import sys, pybox\nsb = pybox.Sandbox(image=sys.argv[1], backend=sys.argv[2]).start()\nprint(sb.id)"
    out = subprocess.run([sys.executable, "-c", code, IMAGE, BACKEND], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert engine.inspect(out.stdout.strip()).status == "removed"
    engine.close()


def test_twenty_clients_killed_at_random_points_leave_nothing(sandbox):
    """Clients SIGKILLed before, during and after their start: after one cleanup, none
    of their containers remains and the live sandbox still answers."""
    import random

    engine = get_plugins().backend(BACKEND)()
    rng = random.Random(20)
    clients = []
    for _ in range(20):
        process = subprocess.Popen([sys.executable, "-c", CLIENT, IMAGE, BACKEND], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        clients.append(process)
        time.sleep(rng.uniform(0.0, 0.3))
        victim = clients[rng.randrange(len(clients))]
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
    for process in clients:
        # Some were killed mid-start, some after: kill the rest once they are up or gone.
        if process.poll() is None:
            process.stdout.readline()
            process.send_signal(signal.SIGKILL)
        process.wait()
    pids = {str(process.pid) for process in clients}

    def theirs():
        found = []
        for container_id in engine.list_containers({"pybox": "1"}):
            labels = engine.container_labels(container_id) or {}
            if labels.get("pybox.pid") in pids:
                found.append(container_id)
        return found

    # A client killed between create and its first label write leaves nothing to find;
    # one killed after leaves a container until the cleanup.
    out = subprocess.run([sys.executable, "-m", "pybox", "cleanup", "--backend", BACKEND],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert theirs() == []
    assert sandbox.run("print('alive')").text == "alive"
    engine.close()


def test_a_client_in_another_pid_namespace_keeps_its_sandbox():
    """A client in `unshare -pf --mount-proc` (pid 1 there) is alive while the host
    starts and stops sandboxes and runs `pybox cleanup`: its owner cannot be judged from
    the host, so only an explicit `pybox cleanup --owner` removes its container."""
    import shutil

    if shutil.which("unshare") is None or os.geteuid() != 0:
        import pytest

        pytest.skip("needs unshare and root")
    engine = get_plugins().backend(BACKEND)()
    client = subprocess.Popen(["unshare", "-pf", "--kill-child", "--mount-proc", sys.executable, "-c", CLIENT,
                               IMAGE, BACKEND], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        container = client.stdout.readline().strip()
        assert container, "the client in its own pid namespace did not start a sandbox"
        labels = engine.container_labels(container)
        assert labels["pybox.pidns"] != ownership_pidns() and labels["pybox.pid"] in ("1", "2")
        # The host's own traffic: new processes start and stop sandboxes (each reaps once)...
        for _ in range(2):
            code = ("import sys, pybox\nwith pybox.Sandbox(image=sys.argv[1], backend=sys.argv[2]) as sb:\n"
                    "    sb.run('print(1)')\nimport time; time.sleep(1)")
            done = subprocess.run([sys.executable, "-c", code, IMAGE, BACKEND], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
        # ...and the plain cleanup.
        cleanup = subprocess.run([sys.executable, "-m", "pybox", "cleanup", "--backend", BACKEND],
                                 capture_output=True, text=True, timeout=120)
        assert cleanup.returncode == 0, cleanup.stderr
        assert engine.inspect(container).running, "the namespaced client's live sandbox was removed"
        # Only the user's explicit filter removes it.
        explicit = subprocess.run([sys.executable, "-m", "pybox", "cleanup", "--backend", BACKEND, "--owner",
                                   labels["pybox.session"]], capture_output=True, text=True, timeout=120)
        assert explicit.returncode == 0, explicit.stderr
        assert container[:12] in explicit.stdout
        assert engine.inspect(container).status == "removed"
    finally:
        client.kill()
        client.wait()
        engine.close()


def ownership_pidns():
    from pybox.ownership import pid_namespace

    return pid_namespace()
