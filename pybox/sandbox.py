"""The Sandbox: one container with a kernel gateway, and the kernels in it.

The container's lifecycle belongs to a backend found through the plugins; the
sandbox only builds the spec, waits for the gateway, and hands out kernels.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import threading
import time
import weakref
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pybox.backend import WORKDIR, Backend, Bind, ContainerSpec, Limits
from pybox.errors import (
    BackendUnavailable,
    ChannelError,
    InvalidArgument,
    PyboxError,
    SandboxClosed,
    StartupTimeout,
)
from pybox.kernel import DEFAULT_INTERRUPT_GRACE, DEFAULT_TIMEOUT, Kernel
from pybox.kernel.gateway import Gateway
from pybox.kernel.kernel import check_max_output, check_port, check_startup_code
from pybox.ownership import owner_labels, reap_in_background, stop_on_sigterm
from pybox.plugins import get_plugins, resolve_backend_name

if TYPE_CHECKING:  # pragma: no cover
    from pybox.execution import Execution
    from pybox.outputs import Result

#: Image used when ``Sandbox(image=None)``; ``pybox build`` builds it.
DEFAULT_IMAGE = "pybox:latest"
#: Environment variable the gateway in the image reads its token from.
TOKEN_ENV = "KG_AUTH_TOKEN"
#: The gateway starts this many kernels as soon as it is up (KG_PRESPAWN_COUNT); the
#: default kernel adopts the first, so the first run does not wait for a kernel start.
PRESPAWN_ENV = "KG_PRESPAWN_COUNT"
#: How long the default kernel waits for the prespawned kernel to be listed.
PRESPAWN_WAIT = 5.0

_SESSION = secrets.token_hex(8)  # this process's pybox session, in every container's labels
_live: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _stop_live_sandboxes() -> None:
    """A script that exits without stopping its sandboxes does not leave containers."""
    for sandbox in list(_live):
        try:
            sandbox.stop()
        except Exception:
            pass


class Sandbox:
    """A container running a kernel gateway, with a default kernel created lazily.

    ``binds`` maps host paths (relative to the current directory, or absolute) to
    container paths (relative to /app, or absolute under /app). ``env`` is passed to
    the container. ``port`` fixes the host port of the gateway (default: the engine
    picks a free one). ``startup_code`` runs in every new kernel and after every
    restart (e.g. ``"%load_ext autoreload\n%autoreload 2"``). ``limits`` defaults to
    ``Limits()`` (2 GiB, 1024 processes). ``read_only`` makes the root filesystem
    read-only, /app staying writable. ``max_output`` (characters) bounds what each
    Result keeps: the first and last halves, with a marker between (default: all).
    ``network`` is ``"open"`` (default), ``"none"`` (no traffic out; the gateway still
    answers) or a list of allowed destinations: IPv4/IPv6 addresses, CIDRs and domain
    names (resolved at start). Outside "open", DNS is blocked (allowed domains resolve
    from /etc/hosts) and IPv6 is blocked unless listed; the policy is applied as root
    before the kernel starts unprivileged, so code cannot lift it.
    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        image: str | None = None,
        backend: str | None = None,
        *,
        binds: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        limits: Limits | None = None,
        port: int | None = None,
        startup_timeout: float = 60.0,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
        startup_code: str | None = None,
        read_only: bool = False,
        max_output: int | None = None,
        network: str | list[str] = "open",
    ):
        self.image = _check_image(DEFAULT_IMAGE if image is None else image)
        self.backend_name = resolve_backend_name(backend)
        self._backend_cls = get_plugins().backend(self.backend_name)  # unknown names fail here
        self.binds = _check_binds(binds or {})
        self.env = _check_env(env or {})
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidArgument(f"limits must be a pybox.Limits, not {type(limits).__name__}")
        self.limits = limits or Limits()
        self.port_requested = None if port is None else check_port(port)
        if not isinstance(startup_timeout, (int, float)) or startup_timeout <= 0:
            raise InvalidArgument(f"startup_timeout must be a positive number, got {startup_timeout!r}")
        self.startup_timeout = float(startup_timeout)
        self.interrupt_grace = interrupt_grace
        self.startup_code = check_startup_code(startup_code)
        self.read_only = bool(read_only)
        self.max_output = check_max_output(max_output)
        self.network = check_network(network)
        self.token = secrets.token_urlsafe(32)
        self.id: str | None = None
        self._backend: Backend | None = None
        self._gateway: Gateway | None = None
        self._kernels: list[Kernel] = []
        self._default: Kernel | None = None
        self._adopted_prespawn = False
        self._lock = threading.RLock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the container and wait until its gateway answers. Idempotent."""
        with self._lock:
            if self._closed:
                raise SandboxClosed("this sandbox was stopped; create a new Sandbox")
            if self.id is not None:
                return self
            deadline = time.monotonic() + self.startup_timeout
            self._backend = self._backend_cls()
            spec = self._spec()
            reap_in_background(self._backend_cls, self.backend_name)  # containers of dead owners
            stop_on_sigterm(_stop_live_sandboxes)
            self.id = self._backend.start(spec)
            _live.add(self)
            try:
                endpoint = self._backend.endpoint(self.id, spec)
                self._gateway = Gateway(endpoint.host, endpoint.port, self.token)
                self._wait_for_gateway(deadline)
            except BaseException:
                self._teardown()
                raise
        return self

    def _spec(self) -> ContainerSpec:
        return ContainerSpec(
            image=self.image,
            env={**self.env, TOKEN_ENV: self.token, PRESPAWN_ENV: "1"},
            binds=self.binds,
            limits=self.limits,
            labels=owner_labels(_SESSION),
            host_port=self.port_requested,
            read_only=self.read_only,
            network=self.network,
        )

    def _wait_for_gateway(self, deadline: float) -> None:
        assert self._backend is not None and self._gateway is not None and self.id is not None
        checks = 0
        while True:
            if self._gateway.ready(timeout=0.5):
                return
            checks += 1
            if checks % 10 == 0:  # a container that exited will never answer: say so now
                state = self._backend.inspect(self.id)
                if not state.running:
                    raise StartupTimeout(
                        f"sandbox container {self.id[:12]} from image {self.image!r} stopped before its "
                        f"kernel gateway answered ({state.describe()})",
                        self._backend.logs(self.id),
                    )
            if time.monotonic() >= deadline:
                raise StartupTimeout(
                    f"the kernel gateway in container {self.id[:12]} did not answer within "
                    f"{self.startup_timeout:g} s",
                    self._backend.logs(self.id),
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Close every kernel and remove the container. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._teardown()

    def _teardown(self) -> None:
        _live.discard(self)
        for kernel in self._kernels:
            kernel._delete_on_close = False  # the container goes: no need to ask it first
            kernel.close()
        self._kernels.clear()
        self._default = None
        if self._gateway is not None:
            self._gateway.close()
        if self._backend is not None:
            if self.id is not None:
                self._backend.remove(self.id)
            self._backend.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:  # a forgotten sandbox must not outlive its owner's objects
        try:
            if not self._closed and self.id is not None:
                self.stop()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def host(self) -> str:
        return self._started_gateway().host

    @property
    def port(self) -> int:
        return self._started_gateway().port

    def _started_gateway(self) -> Gateway:
        if self._closed:
            raise SandboxClosed("this sandbox was stopped")
        if self._gateway is None:
            raise InvalidArgument("the sandbox is not started; call start() or use it in a with block")
        return self._gateway

    # -- kernels ---------------------------------------------------------------------

    def kernel(self) -> Kernel:
        """A new kernel in this container: own state, same filesystem. Close it (or
        use it as a context manager) when done; ``stop()`` closes it anyway."""
        with self._lock:
            return self._open_kernel(self._started_gateway().create_kernel())

    def _open_kernel(self, kernel_id: str) -> Kernel:
        kernel = Kernel(self._started_gateway(), kernel_id, interrupt_grace=self.interrupt_grace,
                        explain_death=self._explain_death, startup_code=self.startup_code,
                        max_output=self.max_output)
        self._kernels.append(kernel)
        return kernel

    @property
    def default_kernel(self) -> Kernel:
        """The kernel ``run`` and ``submit`` use, created on first use (the first
        one adopts the kernel the gateway prespawned at start)."""
        with self._lock:
            if self._default is None or self._default.closed:
                if self.id is None and not self._closed:
                    self.start()
                prespawned = None if self._adopted_prespawn else self._prespawned_kernel()
                self._adopted_prespawn = True
                self._default = self._open_kernel(prespawned) if prespawned else self.kernel()
            return self._default

    def _prespawned_kernel(self) -> str | None:
        gateway = self._started_gateway()
        deadline = time.monotonic() + PRESPAWN_WAIT
        while True:
            try:
                kernels = gateway.list_kernels()
            except ChannelError:
                # The gateway answers 500 while the prespawned kernel is half made
                # (jupyter_server reads its last_activity before it is set): retry.
                kernels = []
            if kernels:
                return kernels[0]["id"]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def run(
        self, code: str, timeout: float | None = DEFAULT_TIMEOUT, check: bool = True, max_output: int | None = None
    ) -> Result:
        """Run ``code`` in the default kernel and wait for its Result."""
        return self.default_kernel.run(code, timeout=timeout, check=check, max_output=max_output)

    def submit(self, code: str, max_output: int | None = None) -> Execution:
        """Send ``code`` to the default kernel; returns its Execution at once."""
        return self.default_kernel.submit(code, max_output=max_output)

    def module_sources(self, names: list[str]) -> dict[str, str]:
        """The source code of modules importable in the sandbox, by name (as ipybox's
        ``get_module_sources``; freeact shows skills to a model this way)."""
        return self.default_kernel.module_sources(names)

    def interrupt(self) -> None:
        self.default_kernel.interrupt()

    def restart(self) -> None:
        self.default_kernel.restart()

    # -- files -----------------------------------------------------------------------

    def upload(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a local file or directory to ``remote`` in the sandbox (relative paths
        are under /app; parents are created; owned by the sandbox user). Streamed."""
        from pybox.files import check_local_source, upload_stream

        source = check_local_source(local)
        target = container_path(remote, "upload target")
        if target == WORKDIR:
            raise InvalidArgument("upload target must name a file or directory under /app, not /app itself")
        backend, container = self._started_container()
        backend.put_archive(container, WORKDIR, upload_stream(source, target[len(WORKDIR) + 1 :]))

    def download(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy ``remote`` (file or directory; relative paths are under /app) from the
        sandbox to ``local``. Streamed; members that would land outside ``local`` are
        refused."""
        from pybox.files import check_local_path, extract_stream

        source = container_path(remote, "download source")
        target = check_local_path(local)
        backend, container = self._started_container()
        extract_stream(backend.get_archive(container, source), source, target)

    def _started_container(self) -> tuple[Backend, str]:
        self._started_gateway()
        assert self._backend is not None and self.id is not None
        return self._backend, self.id

    def _explain_death(self) -> str | None:
        """Why the container is gone, when it is (asked when a kernel channel closes)."""
        if self._closed or self._backend is None or self.id is None:
            return None
        # The channel may drop a moment before the engine records the container's end.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                state = self._backend.inspect(self.id)
            except BackendUnavailable as exc:
                return f"the container engine does not answer (restarted or stopped?): {exc}"
            except PyboxError:
                return None
            if not state.running:
                return f"the sandbox container stopped: {state.describe()}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "stopped" if self._closed else ("running" if self.id else "not started")
        where = f" at {self._gateway.base_url}" if self._gateway else ""
        return f"<pybox.Sandbox {self.image} on {self.backend_name}{where} {state}>"


def _check_image(image: object) -> str:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise InvalidArgument(f"image must be an image name such as 'pybox:latest', got {image!r}")
    return image


def container_path(path: str, what: str = "sandbox path") -> str:
    """A sandbox path made absolute: relative paths are under /app, and nothing may
    leave /app."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InvalidArgument(f"{what} must be a non-empty path, got {path!r}")
    raw = PurePosixPath(WORKDIR, str(path))
    parts: list[str] = []
    for part in raw.parts[1:]:
        if part == "..":
            if not parts:
                raise InvalidArgument(f"{what} {str(path)!r} leaves /")
            parts.pop()
        elif part != ".":
            parts.append(part)
    resolved = "/" + "/".join(parts)
    if resolved != WORKDIR and not resolved.startswith(WORKDIR + "/"):
        raise InvalidArgument(f"{what} {str(path)!r} is outside {WORKDIR}, the sandbox's working directory")
    return resolved


def _check_binds(binds: dict[str, str]) -> list[Bind]:
    if not isinstance(binds, dict):
        raise InvalidArgument(f"binds must be a dict of host path -> container path, not {type(binds).__name__}")
    result = []
    for host, target in binds.items():
        if not isinstance(host, (str, os.PathLike)) or not str(host).strip():
            raise InvalidArgument(f"bind host path must be a non-empty path, got {host!r}")
        host_path = Path(host).expanduser().resolve()
        if not host_path.exists():
            raise InvalidArgument(f"bind host path {str(host)!r} does not exist ({host_path})")
        result.append(Bind(str(host_path), container_path(target, "bind container path")))
    return result


_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                     r"[A-Za-z0-9])?$")


