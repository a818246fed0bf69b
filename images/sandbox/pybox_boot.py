"""Start-up of the pybox sandbox: the first kernel starts alongside the gateway, and
every Python kernel is forked from a process that has imported it already.

The stock gateway imports for ~0.4 s, then starts its prespawned kernel, which
imports for another ~0.4 s; so does every later kernel. Here the container's command
(``pybox-gateway``) first starts the kernel fork server (``pybox_forkserver``, as the
sandbox user: :class:`ForkServer`) and asks it for the first kernel, then imports and
runs the gateway in the same process, so the two start-ups overlap on separate cores.
The gateway's first kernel start then ADOPTS that kernel
(``pybox_adopt.AdoptingKernelManager``): same connection file, key and ports. Every
later start of a Python kernel (restarts included) is a fork of the server too
(``pybox_adopt.ForkingProvisioner``), in milliseconds; other kernels (bash, those
``pybox build --kernel`` adds), and any Python kernel the server cannot fork, are
launched the stock way. Interrupt (SIGINT to the process group), restart, shutdown and
the restarter behave as for any kernel (:class:`ForkedKernelProcess`).
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

#: The stock python3 kernelspec's command; only a kernel started with it is adopted.
KERNEL_ARGV = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
#: Fixed loopback ports of the prelaunched kernel: the container has its own network
#: namespace, and they lie below the ephemeral range (32768-60999) from which
#: jupyter_client draws the ports of every other kernel, so they never collide.
PORTS = {"shell_port": 20001, "iopub_port": 20002, "stdin_port": 20003, "control_port": 20004, "hb_port": 20005}
GATEWAY_CONFIG = "/etc/pybox/pybox_gateway_config.py"
#: The gateway's user (pybox-init runs the gateway so).
GATEWAY_UID = 999
#: Prefix of every kernel command: the sandbox user, no capabilities, no way back.
#: setpriv may change the uid because the gateway holds SETUID/SETGID/SETPCAP as ambient
#: capabilities (pybox-init); env gives the kernel the sandbox user's environment.
KERNEL_USER = [
    "/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--init-groups", "--inh-caps=-all",
    "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
    "/usr/bin/env", "-u", "JUPYTER_RUNTIME_DIR", "HOME=/home/sandbox", "USER=sandbox", "LOGNAME=sandbox",
    "IPYTHONDIR=/home/sandbox/.ipython",
    "PATH=/opt/pybox/bin:/home/sandbox/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
]
#: Mode of connection files: the kernel (the sandbox group) reads its own.
CONNECTION_FILE_MODE = 0o640

#: The gateway's token, taken out of the environment before any kernel can inherit it
#: (pybox_gateway_config.py reads it here).
token = ""
#: The TLS certificate and key files (PEM) when pybox passed them (a sandbox reached
#: across a network): written from the environment, readable by the gateway only.
tls_files: tuple[str, str] | None = None

#: The sandbox user: a forked kernel's /proc entry must say so (pybox_forkserver runs as it).
SANDBOX_UID = 1000
#: How long a fork may take before the server is given up on (killed) and the kernel
#: is launched the stock way; the first fork waits for the server's imports.
FORK_TIMEOUT = 10.0

_prelaunched: tuple[subprocess.Popen, str] | None = None
#: The kernel fork server of this gateway (started by main).
fork_server: ForkServer | None = None


def _runtime_dir() -> str:
    # jupyter_core.paths.jupyter_runtime_dir() without importing jupyter_core
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return os.environ["JUPYTER_RUNTIME_DIR"]
    data = os.environ.get("JUPYTER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "jupyter")
    return os.path.join(data, "runtime")


def kernel_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` as KERNEL_USER's ``env`` command passes it on to a kernel it runs."""
    env = dict(env)
    words = KERNEL_USER[KERNEL_USER.index("/usr/bin/env") + 1:]
    while words:
        word = words.pop(0)
        if word == "-u":
            env.pop(words.pop(0), None)
        else:
            name, _, value = word.partition("=")
            env[name] = value
    return env


