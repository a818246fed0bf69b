"""Who owns a sandbox container, and reaping the containers of owners that died.

Every container carries labels naming its owner: host, process id and that
process's start time (so a recycled pid is not mistaken for the owner), and the
pybox session. A container whose owner on this host is gone (SIGKILLed, crashed
before cleanup) is an orphan: ``reap_orphans`` removes it. Containers of live
processes, and of other hosts, are never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Callable

from pybox.backend import LABEL, Backend
from pybox.errors import PyboxError

HOST_LABEL = f"{LABEL}.host"
PID_LABEL = f"{LABEL}.pid"
STARTED_LABEL = f"{LABEL}.started"
SESSION_LABEL = f"{LABEL}.session"


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None when it
    does not exist (Linux /proc; elsewhere the pid alone is used)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_labels(session: str) -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL: "1",
        HOST_LABEL: socket.gethostname(),
        PID_LABEL: str(pid),
        STARTED_LABEL: process_start_time(pid) or "",
        SESSION_LABEL: session,
    }


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that owns a container (by its labels) still runs. Owners
    on other hosts, and labels that say too little, count as alive: never guess."""
    if labels.get(HOST_LABEL) != socket.gethostname():
        return True
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return True
    started = process_start_time(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    recorded = labels.get(STARTED_LABEL)
    return not recorded or not started or recorded == started


def reap_orphans(backend: Backend) -> list[str]:
    """Remove this host's pybox containers whose owner process is gone; return their ids."""
    reaped = []
    for container_id in backend.list_containers({LABEL: "1", HOST_LABEL: socket.gethostname()}):
        try:
            labels = backend.container_labels(container_id)
        except PyboxError:
            continue
        if labels is not None and not owner_alive(labels):
            backend.remove(container_id)
            reaped.append(container_id)
    return reaped


_reaped_backends: set[str] = set()
_reap_lock = threading.Lock()


def reap_in_background(make_backend: Callable[[], Backend], name: str) -> None:
    """Once per process and backend, reap orphans without delaying the caller."""
    with _reap_lock:
        if name in _reaped_backends:
            return
        _reaped_backends.add(name)

    def work() -> None:
        backend = make_backend()
        try:
            reap_orphans(backend)
        except PyboxError:
            pass  # best effort: the engine's trouble shows up in the caller's own calls
        finally:
            backend.close()

    threading.Thread(target=work, name="pybox-reaper", daemon=True).start()


_sigterm_installed = False


def stop_on_sigterm(stop_all: Callable[[], None]) -> None:
    """On SIGTERM, stop the live sandboxes, then die of SIGTERM as before. Only where
    the application left SIGTERM alone, and only from the main thread."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: object) -> None:
        try:
            stop_all()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    _sigterm_installed = True