def check_network(network: object) -> str | tuple[str, ...]:
    if network in ("open", "none"):
        return network  # type: ignore[return-value]
    if isinstance(network, str) or not isinstance(network, (list, tuple)):
        raise InvalidArgument(f"network must be 'open', 'none' or a list of allowed destinations, got {network!r}")
    entries = []
    for entry in network:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidArgument(f"network allowlist entries must be addresses, CIDRs or domains, got {entry!r}")
        entry = entry.strip()
        try:
            entries.append(str(ipaddress.ip_network(entry, strict=False)) if "/" in entry
                           else str(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        if any(c.isdigit() for c in entry.split(".")[-1][:1]) or not _DOMAIN.match(entry):
            raise InvalidArgument(f"network allowlist entry {entry!r} is not an IP address, a CIDR or a domain name")
        entries.append(entry.lower())
    return tuple(entries)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    if not isinstance(env, dict):
        raise InvalidArgument(f"env must be a dict of str -> str, not {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env variable name {key!r} is not valid")
        if not isinstance(value, str):
            raise InvalidArgument(f"env variable {key} must be a str, not {type(value).__name__}")
    if TOKEN_ENV in env:
        raise InvalidArgument(f"env may not set {TOKEN_ENV}: pybox sets the gateway token itself")
    return dict(env)