class ForkUnavailable(Exception):
    """The fork server cannot start this kernel: launch it the stock way."""


class ForkDisbelieved(ForkUnavailable):
    """The fork server named a process that is not a kernel it forked: it is not to be
    trusted again (pybox_adopt then kills it and launches every kernel the stock way)."""


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) "
    return fields[0].decode(), int(fields[1]), int(fields[19])


def _proc_uids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return [int(value) for value in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


class ForkServer:
    """The gateway's end of ``pybox_forkserver``: starts it as the sandbox user, asks it
    for kernels, and believes nothing it says that it can check (it runs as the
    sandbox user: kernel code can stop, kill or replace it)."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self._env = kernel_env(env)
        self._cwd = cwd
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._pending: dict[int, Future] = {}
        self._next_id = 0
        #: Exit codes the server reported, by kernel pid (pid -> returncode).
        self._exits: dict[int, int] = {}
        self._exited = threading.Condition(self._lock)
        self._disabled = False

    @property
    def started(self) -> bool:
        """Whether the server was ever started (it is at the first fork)."""
        return self._next_id > 0

    def _start(self) -> None:  # with the lock held
        # By path, not -m: the working directory is the sandbox's (see pybox_forkserver).
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pybox_forkserver.py")
        argv = [*KERNEL_USER[:KERNEL_USER.index("/usr/bin/env")], sys.executable, script]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env,
                                   cwd=self._cwd, start_new_session=True)
        # Requests are written from the gateway's event loop: never wait for the server to
        # read (it may stop, or shrink the pipe and leave it full; see fork).
        os.set_blocking(process.stdin.fileno(), False)
        self._process = process
        threading.Thread(target=self._read, args=(process,), name="pybox-forkserver", daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        while True:
            line = process.stdout.readline(1 << 16)
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            with self._lock:
                if isinstance(message.get("exit"), int) and isinstance(message.get("status"), int):
                    if len(self._exits) > 10_000:
                        self._exits.clear()
                    self._exits[message["exit"]] = message["status"]
                    self._exited.notify_all()
                    continue
                future = self._pending.pop(message.get("id"), None) if isinstance(message.get("id"), int) else None
            if future is None:
                continue
            pid, error = message.get("pid"), message.get("error")
            if isinstance(pid, int) and pid > 1:
                future.set_result(pid)
            elif isinstance(error, str) and pid is None:
                future.set_exception(ForkUnavailable(error[:200]))
            else:
                future.set_exception(ForkDisbelieved(f"the fork server answered {str(message)[:100]}"))
        with self._lock:
            pending, self._pending = self._pending, {}
            if self._process is process:
                self._process = None
        for future in pending.values():
            future.set_exception(ForkUnavailable("the fork server exited"))
        try:
            process.wait(1)
        except subprocess.TimeoutExpired:
            pass

    def fork(self, connection_file: str, env: dict[str, str], cwd: str | None) -> Future:
        """Ask for a kernel; the future's result is its pid, checked to be a child of
        the server running as the sandbox user (ForkUnavailable otherwise)."""
        with self._lock:
            if self._disabled:
                raise ForkUnavailable("the fork server is disabled: it named a process it had not forked")
            if self._process is None or self._process.poll() is not None:
                self._start()  # the first fork, or the server died: the request waits for its imports
            self._next_id += 1
            ident = self._next_id
            future: Future = Future()
            self._pending[ident] = future
            process = self._process
        request = {"id": ident, "connection_file": connection_file, "env": kernel_env(env), "cwd": cwd}
        data = json.dumps(request).encode() + b"\n"
        try:
            written = os.write(process.stdin.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            with self._lock:
                self._pending.pop(ident, None)
            raise ForkUnavailable(f"the fork server does not read: {error}") from None
        if written != len(data):
            # Its pipe is full: it does not read what it is sent (a partial request is left
            # in it, so it is of no further use either). Killed; the next fork starts another.
            with self._lock:
                self._pending.pop(ident, None)
                if self._process is process:
                    self._process = None
            try:
                process.kill()
            except OSError:
                pass
            raise ForkUnavailable("the fork server does not read its requests: killed")
        checked: Future = Future()

        def check(done: Future) -> None:
            try:
                pid = done.result()
                checked.set_result(self._check(pid, process.pid))
            except Exception as error:
                if isinstance(error, ForkDisbelieved):
                    # Now, not when a kernel start awaits this answer: a spare's may wait
                    # for the next start, the lying server alive meanwhile.
                    self.give_up(disable=True)
                checked.set_exception(error if isinstance(error, ForkUnavailable) else ForkUnavailable(str(error)))

        future.add_done_callback(check)
        return checked

    @staticmethod
    def _check(pid: int, server_pid: int) -> ForkedKernelProcess:
        stat = _proc_stat(pid)
        if stat is None or stat[1] != server_pid or set(_proc_uids(pid)) != {SANDBOX_UID}:
            raise ForkDisbelieved(f"pid {pid} is not a kernel of the fork server")
        return ForkedKernelProcess(pid, stat[2], fork_server)

    def give_up(self, disable: bool = False) -> None:
        """Kill a server that did not answer in time (a stopped or hostile one); with
        ``disable``, start no other (it lied: what starts it cannot be trusted)."""
        with self._lock:
            process, self._process = self._process, None
            self._disabled = self._disabled or disable
        if process is not None and process.poll() is None:
            try:
                process.kill()
            except OSError:
                pass

    def exit_status(self, pid: int, wait: float) -> int | None:
        """The exit code the server reported for ``pid``, waiting up to ``wait`` s."""
        deadline = time.monotonic() + wait
        with self._lock:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0 or self._process is None:
                    return None
                self._exited.wait(left)
            return self._exits.pop(pid)


class ForkedKernelProcess:
    """What jupyter_client's LocalProvisioner uses of a Popen, for a forked kernel: not
    the gateway's child, so it is watched through /proc (start time against pid reuse)
    and its exit code comes from the fork server or, when the server is gone and the
    kernel became this process's child (the gateway is the container's pid 1), from
    waitpid."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, start_time: int, server: ForkServer | None) -> None:
        self.pid = pid
        self._start_time = start_time
        self._server = server
        self.returncode: int | None = None

    def _alive(self) -> bool:
        stat = _proc_stat(self.pid)
        if stat is None or stat[2] != self._start_time:
            return False
        if stat[0] != "Z":
            return True
        if stat[1] == os.getpid():  # orphaned to us: reap it
            try:
                _, status = os.waitpid(self.pid, os.WNOHANG)
                if status:
                    self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        return False

    def poll(self) -> int | None:
        if self.returncode is None and not self._alive():
            code = self._server.exit_status(self.pid, 0.2) if self._server is not None else None
            if self.returncode is None:
                self.returncode = code if code is not None else -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["kernel"], timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None and self._alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def prelaunch(first_kernel: bool) -> None:
    """Make the fork server (started at the first fork) and (``first_kernel``) launch
    the first kernel now, as the gateway's LocalProvisioner would.

    The first kernel is launched, not forked: a server started with the container would
    cost every sandbox its imports and ~15 MiB, and most sandboxes run one kernel."""
    global _prelaunched, fork_server
    # The env KernelGatewayIOLoopKernelManager gives a kernel.
    env = os.environ.copy()
    env.pop("PYTHONEXECUTABLE", None)
    env["KERNEL_GATEWAY"] = "1"
    fork_server = ForkServer(env, os.getcwd())
    if not first_kernel:
        return
    path = _connection_file(PORTS)
    env["JPY_PARENT_PID"] = str(os.getpid())  # as launch_kernel sets it
    cmd = KERNEL_USER + [sys.executable if a == "python" else a.replace("{connection_file}", os.path.realpath(path))
                         for a in KERNEL_ARGV]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, cwd=os.getcwd(), start_new_session=True)
    process.stdin.close()
    _prelaunched = (process, path)


