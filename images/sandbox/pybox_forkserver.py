"""The kernel fork server: new Python kernels are forked from a process that has
already imported them, instead of each importing IPython and ipykernel anew.

A fresh ``python -m ipykernel_launcher`` spends ~0.3 CPU-seconds importing before it
initializes (~0.05 s). This process, started once per container by the gateway
(``pybox_boot.ForkServer``) as the sandbox user with no capabilities, exactly as a
kernel is (``pybox_boot.KERNEL_USER``), imports all of that once and then, for each
request, forks a child that runs ``ipykernel_launcher`` as ``python -m`` would: its own
session, the request's environment and working directory, the connection file the
gateway wrote. Every kernel is still its own process with its own state: nothing is
created before the fork but imported modules (no zmq context, no shell, no thread).

Protocol, one JSON object per line: the gateway writes requests to stdin
(``{"id": N, "connection_file": PATH, "env": {...}, "cwd": DIR}``); this process writes
to stdout ``{"ready": PID}`` once imported, ``{"id": N, "pid": PID}`` or
``{"id": N, "error": WHY}`` per request, and ``{"exit": PID, "status": CODE}`` when a
kernel it forked ends (CODE as ``Popen.returncode``: negative for a signal).

It runs as the sandbox user, so kernel code can signal, stop or trace it, as it can any
kernel of its sandbox: the gateway trusts nothing it says (it checks every pid it is
given, watches kernels through /proc, and starts kernels the stock way whenever this
process does not answer in time). A request is refused, and the gateway starts that
kernel the stock way, when an import-time setting (a ``PYTHON*`` variable) differs from
this process's, or when the sandbox user's site-packages changed since it started
(``pip install``: its modules may be newer than the ones imported here; the process
then exits, and the gateway starts a fresh one).
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import select
import signal
import site
import sys

# What ipykernel_launcher imports, and what IPKernelApp.initialize imports on top
# (measured: IPython 9.18, ipykernel 7.4). A module missing from this list is only
# imported by each child, more slowly: no harm.
PRELOAD = [
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.iostream",
    "ipykernel.debugger", "ipykernel_launcher", "IPython", "IPython.core.completerlib",
    "IPython.core.debugger", "IPython.core.oinspect", "IPython.extensions.storemagic",
    "IPython.utils.wildcard", "psutil", "tornado.gen", "tornado.locks", "tornado.queues",
    "tornado.platform.asyncio", "pdb", "faulthandler", "unicodedata", "random", "pybox_kernel",
]

_LINE_LIMIT = 1 << 20


def _user_site_stamp() -> tuple[int, int] | None:
    try:
        info = os.stat(site.getusersitepackages())
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ino


def _python_settings(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("PYTHON")}


def _write(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _child(request: dict, protocol_fds: tuple[int, ...], session_made: int) -> None:
    """In the forked child: become the kernel; never return."""
    try:
        os.setsid()
        os.close(session_made)  # the server reports the pid only now (see serve)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(2, 1)  # stdout to the container's log, as a launched kernel's
        for fd in (null, *protocol_fds):
            if fd > 2:
                os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        cwd = request.get("cwd") or os.getcwd()
        os.chdir(cwd)
        if sys.path and sys.path[0] == _script_dir:
            sys.path[0] = os.getcwd()  # as `python -m` in that directory
        import random

        random.seed()  # each kernel its own sequence, not a copy of this process's
        sys.argv = ["-m", "-f", request["connection_file"]]
        runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _reap(out, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _write(out, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def serve() -> None:
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    # Nothing a module prints at import may land in the protocol stream.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)

    # The cyclic GC off while preloading (what the imports make lives on: collections
    # would find next to no garbage), then everything frozen in the permanent
    # generation, which the kernels inherit: their collections neither walk these
    # objects nor write to them, so the pages they share with this process stay shared
    # (the gc module's documentation recommends this for a pre-forking server).
    gc.disable()
    try:
        for name in PRELOAD:
            try:
                __import__(name)
            except Exception as error:  # a child imports it again and reports the error there
                print(f"pybox-forkserver: could not preload {name}: {error!r}", file=sys.stderr)
    finally:
        gc.enable()
    gc.freeze()
    settings = _python_settings(dict(os.environ))
    stamp = _user_site_stamp()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    protocol_fds = (requests.fileno(), out.fileno(), wake_r, wake_w)
    _write(out, {"ready": os.getpid()})

    buffer = b""
    while True:
        _reap(out, children)
        try:
            readable, _, _ = select.select([requests, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            os.read(wake_r, 4096)
        if requests not in readable:
            continue
        chunk = requests.read(65536)
        if not chunk:
            return  # the gateway is gone
        buffer += chunk
        if len(buffer) > _LINE_LIMIT and b"\n" not in buffer:
            print("pybox-forkserver: a request line over 1 MiB: exiting", file=sys.stderr)
            return
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
                ident = request["id"]
                if not isinstance(request["connection_file"], str) or not isinstance(request["env"], dict):
                    raise TypeError("connection_file and env")
            except (ValueError, KeyError, TypeError) as error:
                print(f"pybox-forkserver: bad request: {error!r}", file=sys.stderr)
                continue
            if _python_settings(request["env"]) != settings:
                _write(out, {"id": ident, "error": "env: a PYTHON* variable differs from the fork server's"})
                continue
            if _user_site_stamp() != stamp:
                _write(out, {"id": ident, "error": "stale: the user's site-packages changed"})
                print("pybox-forkserver: the user's site-packages changed: exiting (the gateway starts "
                      "a fresh server)", file=sys.stderr)
                return
            sys.stdout.flush()
            sys.stderr.flush()
            # The gateway signals a kernel's process group (interrupt, kill): the pid
            # goes out only once the child leads its own, never while it is still in
            # this server's group.
            session_r, session_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(session_r)
                _child(request, protocol_fds, session_w)
            os.close(session_w)
            while os.read(session_r, 1):
                pass
            os.close(session_r)
            children.add(pid)
            _write(out, {"id": ident, "pid": pid})


# Run as a script (pybox_boot.ForkServer), not with -m: the working directory is the
# sandbox's, and nothing there may stand in for this server or what it preloads.
_script_dir = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    try:
        serve()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
