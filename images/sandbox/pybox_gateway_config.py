# Kernel gateway configuration of the pybox sandbox image.
# The stock gateway drops output, listens without a token and notices dead kernels
# late; each setting below says which of these it fixes.
import json
import signal

from jupyter_client.jsonutil import json_default
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_path
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from traitlets import default

import pybox_boot

c = get_config()  # noqa: F821

# Refuse to serve without a per-sandbox token: pybox passes one in KG_AUTH_TOKEN and
# the gateway then rejects every request (REST and websocket) that lacks it.
# pybox_boot.main took it out of the environment, which kernels inherit.
token = pybox_boot.token
if not token:
    raise SystemExit("pybox sandbox: KG_AUTH_TOKEN is not set; refusing to start an open kernel gateway")
c.KernelGatewayApp.auth_token = token

# TLS with the certificate pybox made for this sandbox (and pins) when the client is
# across a network (a remote engine); plain HTTP on the engine host's loopback.
if pybox_boot.tls_files is not None:
    c.KernelGatewayApp.certfile, c.KernelGatewayApp.keyfile = pybox_boot.tls_files

# Inside the container; the engine publishes the port on the host's loopback only.
c.KernelGatewayApp.ip = "0.0.0.0"
c.KernelGatewayApp.port = 8888

# The stock IOPub rate limit (1 MB/s, 1000 msg/s) silently replaces output with a
# warning: 10 MB printed arrived as 321 bytes. pybox never loses output.
c.ZMQChannelsWebsocketConnection.limit_rate = False
c.ZMQChannelsWebsocketConnection.iopub_data_rate_limit = 0.0
c.ZMQChannelsWebsocketConnection.iopub_msg_rate_limit = 0.0


def signal_name(number):
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def oom_kills():
    """How many processes the OOM killer has killed in this container (cgroup v2 or v1)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as handle:
                for line in handle:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


class PyboxChannelsConnection(ZMQChannelsWebsocketConnection):
    """The kernel websocket, with TCP_NODELAY and with the reason a kernel died.

    TCP_NODELAY, which the stock gateway loses:
    tornado's HTTP1Connection._finish_request turns Nagle's algorithm back on after
    the 101 response of the websocket upgrade, and jupyter_server never turns it
    off again. Each execution writes ~5 small frames (busy, execute_input, stream,
    execute_reply, idle): Nagle holds all but the first until the client ACKs it,
    and the client, with nothing to send, delays that ACK by Linux's 40 ms minimum.
    That was the stock gateway's 40 ms per execution.

    The reason: when the restarter finds the kernel dead it tells clients only
    "restarting". The OOM killer is the usual cause in a memory-limited sandbox and
    the engine does not report it while the container runs, so the status message
    carries ``pybox_reason`` when the container's OOM-kill count went up.
    """

    def connect(self):
        try:
            self.websocket_handler.set_nodelay(True)
        except Exception:  # a connection without a socket still works, only slower
            self.log.warning("pybox: could not set TCP_NODELAY on the kernel websocket", exc_info=True)
        self._oom_kills_seen = oom_kills()
        return super().connect()

    def _send_status_message(self, status):
        if status not in ("restarting", "dead"):
            return super()._send_status_message(status)
        kills = oom_kills()
        code = getattr(self.kernel_manager, "pybox_exit_code", None)  # set by pybox_adopt
        if code is None:
            reason = "the kernel process exited"
        elif code < 0:
            reason = f"the kernel process was killed by {signal_name(-code)}"
        else:
            reason = f"the kernel process exited with code {code}"
        if kills is not None and self._oom_kills_seen is not None and kills > self._oom_kills_seen:
            reason = f"OOMKilled: the kernel ran out of memory (the sandbox's memory limit); {reason}"
        self._oom_kills_seen = kills
        iopub = self.channels.get("iopub", None)
        if iopub and not iopub.closed():
            iopub.flush()  # as the stock method: the dead kernel's messages go first
        msg = self.session.msg("status", {"execution_state": status, "pybox_reason": reason})
        msg["channel"] = "iopub"
        self.write_message(json.dumps(msg, default=json_default))


c.KernelGatewayApp.kernel_websocket_connection_class = PyboxChannelsConnection

# A dead kernel is seen within half a second (default 3 s) and restarted at once.
c.KernelRestarter.time_to_dead = 0.5
# A kernel that ignores shutdown (busy in C, SIGINT ignored) is killed after 1 s, so
# a restart after a timeout returns quickly.
c.KernelManager.shutdown_wait_time = 1.0
# pybox lists kernels to find the prespawned one (the token still guards the list).
c.JupyterWebsocketPersonality.list_kernels = True



class PyboxKernelSpecManager(KernelSpecManager):
    """The stock kernel spec manager, but for where it looks for kernelspecs.

    Stock, it adds IPython's directory (~/.ipython/kernels) to jupyter_path("kernels"),
    and finding it imports IPython (its whole package: ~45 ms of CPU and ~2.6 MiB in the
    gateway at the first kernel start) and makes ~/.ipython in the gateway's home. That
    home is the gateway's own (pybox-init: a fresh directory, IPYTHONDIR unset), so the
    directory never holds a kernelspec: the image's are in the venv (the Dockerfile
    installs them with --sys-prefix), which jupyter_path lists.
    """

    @default("kernel_dirs")
    def _pybox_kernel_dirs(self):
        return jupyter_path("kernels")


c.KernelGatewayApp.kernel_spec_manager_class = PyboxKernelSpecManager

# The first kernel is started by the container's command (pybox-gateway) alongside the
# gateway; its manager adopts it instead of launching another (see pybox_boot).
c.SeedingMappingKernelManager.kernel_manager_class = "pybox_adopt.AdoptingKernelManager"
