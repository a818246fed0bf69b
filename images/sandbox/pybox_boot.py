"""Start-up of the pybox sandbox: the first kernel starts alongside the gateway.

The stock gateway imports for ~0.4 s, then starts its prespawned kernel, which
imports for another ~0.4 s. Here the container's command (``pybox-gateway``) first
launches that kernel itself, exactly as jupyter_client would (same command, env,
cwd, new session), then imports and runs the gateway in the same process, so the
two start-ups overlap on separate cores. The gateway's first kernel start then
ADOPTS the running process (``pybox_adopt.AdoptingKernelManager``): same connection file, key
and ports, the Popen object of its own child, so interrupt (SIGINT to the process
group), restart, shutdown and the restarter behave as for any kernel. Every later
start of any kernel (restarts included) is the stock launch.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

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

_prelaunched: tuple[subprocess.Popen, str] | None = None


def _runtime_dir() -> str:
    # jupyter_core.paths.jupyter_runtime_dir() without importing jupyter_core
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return os.environ["JUPYTER_RUNTIME_DIR"]
    data = os.environ.get("JUPYTER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "jupyter")
    return os.path.join(data, "runtime")


def prelaunch() -> None:
    """Launch the first kernel now, as the gateway's LocalProvisioner would."""
    global _prelaunched
    runtime = _runtime_dir()
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    path = os.path.join(runtime, f"kernel-pybox-{secrets.token_hex(8)}.json")
    info = {**PORTS, "ip": "127.0.0.1", "transport": "tcp", "signature_scheme": "hmac-sha256",
            "key": secrets.token_hex(32), "kernel_name": "python3"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CONNECTION_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.chmod(path, CONNECTION_FILE_MODE)  # whatever the umask
    # The env KernelGatewayIOLoopKernelManager + launch_kernel give a kernel.
    env = os.environ.copy()
    env.pop("PYTHONEXECUTABLE", None)
    env["KERNEL_GATEWAY"] = "1"
    env["JPY_PARENT_PID"] = str(os.getpid())
    cmd = KERNEL_USER + [sys.executable if a == "python" else a.replace("{connection_file}", os.path.realpath(path))
                         for a in KERNEL_ARGV]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, cwd=os.getcwd(), start_new_session=True)
    process.stdin.close()
    _prelaunched = (process, path)


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
    if prespawn > 0 and token:
        prelaunch()
        # The gateway's own prespawn waits 0.1 s after its loop starts: adopt at once
        # instead, and let the gateway prespawn only the rest.
        argv.append(f"--KernelGatewayApp.prespawn_count={prespawn - 1}")
    # Import the gateway while the kernel imports IPython on the other core.
    from kernel_gateway.gatewayapp import KernelGatewayApp

    app = KernelGatewayApp.instance()
    app.initialize(argv)
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
