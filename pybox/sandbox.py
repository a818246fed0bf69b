"""The Sandbox: one container with a kernel gateway, and the kernels in it.

What the sandbox is made of is checked by ``SandboxOptions``; how its container is
started is decided by ``pybox.launch``; the container's lifecycle belongs to a
backend found through the plugins; waiting for the gateway and adopting its first
kernel belong to the gateway client. The sandbox holds the container and its kernels.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import warnings
from typing import Mapping, Sequence

from pybox.backend import Backend, Bind, ContainerSpec, LaunchPlan, Limits, PullProgressCallback
from pybox.errors import (
    BackendError,
    BackendUnavailable,
    InvalidArgument,
    PyboxError,
    SandboxClosed,
    StartupTimeout,
    UnsupportedOperation,
)
from pybox.files import DEFAULT_MAX_DOWNLOAD, check_local_path, check_local_source, extract_stream, upload_stream
from pybox.image_contract import DEFAULT_IMAGE, PRESPAWN_ENV, TLS_CERT_ENV, TLS_KEY_ENV, TOKEN_ENV, WORKDIR
from pybox.kernel import Kernel
from pybox.kernel.execution import Execution
from pybox.kernel.gateway import Gateway
from pybox.launch import keep_image_content, prepare_launch
from pybox.options import (
    DEFAULT_INTERRUPT_GRACE,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TIMEOUT,
    KERNEL_DEFAULT,
    BindsArg,
    KernelDefault,
    Network,
    SandboxOptions,
    check_kernel_name,
    check_network,
    container_path,
)
from pybox.outputs import Result
from pybox.ownership import (
    SESSION,
    creation_labels,
    install_process_hooks,
    reap_in_background,
    track_live,
    untrack_live,
)
from pybox.plugins import get_plugins, resolve_backend_name
from pybox.pull import ensure_image
from pybox.snapshot import SNAPSHOT_LABEL, check_tag, snapshot_labels
from pybox.tls import GatewayCertificate

__all__ = [
    "DEFAULT_IMAGE",
    "PRESPAWN_ENV",
    "TOKEN_ENV",
    "Sandbox",
    "check_network",
    "container_path",
]

log = logging.getLogger(__name__)

_SESSION = SESSION  # kept for code written against 0.1


class Sandbox:
    """A container running a kernel gateway, with a default kernel created lazily.

    ``binds`` maps host paths (relative to the current directory, or absolute) to
    container paths (relative to /app, or absolute under /app). ``env`` is passed to
    the container. ``port`` fixes the host port of the gateway (default: the engine
    picks a free one). ``startup_code`` runs in every new kernel and after every
    restart (e.g. ``"%load_ext autoreload\\n%autoreload 2"``). ``limits`` defaults to
    ``Limits()`` (2 GiB, 1024 processes). ``read_only`` makes the root filesystem
    read-only, /app staying writable. ``max_output`` (characters) bounds what each
    Result keeps: the first and last halves, with a marker between (default
    ``DEFAULT_MAX_OUTPUT``, 1,000,000; None keeps all, without bound on client memory).
    ``network`` is ``"default"`` (the public internet only: no private, shared,
    link-local or loopback-range addresses, not the engine's host nor the container's
    gateway, DNS only to the container's resolvers; ``pip install`` works), ``"open"``
    (no policy: whatever the engine's network reaches), ``"none"`` (no traffic out; the
    gateway still answers) or a list of allowed destinations: IPv4/IPv6 addresses, CIDRs
    and domain names (resolved at start). With "none" and allowlists DNS is blocked
    (allowed domains resolve from /etc/hosts) and IPv6 is blocked unless listed. Every
    policy but "open" refuses connections into the sandbox except to the gateway, and is
    applied as root before the kernel starts unprivileged, so code cannot lift it.
    ``options`` takes a ready :class:`~pybox.options.SandboxOptions` instead.
    An image missing on the engine is pulled at start when its name includes a registry
    (``127.0.0.1:5000/pybox:latest``; not ``pybox:latest``): ``pull_progress`` gets each
    :class:`~pybox.PullProgress` event (default: per-layer progress on stderr when it is
    a terminal, else nothing); failures raise ``ImagePullError``. An image built for
    another image protocol raises ``IncompatibleImage`` before a container is made.
    Use as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(
        self,
        image: str | None = None,
        backend: str | None = None,
        *,
        binds: BindsArg | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
        startup_code: str | None = None,
        read_only: bool = False,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        network: str | Sequence[str] = "default",
        options: SandboxOptions | None = None,
        pull_progress: PullProgressCallback | None = None,
    ):
        if options is None:
            options = SandboxOptions(
                image=DEFAULT_IMAGE if image is None else image, backend=backend, binds=binds,  # type: ignore[arg-type]
                env=env or {}, limits=limits, port=port,  # type: ignore[arg-type]
                startup_timeout=startup_timeout, interrupt_grace=interrupt_grace, startup_code=startup_code,
                read_only=read_only, max_output=max_output, network=network,  # type: ignore[arg-type]
            )
        elif not isinstance(options, SandboxOptions):
            raise InvalidArgument(f"options must be a pybox.options.SandboxOptions, not {type(options).__name__}")
        if pull_progress is not None and not callable(pull_progress):
            raise InvalidArgument(f"pull_progress must be a callable taking a pybox.PullProgress, not "
                                  f"{type(pull_progress).__name__}")
        self.options = options
        self.pull_progress = pull_progress
        self.backend_name = resolve_backend_name(options.backend)
        self._backend_cls = get_plugins().backend(self.backend_name)  # unknown names fail here
        self.token = secrets.token_urlsafe(32)
        self.id: str | None = None
        self._backend: Backend | None = None
        self._gateway: Gateway | None = None
        self._certificate: GatewayCertificate | None = None
        self._plan: LaunchPlan | None = None  # as started (plugins may have changed it)
        self._kernels: list[Kernel] = []
        self._default: Kernel | None = None
        self._adopted_prespawn = False
        self._lock = threading.RLock()
        self._closed = False

    # The options, under the names they have as arguments (read-only).

    @property
    def image(self) -> str:
        return self.options.image

    @property
    def binds(self) -> list[Bind]:
        return list(self.options.binds)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.options.env)

    @property
    def limits(self) -> Limits:
        return self.options.limits

    @property
    def port_requested(self) -> int | None:
        return self.options.port

    @property
    def startup_timeout(self) -> float:
        return self.options.startup_timeout

    @property
    def interrupt_grace(self) -> float:
        return self.options.interrupt_grace

    @property
    def startup_code(self) -> str | None:
        return self.options.startup_code

    @property
    def read_only(self) -> bool:
        return self.options.read_only

    @property
    def max_output(self) -> int | None:
        return self.options.max_output

    @property
    def network(self) -> Network:
        return self.options.network

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the container and wait until its gateway answers. Idempotent."""
        with self._lock:
            if self._closed:
                raise SandboxClosed("this sandbox was closed (stopped); create a new Sandbox")
            if self.id is not None:
                return self
            backend = self._backend = self._backend_cls()
            try:
                # Across a network, the gateway's traffic is encrypted with this sandbox's own
                # certificate, which only this client trusts (pybox.tls).
                self._certificate = GatewayCertificate.generate() if backend.gateway_tls else None
                plan = self._plan = prepare_launch(self._spec(), backend, get_plugins().adjust_launch_plan)
                # Pulled when missing and registry-named; refused when built for another protocol.
                labels = ensure_image(backend, plan.image, self.pull_progress)
                if labels and SNAPSHOT_LABEL in labels:
                    keep_image_content(plan)  # read-only: the snapshot's ~/.local is not hidden
            except BaseException:
                self._teardown()
                raise
            deadline = time.monotonic() + self.options.startup_timeout  # a pull does not count
            reap_in_background(self._backend_cls, self.backend_name)  # containers of dead owners
            started = time.monotonic()
            self.id = backend.start(plan)
            track_live(self)
            install_process_hooks()  # after the start: the backend's SDK may have added exit handlers
            log.debug("sandbox container %s created on %s from %s", self.id[:12], self.backend_name, plan.image)
            try:
                try:
                    endpoint = backend.endpoint(self.id, plan)
                except BackendError:
                    self._check_alive()  # exited already (e.g. its init failed): say why, with its logs
                    raise
                self._gateway = Gateway(endpoint.host, endpoint.port, self.token, certificate=self._certificate)
                self._wait_for_gateway(deadline)
            except BaseException as exc:
                log.warning("sandbox container %s failed to start: %s", self.id[:12], exc)
                self._teardown()
                raise
            log.info("sandbox %s started on %s in %.2f s (gateway %s)", self.id[:12], self.backend_name,
                     time.monotonic() - started, self._gateway.base_url)
        return self

    def _spec(self) -> ContainerSpec:
        options = self.options
        return ContainerSpec(
            image=options.image,
            env={**options.env, TOKEN_ENV: self.token, PRESPAWN_ENV: "1", **self._tls_env()},
            binds=list(options.binds),
            limits=options.limits,
            labels=creation_labels(),
            host_port=options.port,
            read_only=options.read_only,
            network=options.network,
        )

    def _tls_env(self) -> dict[str, str]:
        if self._certificate is None:
            return {}
        return {TLS_CERT_ENV: self._certificate.cert_pem, TLS_KEY_ENV: self._certificate.key_pem}

    @property
    def gateway_certificate(self) -> str | None:
        """The certificate (PEM) this sandbox's gateway presents when its traffic is
        encrypted (a remote engine), else None; pass it to ``Kernel.connect`` to attach
        from elsewhere."""
        return self._certificate.cert_pem if self._certificate is not None else None

    def _container_running(self) -> bool:
        """What the engine says of the container now (one inspect)."""
        backend, container = self._backend, self.id
        return backend is not None and container is not None and backend.inspect(container).running

    def _check_alive(self) -> None:
        """Raise StartupTimeout, with the container's logs, if it stopped while starting."""
        assert self._backend is not None and self.id is not None
        backend, container = self._backend, self.id
        state = backend.inspect(container)
        if not state.running:
            raise StartupTimeout(
                f"sandbox container {container[:12]} from image {self.image!r} stopped before its "
                f"kernel gateway answered ({state.describe()})",
                backend.logs(container),
            )

    def _wait_for_gateway(self, deadline: float) -> None:
        assert self._backend is not None and self._gateway is not None and self.id is not None
        backend, container = self._backend, self.id
        if not self._gateway.wait_until_ready(deadline, self._check_alive):
            raise StartupTimeout(
                f"the kernel gateway in container {container[:12]} did not answer within "
                f"{self.options.startup_timeout:g} s",
                backend.logs(container),
            )

    def close(self) -> None:
        """Close every kernel and remove the container. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._teardown()
            if self.id is not None:
                log.info("sandbox %s closed and its container removed", self.id[:12])

    #: The same as ``close()`` (the name the design card uses for manual lifecycle).
    stop = close

    def _teardown(self) -> None:
        untrack_live(self)
        for kernel in self._kernels:
            kernel.close(shutdown=False)  # the container goes: no need to ask it first
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
        self.close()

    def __del__(self) -> None:  # a forgotten sandbox must not outlive its owner's objects
        try:
            if not self._closed and self.id is not None:
                warnings.warn(f"unclosed {self!r}: its container is removed now; close sandboxes (or use "
                              f"`with`) when done", ResourceWarning, source=self, stacklevel=2)
                self.close()
        except Exception as exc:  # no exceptions out of __del__
            log.debug("closing a garbage-collected sandbox failed: %s", exc)

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
            raise SandboxClosed("this sandbox was closed (stopped)")
        if self._gateway is None:
            raise InvalidArgument("the sandbox is not started; call start() or use it in a with block")
        return self._gateway

    # -- kernels ---------------------------------------------------------------------

    def kernel(self, name: str | None = None) -> Kernel:
        """A new kernel in this container: own state, same filesystem. Close it (or
        use it as a context manager) when done; ``close()`` closes it anyway.

        ``name`` picks a kernelspec of the image (``"bash"``; ``kernel_names()`` lists
        them; default: the Python kernel). One the image lacks raises InvalidArgument
        naming those it has. ``startup_code`` (Python) runs only in Python kernels."""
        if name is not None:
            check_kernel_name(name)
        with self._lock:
            gateway = self._started_gateway()
            if name is None:
                return self._open_kernel(gateway.create_kernel())
            language = gateway.kernelspec(name, f"in image {self.image!r}").get("language")
            return self._open_kernel(gateway.create_kernel(name), name=name, language=language)

    def kernel_names(self) -> list[str]:
        """The kernelspecs ``kernel(name=...)`` can start in this sandbox (``python3``,
        ``bash`` and those ``pybox build --kernel`` added)."""
        return sorted(self._started_gateway().kernelspecs())

    def _open_kernel(self, kernel_id: str, name: str | None = None, language: str | None = None) -> Kernel:
        options = self.options
        python = language in (None, "python")
        kernel = Kernel(self._started_gateway(), kernel_id, interrupt_grace=options.interrupt_grace,
                        explain_death=self._explain_death, startup_code=options.startup_code if python else None,
                        max_output=options.max_output, name=name, language=language, on_fork=self._kernels.append)
        self._kernels.append(kernel)
        return kernel

    @property
    def default_kernel(self) -> Kernel:
        """The kernel ``run`` and ``submit`` use, created on first use (the first
        one adopts the kernel the gateway prespawned at start). A kernel whose websocket
        died reconnects on its next call (state kept); one the gateway no longer has is
        closed by that call (KernelError), and the next use opens a new one here."""
        with self._lock:
            if self._default is None or self._default.closed:
                if self.id is None and not self._closed:
                    self.start()
                gateway = self._started_gateway()
                prespawned = None if self._adopted_prespawn else gateway.adopt_prespawned()
                self._adopted_prespawn = True
                self._default = self._open_kernel(prespawned) if prespawned else self.kernel()
            return self._default

    def run(
        self, code: str, timeout: float | None = DEFAULT_TIMEOUT, check: bool = True,
        max_output: int | None | KernelDefault = KERNEL_DEFAULT,
    ) -> Result:
        """Run ``code`` in the default kernel and wait for its Result."""
        return self.default_kernel.run(code, timeout=timeout, check=check, max_output=max_output)

    def submit(self, code: str, max_output: int | None | KernelDefault = KERNEL_DEFAULT) -> Execution:
        """Send ``code`` to the default kernel; returns its Execution at once."""
        return self.default_kernel.submit(code, max_output=max_output)

    def module_sources(self, names: Sequence[str]) -> dict[str, str]:
        """The source code of modules importable in the sandbox, by name (as ipybox's
        ``get_module_sources``; freeact shows skills to a model this way)."""
        return self.default_kernel.module_sources(names)

    def interrupt(self) -> None:
        self.default_kernel.interrupt()

    def restart(self) -> None:
        self.default_kernel.restart()

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self, tag: str) -> str:
        """Save this sandbox's filesystem as image ``tag`` on its engine and return the
        new image's id; ``Sandbox(image=tag)`` and ``Pool(image=tag)`` start from it.

        Kept: every file the sandbox changed on the container's own filesystem: packages
        ``!pip install`` put in the sandbox user's ~/.local, files under /app, the home
        directory, /tmp. Not kept: process memory (the kernels' variables and imports,
        running processes), host directories bound in (``binds``), the environment
        (``env``; the image has its base's configuration), the gateway's runtime files
        (connection keys, TLS key; on a tmpfs, never committed). The container is paused
        while the engine copies it, then runs on untouched. An existing ``tag`` is moved
        to the new image. A read-only sandbox (``read_only=True``) keeps its writable
        files on tmpfs and a volume, which a commit leaves out: it is refused
        (UnsupportedOperation); read-only sandboxes *from* a snapshot see its files (their
        ~/.local, ~/.config, ~/.jupyter are volumes filled from the image then, not empty
        tmpfs; their /tmp is still an empty tmpfs). The snapshot holds what code in the sandbox wrote, so a
        sandbox started from it is as trusted as this one (docs/snapshots.md)."""
        tag = check_tag(tag)
        with self._lock:
            backend, container = self._started_container()
            plan = self._plan
            if self.options.read_only or (plan is not None and plan.read_only):
                by_plugin = "" if self.options.read_only else " (made read-only by a plugin's pybox_adjust_launch_plan)"
                raise UnsupportedOperation(
                    f"cannot snapshot a read-only sandbox{by_plugin} as {tag!r}: its writable files (/app, "
                    f"~/.local, /tmp...) are on a volume and tmpfs mounts, which an image commit leaves out. "
                    f"Snapshot a sandbox started with read_only=False, and start read-only sandboxes from that image")
            if plan is not None and plan.volumes:
                log.warning("snapshot %s of sandbox %s: the content of its volumes (%s) is not in the image",
                            tag, container[:12], ", ".join(plan.volumes))
            started = time.monotonic()
            image_id = backend.commit(container, tag, snapshot_labels(self.image))
            log.info("sandbox %s saved as image %s (%s) in %.2f s", container[:12], tag, image_id[:19],
                     time.monotonic() - started)
            return image_id

    # -- files -----------------------------------------------------------------------

    def upload(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a local file or directory to ``remote`` in the sandbox (relative paths
        are under /app; parents are created; owned by the sandbox user). Streamed."""
        source = check_local_source(local)
        target = container_path(remote, "upload target")
        if target == WORKDIR:
            raise InvalidArgument("upload target must name a file or directory under /app, not /app itself")
        backend, container = self._started_container()
        backend.put_archive(container, WORKDIR, upload_stream(source, target[len(WORKDIR) + 1 :]))

    def download(self, remote: str, local: str | os.PathLike[str], *,
                 max_bytes: int | None = DEFAULT_MAX_DOWNLOAD) -> None:
        """Copy ``remote`` (file or directory; relative paths are under /app) from the
        sandbox to ``local`` (a directory onto an existing directory is merged into it).
        The sandbox writes the archive, so it is treated as hostile: nothing is written
        outside ``local`` or through a link, links must resolve inside it, and a refused
        archive (UnsafeArchive) leaves nothing behind. ``max_bytes`` caps the archive
        (DownloadTooLarge past it; default 1 GiB, None: no cap)."""
        source = container_path(remote, "download source")
        target = check_local_path(local)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes <= 0):
            raise InvalidArgument(f"max_bytes must be a positive number of bytes or None, got {max_bytes!r}")
        backend, container = self._started_container()
        extract_stream(backend.get_archive(container, source), source, target, max_bytes=max_bytes)

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
        state = "closed" if self._closed else ("running" if self.id else "not started")
        where = f" at {self._gateway.base_url}" if self._gateway else ""
        return f"<pybox.Sandbox {self.image} on {self.backend_name}{where} {state}>"
