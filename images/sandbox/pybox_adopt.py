"""The gateway side of pybox_boot: the kernel manager whose Python kernels are forks
of the kernel fork server, the first one adopted from the container's start
(configured as c.SeedingMappingKernelManager.kernel_manager_class)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pybox_boot
from jupyter_client.connect import LocalPortCache, port_names
from jupyter_client.provisioning import LocalProvisioner
from jupyter_server._tz import utcnow
from kernel_gateway.services.kernels.manager import KernelGatewayIOLoopKernelManager
from pybox_boot import (
    CONNECTION_FILE_MODE,
    FORK_TIMEOUT,
    KERNEL_ARGV,
    KERNEL_USER,
    ForkDisbelieved,
    ForkUnavailable,
    claim,
)


#: A kernel forked ahead of need (future, connection file, env, cwd): the next Python
#: kernel started with the same env and cwd takes it over, so ``sb.kernel()`` waits for
#: no start-up at all. Made when a new kernel starts, but the first (a sandbox that
#: never opens a second kernel never pays for the server or a spare), one at a time.
_spare = None
#: Seconds after a kernel's start before the spare is forked.
SPARE_DELAY = 0.2


def _make_spare(env, cwd) -> None:
    global _spare
    if _spare is not None or pybox_boot.fork_server is None:
        return
    cache = LocalPortCache.instance()
    ports = {name: cache.find_available_port("127.0.0.1") for name in port_names}
    future, path = pybox_boot.ready_kernel(ports, env, cwd)
    _spare = (future, path, pybox_boot.kernel_env(env), cwd)


def _take_spare():
    global _spare
    spare, _spare = _spare, None
    if spare is None:
        return None
    future, path = spare[0], spare[1]
    if future.done() and (future.exception() is not None or future.result().poll() is not None):
        _discard(future, path, ports=True)
        return None
    return spare


def _discard(future, path, ports: bool) -> None:
    """Give up a ready kernel nobody took: kill it, remove its file, return its ports."""
    def kill(done):
        if done.exception() is None:
            done.result().kill()
    future.add_done_callback(kill)
    try:
        if ports:
            with open(path) as f:
                info = json.load(f)
            cache = LocalPortCache.instance()
            for name in port_names:
                cache.return_port(info[name])
        os.remove(path)
    except (OSError, ValueError, KeyError):
        pass


class ForkingProvisioner(LocalProvisioner):
    """A LocalProvisioner that forks Python kernels from the fork server (the stock
    launch when it cannot), taking over the prelaunched kernel or the spare when there
    is one."""

    adopt = None  # (future of the ForkedKernelProcess, connection file) until the first launch
    _spare_env = None  # (env, cwd) the adopted spare was made with
    _fixed_ports = False
    _new_kernel = False

    async def pre_launch(self, **kwargs):
        km = self.parent
        self._new_kernel = not km._connection_file_written  # not a restart
        if self.adopt is None and self._new_kernel:
            spare = _take_spare()
            if spare is not None:
                self.adopt = spare[:2]
                self._spare_env = spare[2:]
        if self.adopt is not None:
            kernel, path = self.adopt  # the prelaunched Popen, or the spare's future
            if kernel.poll() is None if isinstance(kernel, subprocess.Popen) else \
                    not (kernel.done() and kernel.exception() is not None):
                with open(path) as f:
                    info = json.load(f)
                # Ports first, so the manager records them as fixed, not random: a
                # restart with newports=True (the restarter's within 10 s of a start)
                # must not zero them, as it does not for LocalPortCache ports.
                for name in port_names:
                    setattr(km, name, info[name])
                km.load_connection_info(info)  # ip, transport, key, signature scheme
                km.connection_file = path
                km._connection_file_written = True  # the kernel reads this very file
                self.ports_cached = True  # not from the LocalPortCache now
                # The prelaunched kernel's are fixed; a spare's came from the cache
                self._fixed_ports = self._spare_env is None
            else:  # the server could not fork it: launch normally
                self.adopt = self._spare_env = None
                try:
                    os.remove(path)
                except OSError:
                    pass
        return await super().pre_launch(**kwargs)

    async def launch_kernel(self, cmd, **kwargs):
        adopt, self.adopt = self.adopt, None
        spare_env, self._spare_env = self._spare_env, None
        env = kwargs.get("env") or dict(os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        forkable = pybox_boot.fork_server is not None and \
            cmd[len(KERNEL_USER):-1] == [sys.executable, *KERNEL_ARGV[1:-1]]
        process = None
        if adopt is not None and spare_env is None:
            process = adopt[0]
            self.log.info("pybox: adopted the prelaunched kernel (pid %s)", process.pid)
        elif adopt is not None:
            process = await self._forked(adopt[0], "the spare")
            if process is not None and spare_env != (pybox_boot.kernel_env(env), cwd):
                # Made for another environment: this kernel starts afresh on its ports.
                process.kill()
                await asyncio.to_thread(process.wait, 5)
                process = None
        if process is None and forkable and pybox_boot.fork_server.started:
            try:
                future = pybox_boot.fork_server.fork(cmd[-1], env, cwd)
            except ForkUnavailable as error:
                self.log.info("pybox: launching the kernel (%s)", error)
            else:
                process = await self._forked(future, "a kernel")
        if forkable and self._new_kernel and (adopt is None or spare_env is not None):
            # The next kernel will be waiting (the first spare starts the server). Made a
            # moment later: forked now, its start-up would compete for the CPU with this
            # kernel's, whose first execution is likely on its way.
            asyncio.get_running_loop().call_later(SPARE_DELAY, _make_spare, env, cwd)
        if process is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = process
        self.pid = process.pid
        try:
            pgid = os.getpgid(process.pid)
        except OSError:
            pgid = None
        # Signals go to the kernel's own group (a new session), never to another: a
        # forked kernel still in the server's group would take the server along.
        self.pgid = pgid if pgid == process.pid else None
        self.cwd = cwd
        return self.connection_info

    async def _forked(self, future, what):
        try:
            process = await asyncio.wait_for(asyncio.wrap_future(future), FORK_TIMEOUT)
        except asyncio.TimeoutError:
            self.log.warning("pybox: the fork server did not answer in %s s; launching %s", FORK_TIMEOUT, what)
            pybox_boot.fork_server.give_up()
            return None
        except ForkDisbelieved as error:  # ForkServer killed and disabled it on hearing the lie
            self.log.warning("pybox: %s; the fork server is killed and not used again", error)
            return None
        except ForkUnavailable as error:
            self.log.info("pybox: launching %s (%s)", what, error)
            return None
        self.log.info("pybox: forked %s (pid %s)", what, process.pid)
        return process

    async def cleanup(self, restart: bool = False) -> None:
        if self._fixed_ports and not restart:
            self.ports_cached = False  # nothing to return to the LocalPortCache
        await super().cleanup(restart=restart)


class AdoptingKernelManager(KernelGatewayIOLoopKernelManager):
    """The gateway's kernel manager; its first start adopts the prelaunched kernel."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # jupyter_server sets these only once the start has returned, a loop turn after
        # the kernel is listed: a GET /api/kernels in that turn failed with a 500
        # (AttributeError: last_activity), with or without adoption.
        self.execution_state = "starting"
        self.reason = ""
        self.last_activity = utcnow()
        # How the kernel process ended when it was last found dead: Popen's returncode
        # (negative: a signal). The gateway config reports it to clients with the
        # "restarting" status, which the restarter sends before it restarts the kernel.
        self.pybox_exit_code = None

    async def is_alive(self):
        alive = await super().is_alive()
        if not alive:
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                self.pybox_exit_code = process.poll()
        return alive

    async def _async_pre_start_kernel(self, **kw):
        if self.provisioner is None and self.kernel_spec is not None and self.kernel_spec.argv == KERNEL_ARGV \
                and self.transport == "tcp" and not kw.get("extra_arguments"):
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            self.provisioner = ForkingProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            self.provisioner.adopt = claim()
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        # The kernel runs as the sandbox user: it must read its connection file, and
        # must not keep the gateway's user or capabilities (pybox_boot.KERNEL_USER).
        if self.connection_file:
            os.chmod(self.connection_file, CONNECTION_FILE_MODE)
        return [*KERNEL_USER, *cmd], kw
