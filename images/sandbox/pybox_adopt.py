"""The gateway side of pybox_boot: the kernel manager that adopts the prelaunched
kernel (configured as c.SeedingMappingKernelManager.kernel_manager_class)."""

from __future__ import annotations

import json
import os
import uuid

from jupyter_client.connect import port_names
from jupyter_client.provisioning import LocalProvisioner
from jupyter_server._tz import utcnow
from kernel_gateway.services.kernels.manager import KernelGatewayIOLoopKernelManager

from pybox_boot import CONNECTION_FILE_MODE, KERNEL_ARGV, KERNEL_USER, claim


class AdoptedProvisioner(LocalProvisioner):
    """A LocalProvisioner whose first launch takes over the prelaunched process."""

    adopt = None  # (Popen, connection file) until the first launch
    _fixed_ports = False

    async def pre_launch(self, **kwargs):
        if self.adopt is not None:
            process, path = self.adopt
            km = self.parent
            if process.poll() is None:
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
                self.ports_cached = self._fixed_ports = True  # not from the LocalPortCache
            else:  # died at start-up: launch normally
                self.adopt = None
                try:
                    os.remove(path)
                except OSError:
                    pass
        return await super().pre_launch(**kwargs)

    async def launch_kernel(self, cmd, **kwargs):
        if self.adopt is None:
            return await super().launch_kernel(cmd, **kwargs)
        process, _ = self.adopt
        self.adopt = None
        self.process = process
        self.pid = process.pid
        try:
            self.pgid = os.getpgid(process.pid)
        except OSError:
            self.pgid = None
        self.cwd = kwargs.get("cwd") or os.getcwd()
        self.log.info("pybox: adopted the prelaunched kernel (pid %s)", process.pid)
        return self.connection_info

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
            prelaunched = claim()
            if prelaunched is not None:
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
                self.provisioner = AdoptedProvisioner(
                    kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
                self.provisioner.adopt = prelaunched
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        # The kernel runs as the sandbox user: it must read its connection file, and
        # must not keep the gateway's user or capabilities (pybox_boot.KERNEL_USER).
        if self.connection_file:
            os.chmod(self.connection_file, CONNECTION_FILE_MODE)
        return [*KERNEL_USER, *cmd], kw
