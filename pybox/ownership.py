"""Who owns a sandbox container, and what happens to it when its owner ends.

Every container carries labels naming its owner: host, process id and that
process's start time (so a recycled pid is not mistaken for the owner), and the
pybox session. A container whose owner on this host is gone (SIGKILLed, crashed
before cleanup) is an orphan: ``reap_orphans`` removes it. Containers of live
processes, and of other hosts, are never touched.

Process-wide side effects, installed at the first sandbox start: an atexit handler
and a SIGTERM handler that close this process's live sandboxes, and a background
reaper per backend. ``disable_process_hooks()`` (or ``PYBOX_NO_PROCESS_HOOKS=1`` in
the environment) turns all three off, for applications that manage their own.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import socket
import threading
import weakref
from typing import Callable, Protocol

from pybox.backend import LABEL, Backend
from pybox.errors import PyboxError

log = logging.getLogger(__name__)

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


#: This process's pybox session, in every container's labels.
SESSION = secrets.token_hex(8)


def owner_labels(session: str = SESSION) -> dict[str, str]:
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


def reap_orphans(backend: Backend, dry_run: bool = False) -> list[str]:
    """Remove this host's pybox containers whose owner process is gone (with
    ``dry_run``: only find them); return their ids."""
    reaped = []
    for container_id in backend.list_containers({LABEL: "1", HOST_LABEL: socket.gethostname()}):
        try:
            labels = backend.container_labels(container_id)
        except PyboxError as exc:
            log.debug("reaper: cannot read the labels of container %s: %s", container_id[:12], exc)
            continue
        if labels is not None and not owner_alive(labels):
            if dry_run:
                reaped.append(container_id)
                continue
            backend.remove(container_id)
            log.info("reaper: removed container %s (owner pid %s on %s is gone)", container_id[:12],
                     labels.get(PID_LABEL), labels.get(HOST_LABEL))
            reaped.append(container_id)
    return reaped


_reaped_backends: set[str] = set()
_reap_lock = threading.Lock()


def reap_in_background(make_backend: Callable[[], Backend], name: str) -> None:
    """Once per process and backend, reap orphans without delaying the caller."""
    if not process_hooks_enabled():
        return
    with _reap_lock:
        if name in _reaped_backends:
            return
        _reaped_backends.add(name)

    def work() -> None:
        backend = make_backend()
        try:
            reap_orphans(backend)
        except PyboxError as exc:  # best effort: the engine's trouble shows up in the caller's own calls
            log.warning("reaper: could not reap orphaned containers on the %s backend: %s", name, exc)
        finally:
            backend.close()

    threading.Thread(target=work, name="pybox-reaper", daemon=True).start()


# -- this process's live sandboxes and the process-wide hooks ------------------------------

#: Environment variable that turns the process-wide hooks off ("1", "true", "yes").
NO_PROCESS_HOOKS_ENV = "PYBOX_NO_PROCESS_HOOKS"


class Closeable(Protocol):
    def close(self) -> None: ...


_live: weakref.WeakSet[Closeable] = weakref.WeakSet()
_hooks_disabled = False
_hooks_lock = threading.Lock()
_atexit_installed = False
_sigterm_handler: Callable[[int, object], None] | None = None


def process_hooks_enabled() -> bool:
    flag = os.environ.get(NO_PROCESS_HOOKS_ENV, "").strip().lower()
    return not _hooks_disabled and flag not in ("1", "true", "yes", "on")


def disable_process_hooks() -> None:
    """No atexit handler, SIGTERM handler or background reaper from pybox in this
    process: the application closes its sandboxes itself (``pybox cleanup`` removes
    what a crash leaves). Hooks already installed are removed."""
    global _hooks_disabled, _atexit_installed, _sigterm_handler
    with _hooks_lock:
        _hooks_disabled = True
        if _atexit_installed:
            atexit.unregister(close_live_sandboxes)
            _atexit_installed = False
        if _sigterm_handler is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _sigterm_handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _sigterm_handler = None


def track_live(sandbox: Closeable) -> None:
    """Remember a started sandbox (weakly) so that the process hooks can close it."""
    _live.add(sandbox)


def untrack_live(sandbox: Closeable) -> None:
    _live.discard(sandbox)


def close_live_sandboxes() -> None:
    """Close every live sandbox of this process (interpreter exit, SIGTERM)."""
    for sandbox in list(_live):
        try:
            sandbox.close()
        except Exception as exc:  # at exit: close the others whatever happens to one
            log.warning("could not close %r at process exit: %s", sandbox, exc)


def install_process_hooks() -> None:
    """At a sandbox start: the atexit handler, and the SIGTERM handler where the
    application left SIGTERM alone (main thread only). Once per process."""
    global _atexit_installed, _sigterm_handler
    if not process_hooks_enabled():
        return
    with _hooks_lock:
        if not _atexit_installed:
            atexit.register(close_live_sandboxes)
            _atexit_installed = True
        if _sigterm_handler is not None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def handler(signum: int, frame: object) -> None:
            log.info("SIGTERM: closing %d live sandbox(es)", len(_live))
            try:
                close_live_sandboxes()
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, handler)
        _sigterm_handler = handler
