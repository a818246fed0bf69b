"""The jupyter_server / jupyter_client / ipykernel / IPython / ... internals the
pybox sandbox image relies on, and the package versions they were verified against.

The image files (pybox_gateway_config.py, pybox_boot.py, pybox_adopt.py,
pybox_kernel.py, ipython_kernel_config.py) subclass and override private methods,
read private attributes, mirror undocumented behaviour and set config traits that
traitlets silently ignores once renamed. INTERNALS lists every such name; PINS the
versions it was verified against (requirements.txt pins exactly these).

    python pybox_internals.py

imports each module, resolves each attribute path and compares the installed
versions with PINS: one summary line and exit code 0 when all is as verified,
else every mismatch and missing name and exit code 1. The image build runs it
after installing the packages (Dockerfile), so a drifted version fails the build.
To move to a new version: check each name below against it (and the behaviour the
"why" column describes), adapt the image files, then update PINS and
requirements.txt together (tests/unit/test_image_internals.py checks they agree).

Only the standard library is imported at module level (the unit test loads this
file without the image's packages).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import sys
from typing import NamedTuple

#: Distribution name (as in requirements.txt) -> the version INTERNALS was verified against.
PINS = {
    "jupyter_kernel_gateway": "3.0.1",
    "jupyter_server": "2.21.1",
    "jupyter_client": "8.10.0",
    "jupyter_core": "5.9.1",
    "ipykernel": "7.4.0",
    "ipython": "9.18.1",
    "traitlets": "5.16.1",
    "tornado": "6.6.1",
    "pyzmq": "27.3.0",
}


class Internal(NamedTuple):
    package: str  # distribution, a key of PINS
    module: str  # dotted module to import
    path: str  # attribute path in it; the last part may be an instance attribute
    #            assigned as ``self.<name> = ...`` in the source of a class of the path
    used_by: str  # image file
    why: str


_CH = "jupyter_server.services.kernels.connection.channels"
_WS = "ZMQChannelsWebsocketConnection"
_GW = "pybox_gateway_config.py"

INTERNALS = [
    # --- jupyter_server ---------------------------------------------------------------
    Internal("jupyter_server", _CH, _WS, _GW,
             "subclassed by PyboxChannelsConnection (internal module path)"),
    Internal("jupyter_server", _CH, f"{_WS}.connect", _GW,
             "overridden: TCP_NODELAY and the OOM-kill count before super().connect()"),
    Internal("jupyter_server", _CH, f"{_WS}._send_status_message", _GW,
             "private, overridden: restarting/dead status carries pybox_reason; copies its iopub flush"),
    Internal("jupyter_server", _CH, f"{_WS}.limit_rate", _GW, "config: IOPub rate limit off"),
    Internal("jupyter_server", _CH, f"{_WS}.iopub_data_rate_limit", _GW, "config: IOPub rate limit off"),
    Internal("jupyter_server", _CH, f"{_WS}.iopub_msg_rate_limit", _GW, "config: IOPub rate limit off"),
    Internal("jupyter_server", _CH, f"{_WS}.websocket_handler", _GW,
             "the tornado handler connect() calls set_nodelay on"),
    Internal("jupyter_server", _CH, f"{_WS}.kernel_manager", _GW,
             "the per-kernel manager (parent) where pybox_adopt records pybox_exit_code"),
    Internal("jupyter_server", _CH, f"{_WS}.channels", _GW,
             "dict of ZMQStreams; iopub flushed before the status message"),
    Internal("jupyter_server", _CH, f"{_WS}.session", _GW, "Session that builds the status message"),
    Internal("jupyter_server", _CH, f"{_WS}.write_message", _GW, "sends the status message as JSON"),
    Internal("jupyter_server", "jupyter_server.services.kernels.kernelmanager",
             "MappingKernelManager._async_start_kernel", "pybox_adopt.py",
             "sets km.execution_state/reason/last_activity only after the start returns; "
             "AdoptingKernelManager.__init__ sets them earlier"),
    Internal("jupyter_server", "jupyter_server.services.kernels.kernelmanager",
             "MappingKernelManager.kernel_model", "pybox_adopt.py",
             "GET /api/kernels reads km.last_activity/execution_state/reason (500 when unset)"),
    Internal("jupyter_server", "jupyter_server._tz", "utcnow", "pybox_adopt.py",
             "private module: last_activity timestamp as jupyter_server makes it"),
    # --- jupyter_client ---------------------------------------------------------------
    Internal("jupyter_client", "jupyter_client.jsonutil", "json_default", _GW,
             "JSON encoder of the status message, as the stock method"),
    Internal("jupyter_client", "jupyter_client.session", "Session.msg", _GW, "builds the status message"),
    Internal("jupyter_client", "jupyter_client.connect", "port_names", "pybox_adopt.py",
             "the five port traits set from the prelaunched kernel's connection file"),
    Internal("jupyter_client", "jupyter_client.connect", "ConnectionFileMixin._connection_file_written",
             "pybox_adopt.py",
             "private flag set True: the kernel's own file is kept, and removed at shutdown"),
    Internal("jupyter_client", "jupyter_client.connect", "ConnectionFileMixin.write_connection_file",
             "pybox_adopt.py", "returns early while _connection_file_written and the file exists"),
    Internal("jupyter_client", "jupyter_client.connect", "ConnectionFileMixin.load_connection_info",
             "pybox_adopt.py", "ip, transport, key, signature scheme of the adopted kernel"),
    Internal("jupyter_client", "jupyter_client.connect", "ConnectionFileMixin.cleanup_random_ports",
             "pybox_adopt.py",
             "restart with newports zeroes only ports recorded as random; adoption sets them first"),
    Internal("jupyter_client", "jupyter_client.manager", "KernelManager._async_pre_start_kernel",
             "pybox_adopt.py", "private, overridden: installs ForkingProvisioner before the stock one"),
    Internal("jupyter_client", "jupyter_client.manager", "KernelManager.provisioner", "pybox_adopt.py",
             "None until _async_pre_start_kernel creates it; set to ForkingProvisioner"),
    Internal("jupyter_client", "jupyter_client.manager", "KernelManager.kernel_spec", "pybox_adopt.py",
             "its argv must be pybox_boot.KERNEL_ARGV to adopt"),
    Internal("jupyter_client", "jupyter_client.manager", "KernelManager.shutdown_wait_time", _GW,
             "config: kill a kernel ignoring shutdown after 1 s"),
    Internal("jupyter_client", "jupyter_client.manager", "AsyncKernelManager.is_alive", "pybox_adopt.py",
             "overridden: records the dead kernel's exit code (pybox_exit_code)"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner", "pybox_adopt.py",
             "subclassed by ForkingProvisioner"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.pre_launch",
             "pybox_adopt.py", "overridden: manager's ports/key/file from the prelaunched kernel"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.launch_kernel",
             "pybox_adopt.py", "overridden: a forked kernel (a ForkedKernelProcess for the Popen); sets what the "
             "stock one sets"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.cleanup", "pybox_adopt.py",
             "overridden: no ports returned to the LocalPortCache for fixed ports"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.ports_cached",
             "pybox_adopt.py", "set True so pre_launch skips the LocalPortCache"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.process", "pybox_adopt.py",
             "a ForkedKernelProcess (poll, wait, send_signal, kill, terminate, pid, std* None)"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.pid", "pybox_adopt.py",
             "set as launch_kernel does"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.pgid", "pybox_adopt.py",
             "set as launch_kernel does (interrupt signals the process group)"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.cwd", "pybox_adopt.py",
             "set as launch_kernel does"),
    Internal("jupyter_client", "jupyter_client.provisioning", "LocalProvisioner.connection_info",
             "pybox_adopt.py", "returned by launch_kernel"),
    Internal("jupyter_client", "jupyter_client.restarter", "KernelRestarter.time_to_dead", _GW,
             "config: dead kernel seen within 0.5 s"),
    Internal("jupyter_client", "jupyter_client.launcher", "launch_kernel", "pybox_boot.py",
             "prelaunch mirrors its Popen (JPY_PARENT_PID, new session, stdin pipe)"),
    # --- jupyter_core -----------------------------------------------------------------
    Internal("jupyter_core", "jupyter_core.paths", "jupyter_runtime_dir", "pybox_boot.py",
             "_runtime_dir mirrors it without importing jupyter_core"),
    # --- jupyter_kernel_gateway ------------------------------------------------------
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.initialize",
             "pybox_boot.py", "the gateway runs in pybox-gateway's process"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.start",
             "pybox_boot.py", "the gateway runs in pybox-gateway's process"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.io_loop",
             "pybox_boot.py", "set in initialize; the adoption is scheduled on it"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.kernel_manager",
             "pybox_boot.py", "the SeedingMappingKernelManager that starts the adopted kernel"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.prespawn_count",
             "pybox_boot.py", "option: prespawn one kernel fewer (the adopted one)"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.auth_token", _GW,
             "config: per-sandbox token"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.ip", _GW, "config"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.port", _GW, "config"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp",
             "KernelGatewayApp.kernel_websocket_connection_class", _GW, "config: PyboxChannelsConnection"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.services.kernels.manager",
             "SeedingMappingKernelManager.start_seeded_kernel", "pybox_boot.py",
             "the first start (adopting), as the gateway's own prespawn"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.services.kernels.manager",
             "SeedingMappingKernelManager.kernel_manager_class", _GW, "config: pybox_adopt.AdoptingKernelManager"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.services.kernels.manager",
             "KernelGatewayIOLoopKernelManager", "pybox_adopt.py", "subclassed by AdoptingKernelManager"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.services.kernels.manager",
             "KernelGatewayIOLoopKernelManager._async_launch_kernel", "pybox_boot.py",
             "prelaunch mirrors its kernel env (KERNEL_GATEWAY=1, no KG_AUTH_TOKEN)"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.jupyter_websocket",
             "JupyterWebsocketPersonality.list_kernels", _GW, "config: pybox lists kernels"),
    # --- ipykernel ---------------------------------------------------------------------
    Internal("ipykernel", "ipykernel.kernelapp", "launch_new_instance", "pybox_forkserver.py",
             "what ipykernel_launcher, run as __main__ in each forked kernel (runpy), calls"),
    Internal("ipykernel", "ipykernel.kernelapp", "IPKernelApp.parent_handle", "pybox_forkserver.py",
             "from JPY_PARENT_PID, which forked kernels do not get: their parent is the fork server, "
             "not the gateway, and the parent poller would end them"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream", "pybox_kernel.py", "subclassed by FastOutStream"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream.write", "pybox_kernel.py",
             "overridden: cached buffer; falls back to it for the unusual cases"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._flush", "pybox_kernel.py",
             "private, overridden and called by _flush_all (sends what a stream holds)"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._schedule_flush", "pybox_kernel.py",
             "private: the flush_interval timer after the first write"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._rotate_buffers", "pybox_kernel.py",
             "private: swaps _buffers under _buffer_lock, which invalidates the cached buffer"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._buffers", "pybox_kernel.py",
             "private: StringIOs keyed by frozenset(parent.items()), written directly"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._buffer_lock", "pybox_kernel.py",
             "private: held while the buffer is looked up and written"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._parent_header", "pybox_kernel.py",
             "private ContextVar: the current request's parent header"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._parent_header_global", "pybox_kernel.py",
             "private: the parent header fallback (threads)"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._master_pid", "pybox_kernel.py",
             "private: forked-child check against the at-fork pid"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._flush_pending", "pybox_kernel.py",
             "private: whether the timer flush is scheduled"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream._subprocess_flush_pending", "pybox_kernel.py",
             "private: forked child's immediate flush, as OutStream.write"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream.echo", "pybox_kernel.py",
             "echo streams go to OutStream.write"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream.pub_thread", "pybox_kernel.py",
             "the IOPub thread flushes are scheduled on; None once closed"),
    Internal("ipykernel", "ipykernel.iostream", "OutStream.flush_timeout", "pybox_kernel.py",
             "bounds the writer's back-pressure wait"),
    Internal("ipykernel", "ipykernel.iostream", "IOPubThread.schedule", "pybox_kernel.py",
             "runs _flush/_flush_all in the IOPub thread"),
    Internal("ipykernel", "ipykernel.iostream", "IOPubThread.thread", "pybox_kernel.py",
             "back-pressure waits only when that thread runs and is not the writer"),
    Internal("ipykernel", "ipykernel.ipkernel", "IPythonKernel.shell_class", "pybox_kernel.py",
             "overridden trait (not configurable): PyboxShell"),
    Internal("ipykernel", "ipykernel.zmqshell", "ZMQInteractiveShell", "pybox_kernel.py",
             "subclassed by PyboxShell"),
    Internal("ipykernel", "ipykernel.kernelapp", "IPKernelApp.outstream_class", "ipython_kernel_config.py",
             "config: pybox_kernel.FastOutStream"),
    Internal("ipykernel", "ipykernel.kernelapp", "IPKernelApp.kernel_class", "ipython_kernel_config.py",
             "config: pybox_kernel.PyboxKernel; read first: set only while the default (other kernels' "
             "apps, e.g. bash_kernel's, pass their own and load this profile too)"),
    Internal("ipykernel", "ipykernel.ipkernel", "IPythonKernel", "ipython_kernel_config.py",
             "the default kernel_class, compared by its dotted name"),
    # --- IPython ------------------------------------------------------------------------
    Internal("ipython", "IPython.core.interactiveshell", "InteractiveShell._tee", "pybox_kernel.py",
             "private, overridden to do nothing: run_cell's per-cell stdout/stderr copy"),
    Internal("ipython", "IPython.core.history", "HistoryManager.enabled", "ipython_kernel_config.py",
             "config: no history database (also why dropping _tee loses nothing)"),
    Internal("jupyter_kernel_gateway", "kernel_gateway.gatewayapp", "KernelGatewayApp.kernel_spec_manager_class",
             _GW, "config: PyboxKernelSpecManager"),
    Internal("jupyter_client", "jupyter_client.kernelspec", "KernelSpecManager.kernel_dirs", _GW,
             "its default replaced by PyboxKernelSpecManager (jupyter_path, without importing IPython)"),
    Internal("jupyter_client", "jupyter_client.kernelspec", "KernelSpecManager._kernel_dirs_default", _GW,
             "the stock default PyboxKernelSpecManager replaces: jupyter_path plus IPython's directory"),
    # --- traitlets, tornado, pyzmq ------------------------------------------------------
    Internal("traitlets", "traitlets", "Type", "pybox_kernel.py", "PyboxKernel.shell_class"),
    Internal("traitlets", "traitlets.config", "SingletonConfigurable.initialized", "ipython_kernel_config.py",
             "whether the kernel app exists while its profile config is read"),
    Internal("traitlets", "traitlets.config", "SingletonConfigurable.instance", "ipython_kernel_config.py",
             "that app (launch_instance made it with the kernel_class of its kernel)"),
    Internal("tornado", "tornado.websocket", "WebSocketHandler.set_nodelay", _GW,
             "Nagle off again after HTTP1Connection._finish_request turned it on"),
    Internal("pyzmq", "zmq.eventloop.zmqstream", "ZMQStream.closed", _GW, "iopub checked before its flush"),
    Internal("pyzmq", "zmq.eventloop.zmqstream", "ZMQStream.flush", _GW,
             "the dead kernel's messages go before the status message"),
]


def _assigned_in_source(cls: type, name: str) -> bool:
    """Whether a class of cls's MRO assigns ``self.<name>`` in its source."""
    pattern = re.compile(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]*)?=(?!=)")
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def resolve(item: Internal) -> str | None:
    """None if item's name exists, else why not."""
    try:
        obj = importlib.import_module(item.module)
    except Exception as error:  # ImportError, or anything the import raised
        return f"cannot import {item.module}: {type(error).__name__}: {error}"
    parts = item.path.split(".")
    for index, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if index == len(parts) - 1 and isinstance(obj, type) and _assigned_in_source(obj, part):
                return None  # an instance attribute
            return "not found"
    return None


def check() -> tuple[list[str], list[tuple[Internal, str]]]:
    """(version mismatches, [(missing internal, why not)]); both empty when all is as verified."""
    versions = []
    for package, pinned in PINS.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = "not"
        if installed != pinned:
            versions.append(f"{package} {installed} installed, internals verified against {pinned}")
    missing = [(item, error) for item in INTERNALS if (error := resolve(item)) is not None]
    return versions, missing


def main() -> int:
    versions, missing = check()
    if versions or missing:
        names = ", ".join(f"{item.module}.{item.path}" for item, _ in missing)
        summary = "; ".join(versions + ([f"missing: {names}"] if missing else []))
        print(f"pybox image: {summary}", file=sys.stderr)
        for item, error in missing:
            print(f"  missing: {item.module}.{item.path} ({error}); used by {item.used_by}: {item.why}",
                  file=sys.stderr)
        print("pybox image: the sandbox image relies on the internals listed in images/sandbox/"
              "pybox_internals.py: check the image files against the installed versions, then update "
              "PINS there and the pins in requirements.txt together.", file=sys.stderr)
        return 1
    packages = ", ".join(f"{package} {version}" for package, version in PINS.items())
    print(f"pybox image: {len(INTERNALS)} internals present, versions as verified ({packages})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
