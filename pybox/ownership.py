"""Who owns a sandbox container, and what happens to it when its owner ends.

Every container carries labels naming its owner: the machine (machine id and host
name), its boot, the owner's pid namespace, process id and that process's start time
(so a recycled pid is not mistaken for the owner), the pybox session and when it was
made. A container whose owner is provably gone (SIGKILLed, crashed before cleanup) is an
orphan: ``reap_orphans`` removes it. Provably means: same machine and, in the same boot,
the same pid namespace as the judge, where the pid is gone or belongs to a later
process; or a previous boot of this machine. A container whose owner cannot be judged
from here (another machine on a shared engine, another pid namespace such as a container
or ``unshare -p``, labels from an older pybox) is never removed automatically: only by
``pybox cleanup`` with an age or owner filter.

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
import time
import weakref
from typing import Callable, Protocol

from pybox.backend import LABEL, Backend
from pybox.errors import PyboxError

log = logging.getLogger(__name__)

HOST_LABEL = f"{LABEL}.host"
MACHINE_LABEL = f"{LABEL}.machine"
BOOT_LABEL = f"{LABEL}.boot"
PIDNS_LABEL = f"{LABEL}.pidns"
PID_LABEL = f"{LABEL}.pid"
STARTED_LABEL = f"{LABEL}.started"
SESSION_LABEL = f"{LABEL}.session"
CREATED_LABEL = f"{LABEL}.created"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This machine's identity (systemd's machine id), or "" where there is none."""
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def boot_id() -> str:
    """This boot of the machine (a pid and a start time only mean something within it)."""
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace(pid: int | str = "self") -> str:
    """The pid namespace of a process (``pid:[4026531836]``): pids of other namespaces
    mean nothing here."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


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


_STATIC_OWNER = {
    HOST_LABEL: socket.gethostname(),
    MACHINE_LABEL: machine_id(),
    BOOT_LABEL: boot_id(),
    PIDNS_LABEL: pid_namespace(),
}


def owner_labels(session: str = SESSION) -> dict[str, str]:
    """The labels naming this process as a container's owner (``created`` is left out:
    ``creation_labels`` adds it at each start)."""
    pid = os.getpid()
    return {
        LABEL: "1",
        **_STATIC_OWNER,
        PID_LABEL: str(pid),
        STARTED_LABEL: process_start_time(pid) or "",
        SESSION_LABEL: session,
    }


def creation_labels(session: str = SESSION) -> dict[str, str]:
    """``owner_labels`` plus when the container is made (for ``cleanup --older-than``)."""
    return {**owner_labels(session), CREATED_LABEL: str(int(time.time()))}


#: Judgments of a container's owner.
ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"


def judge_owner(labels: dict[str, str]) -> str:
    """ALIVE, GONE (provably: the container is an orphan) or UNKNOWN (cannot be judged
    from here: never remove it automatically)."""
    if labels.get(HOST_LABEL) != socket.gethostname():
        return UNKNOWN  # another machine sharing the engine
    machine = labels.get(MACHINE_LABEL)
    if not machine or machine != machine_id() or not labels.get(BOOT_LABEL):
        return UNKNOWN  # an older pybox's labels, or a machine we cannot tell apart
    if labels[BOOT_LABEL] != boot_id():
        return GONE  # this machine rebooted since: its processes are all gone
    namespace = labels.get(PIDNS_LABEL)
    if not namespace or namespace != pid_namespace():
        return UNKNOWN  # its pid means nothing in our namespace
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return UNKNOWN
    started = process_start_time(pid)
    if started is None:
        return GONE
    recorded = labels.get(STARTED_LABEL)
    if not started or not recorded:
        return UNKNOWN
    return ALIVE if recorded == started else GONE  # a different start time: the pid was reused


def reap_orphans(backend: Backend, dry_run: bool = False, older_than: float | None = None,
                 owner: str | None = None) -> list[str]:
    """Remove pybox containers whose owner is provably gone; return their ids (with
    ``dry_run``: only find them).

    With ``older_than`` (seconds) or ``owner`` (a host name, ``host:pid``, or a pybox
    session id) also remove (besides every provable orphan) the containers whose owner cannot be judged from here
    (another machine, another pid namespace, older labels) and that match every filter
    given: an explicit decision of the user's (``pybox cleanup``), never the automatic
    reaper's. A container whose owner is judged alive is never removed."""
    explicit = older_than is not None or owner is not None
    selector = {LABEL: "1"} if explicit else {LABEL: "1", HOST_LABEL: socket.gethostname()}
    reaped = []
    for container_id in backend.list_containers(selector):
        try:
            labels = backend.container_labels(container_id)
        except PyboxError as exc:
            log.debug("reaper: cannot read the labels of container %s: %s", container_id[:12], exc)
            continue
        if labels is None:
            continue
        judgment = judge_owner(labels)
        if judgment == ALIVE or (judgment == UNKNOWN and not (explicit and _matches(labels, older_than, owner))):
            continue
        reaped.append(container_id)
        if dry_run:
            continue
        backend.remove(container_id)
        log.info("reaper: removed container %s (owner pid %s on %s: %s)", container_id[:12],
                 labels.get(PID_LABEL), labels.get(HOST_LABEL),
                 "gone" if judgment == GONE else "not judgeable here, removed by the user's filter")
    return reaped


def _matches(labels: dict[str, str], older_than: float | None, owner: str | None) -> bool:
    if older_than is not None:
        try:
            created = float(labels.get(CREATED_LABEL, ""))
        except ValueError:
            return False  # age unknown (an older pybox's container): not matched by an age filter
        if time.time() - created < older_than:
            return False
    if owner is not None:
        host, _, pid = owner.partition(":")
        by_session = labels.get(SESSION_LABEL) == owner
        by_host = labels.get(HOST_LABEL) == host and (not pid or labels.get(PID_LABEL) == pid)
        if not (by_session or by_host):
            return False
    return True


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
    application left SIGTERM alone (main thread only, once per process).

    The atexit handler is registered again at every call. atexit runs the last one
    registered first, and an SDK that a backend loads at its first start may register
    its own: the kubernetes client deletes the kubeconfig's certificate files at exit,
    after which pybox could no longer reach the cluster to remove the pods."""
    global _atexit_installed, _sigterm_handler
    if not process_hooks_enabled():
        return
    with _hooks_lock:
        atexit.unregister(close_live_sandboxes)
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