def _connection_file(ports: dict[str, int]) -> str:
    runtime = _runtime_dir()
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    path = os.path.join(runtime, f"kernel-pybox-{secrets.token_hex(8)}.json")
    info = {**ports, "ip": "127.0.0.1", "transport": "tcp", "signature_scheme": "hmac-sha256",
            "key": secrets.token_hex(32), "kernel_name": "python3"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CONNECTION_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.chmod(path, CONNECTION_FILE_MODE)  # whatever the umask
    return path


def ready_kernel(ports: dict[str, int], env: dict[str, str], cwd: str) -> tuple[Future, str]:
    """Write a connection file with ``ports`` and a new key, and ask the fork server for
    a kernel on it: (future of its ForkedKernelProcess, the file)."""
    path = _connection_file(ports)
    try:
        future = fork_server.fork(os.path.realpath(path), env, cwd)
    except ForkUnavailable as error:
        future = Future()
        future.set_exception(error)
    return future, path


def claim() -> tuple[subprocess.Popen, str] | None:
    """The prelaunched kernel (process, connection file), once; None afterwards."""
    global _prelaunched
    claimed, _prelaunched = _prelaunched, None
    return claimed


def main() -> None:
    global token
    if os.getuid() != GATEWAY_UID:
        raise SystemExit(f"pybox-gateway: runs as the gateway user (uid {GATEWAY_UID}), not uid {os.getuid()}: "
                         "start the container with its command, /usr/local/sbin/pybox-init, as root")
    token = os.environ.pop("KG_AUTH_TOKEN", "")
    _take_tls_files()
    prespawn = int(os.environ.get("KG_PRESPAWN_COUNT") or 0)
    argv = [f"--config={GATEWAY_CONFIG}", *sys.argv[1:]]
    if token:
        prelaunch(first_kernel=prespawn > 0)
    if _prelaunched is not None:
        # The gateway's own prespawn waits 0.1 s after its loop starts: adopt at once
        # instead, and let the gateway prespawn only the rest.
        argv.append(f"--KernelGatewayApp.prespawn_count={prespawn - 1}")
    # Import the gateway while the fork server imports IPython on the other core.
    # Without the cyclic GC meanwhile: the start-up makes ~56,000 objects the collector
    # tracks, nearly all alive as long as the gateway; the collections they trigger find
    # next to no garbage, yet walk the growing heap (~3% of the instructions of import +
    # initialize, more in cache misses; ~0.6 MiB more memory, the little garbage left).
    # Frozen afterwards (the permanent generation): later collections skip them.
    gc.disable()
    try:
        from kernel_gateway.gatewayapp import KernelGatewayApp

        app = KernelGatewayApp.instance()
        app.initialize(argv)
    finally:
        gc.enable()
    gc.freeze()
    if _prelaunched is not None:
        app.io_loop.add_callback(_adopt, app)
    app.start()


def _take_tls_files() -> None:
    global tls_files
    cert, key = os.environ.pop("PYBOX_TLS_CERT", ""), os.environ.pop("PYBOX_TLS_KEY", "")
    if not cert and not key:
        return
    if not cert or not key:
        raise SystemExit("pybox-gateway: PYBOX_TLS_CERT and PYBOX_TLS_KEY come together; one is missing")
    directory = os.path.join(os.environ.get("HOME") or "/var/lib/pybox", "tls")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)  # the home is the sandbox group's to traverse: not this
    paths = []
    for name, pem in (("gateway.crt", cert), ("gateway.key", key)):
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        paths.append(path)
    tls_files = (paths[0], paths[1])


async def _adopt(app) -> None:
    try:
        await app.kernel_manager.start_seeded_kernel()
    except Exception:
        app.log.exception("pybox: could not start the first kernel")
