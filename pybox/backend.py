"""The plugin boundary: what a container backend does, and the values it exchanges.

A backend turns a :class:`ContainerSpec` into a running container whose kernel
gateway listens on ``spec.gateway_port`` inside, reports where the client reaches
it (:class:`Endpoint`), says how the container is doing (:class:`ContainerState`),
moves files as tar streams, and removes what it started. Core code only ever talks
to this class; backends are found through plugins (``pybox.plugins``).

Errors: a backend raises pybox errors only (``BackendUnavailable``, ``ImageNotFound``,
``BackendError``...), chaining its SDK's exception with ``raise ... from exc``.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator

from pybox.errors import UnsupportedOperation

#: Port of the kernel gateway inside the container.
GATEWAY_PORT = 8888
#: Working directory of the kernel inside the container; relative sandbox paths start here.
WORKDIR = "/app"
#: Label every pybox container carries; other ``pybox.*`` labels say who owns it.
LABEL = "pybox"
#: The image's network-policy entry point (images/sandbox/pybox-network-init).
NETWORK_INIT = "/usr/local/sbin/pybox-network-init"


def network_env(network: str | tuple[str, ...]) -> str:
    """PYBOX_NETWORK's value for a policy other than "open"."""
    return "none" if network == "none" else "allow:" + ",".join(network)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox container. ``memory`` as the engine takes it
    (``"512m"``, ``"2g"`` or bytes), ``cpus`` as a fraction of cores, ``pids`` the
    maximum number of processes. The defaults keep a runaway program (a memory hog,
    a fork bomb) from taking the host down; None leaves the engine's default (none)."""

    memory: str | int | None = "2g"
    cpus: float | None = None
    pids: int | None = 1024

    def __post_init__(self) -> None:
        from pybox.errors import InvalidArgument

        if self.memory is not None and not (
            (isinstance(self.memory, int) and not isinstance(self.memory, bool) and self.memory > 0)
            or (isinstance(self.memory, str) and re.fullmatch(r"\d+(\.\d+)?[bkmgBKMG]?", self.memory.strip()))
        ):
            raise InvalidArgument(f"memory limit must be bytes or a size such as '512m' or '2g', got {self.memory!r}")
        if self.cpus is not None and (isinstance(self.cpus, bool) or not isinstance(self.cpus, (int, float))
                                      or self.cpus <= 0):
            raise InvalidArgument(f"cpus limit must be a positive number, got {self.cpus!r}")
        if self.pids is not None and (isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 16):
            raise InvalidArgument(f"pids limit must be an integer of at least 16, got {self.pids!r}")


@dataclass(frozen=True)
class Bind:
    """A host path mounted into the container at ``container`` (absolute, under /app)."""

    host: str
    container: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    """Everything a backend needs to start one sandbox container."""

    image: str
    env: dict[str, str] = field(default_factory=dict)
    binds: list[Bind] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    labels: dict[str, str] = field(default_factory=dict)
    gateway_port: int = GATEWAY_PORT
    host_port: int | None = None  # None: the engine picks a free port
    host_ip: str = "127.0.0.1"  # local engines publish on loopback only
    command: list[str] | None = None  # None: the image's own command
    name: str | None = None
    # Read-only root filesystem; /app stays writable (a volume of the container's own)
    # and scratch directories are tmpfs.
    read_only: bool = False
    # "open", "none", or a tuple of allowed destinations (IPs, CIDRs, domains). Not
    # "open": the backend starts the container as root with NET_ADMIN running
    # NETWORK_INIT with PYBOX_NETWORK=network_env(spec.network), which applies the
    # policy and drops to the sandbox user with no capabilities.
    network: str | tuple[str, ...] = "open"


@dataclass(frozen=True)
class Endpoint:
    """Where the client reaches the container's gateway."""

    host: str
    port: int


@dataclass(frozen=True)
class ContainerState:
    """A container's state as the engine reports it."""

    running: bool
    status: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""

    def describe(self) -> str:
        """Why the container is not running, in a few words ('OOMKilled', 'exit code 137')."""
        if self.oom_killed:
            return f"OOMKilled (the container ran out of memory; exit code {self.exit_code})"
        parts = [self.status or ("running" if self.running else "stopped")]
        if self.exit_code is not None and not self.running:
            parts.append(f"exit code {self.exit_code}")
        if self.error:
            parts.append(self.error)
        return ", ".join(parts)


class Backend(abc.ABC):
    """Base class of container backends. Subclasses set ``name`` and implement the
    abstract methods; they are registered by a plugin's ``pybox_register_backends``.

    A backend object is made per sandbox (``Backend()``, no arguments: read the
    engine's address from the environment, as its SDK does) and closed with it.
    Connecting lazily is fine; an unreachable engine raises ``BackendUnavailable``
    with a hint at the first call that needs it.
    """

    #: Name users select with ``Sandbox(backend=...)`` / ``PYBOX_BACKEND``.
    name: ClassVar[str] = ""
    #: One line shown by ``pybox backends``.
    description: ClassVar[str] = ""

    # -- lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    def start(self, spec: ContainerSpec) -> str:
        """Create and start a container from ``spec``; return the engine's container id.
        Publish ``spec.gateway_port`` on ``spec.host_ip:spec.host_port`` (engine's
        choice of port when None). Raise ImageNotFound for a missing image."""

    @abc.abstractmethod
    def endpoint(self, container_id: str, spec: ContainerSpec) -> Endpoint:
        """Host and port at which this client reaches the container's gateway."""

    @abc.abstractmethod
    def inspect(self, container_id: str) -> ContainerState:
        """The container's state; a container that no longer exists is reported as
        not running with status 'removed'."""

    @abc.abstractmethod
    def logs(self, container_id: str, tail: int = 50) -> str:
        """The container's last ``tail`` log lines (stdout and stderr)."""

    @abc.abstractmethod
    def remove(self, container_id: str) -> None:
        """Stop (kill) and remove the container. Idempotent: a missing container is fine."""

    @abc.abstractmethod
    def list_containers(self, labels: dict[str, str]) -> list[str]:
        """Ids of the containers (running or not) carrying all of ``labels``."""

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        """The container's labels, or None when it no longer exists. Used to find the
        containers of owners that died (``pybox cleanup``)."""
        raise UnsupportedOperation(f"the {self.name} backend cannot read container labels")

    # -- files -----------------------------------------------------------------------

    @abc.abstractmethod
    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        """Extract the tar stream ``data`` into directory ``path`` of the container."""

    @abc.abstractmethod
    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        """A tar stream of ``path`` (file or directory) in the container."""

    # -- images ----------------------------------------------------------------------

    @abc.abstractmethod
    def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present on the engine."""

    def pull_image(self, image: str) -> bool:
        """Pull ``image`` from its registry; False when no registry is reachable."""
        raise UnsupportedOperation(f"the {self.name} backend cannot pull images")

    def build_image(
        self, context: Path, tag: str, buildargs: dict[str, str], progress: Callable[[str], None]
    ) -> None:
        """Build the Dockerfile in ``context`` as ``tag``, reporting lines to ``progress``."""
        raise UnsupportedOperation(f"the {self.name} backend cannot build images")

    def import_image(self, rootfs_tar: Path, tag: str) -> None:
        """Make image ``tag`` from a tar of a root filesystem (``docker import``)."""
        raise UnsupportedOperation(f"the {self.name} backend cannot import images")

    # -- engine ------------------------------------------------------------------------

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise BackendUnavailable (with a hint) unless the engine answers."""

    def close(self) -> None:
        """Release client resources (connections). Containers are not touched."""
