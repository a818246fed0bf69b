"""The values exchanged across the plugin boundary: what a sandbox asks for
(:class:`ContainerSpec`, :class:`Limits`, :class:`Bind`), how it is to be started
(:class:`LaunchPlan`, made by ``pybox.launch``), and what an engine reports back
(:class:`Endpoint`, :class:`ContainerState`, :class:`PullProgress`). Plain data, no behaviour beyond
validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from pybox.errors import BackendError, InvalidArgument
from pybox.image_contract import GATEWAY_PORT, NETWORK_ENV, SANDBOX_GID, SANDBOX_UID

#: Label every pybox container carries; other ``pybox.*`` labels say who owns it.
LABEL = "pybox"


#: The smallest memory limit accepted: a kernel does not start in less.
MIN_MEMORY = 32 << 20

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_bytes(value: str | int) -> int:
    """Bytes from docker's notation: ``512m``, ``2g``, ``1024`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", str(value).lower())
    if not match:
        raise InvalidArgument(f"memory limit {value!r} is not a size such as '512m' or '2g'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


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
        if self.memory is not None:
            size = r"\d+(\.\d+)?[bkmgtBKMGT]?"
            if not ((isinstance(self.memory, int) and not isinstance(self.memory, bool))
                    or (isinstance(self.memory, str) and re.fullmatch(size, self.memory.strip()))):
                raise InvalidArgument(f"memory limit must be bytes or a size such as '512m' or '2g', got "
                                      f"{self.memory!r}")
            # Engines read 0 (and what rounds to it) as "no limit": refuse it rather than run unlimited.
            if memory_bytes(self.memory) < MIN_MEMORY:
                raise InvalidArgument(f"memory limit {self.memory!r} is below {MIN_MEMORY >> 20} MiB, too small for "
                                      f"a kernel (and 0 would mean no limit to the engine); use None for the "
                                      f"engine's default (no limit)")
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
    # "default" (the public internet only), "open", "none", or a tuple of allowed
    # destinations (IPs, CIDRs, domains); how it is enforced is decided by
    # pybox.launch.plan_launch.
    network: str | tuple[str, ...] = "default"


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


@dataclass(frozen=True)
class PullProgress:
    """One progress event of an image pull, as the engine reports it: ``layer`` is the
    layer's short id (None for events about the whole image), ``status`` the engine's
    word for what happens (Docker: "Pulling fs layer", "Downloading", "Extracting",
    "Pull complete", "Already exists"...; Podman: "Copying blob"...), ``current`` and
    ``total`` the bytes done and expected when the engine says (None otherwise)."""

    image: str
    layer: str | None
    status: str
    current: int | None = None
    total: int | None = None


#: What receives pull progress events (``Sandbox(pull_progress=...)``, ``Backend.pull_image``).
PullProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True)
class PublishedPort:
    """A container port published on the engine's host (``host_port`` None: the engine
    picks a free one)."""

    container_port: int
    host_ip: str
    host_port: int | None = None


@dataclass(frozen=True)
class Scratch:
    """A tmpfs mount: ``size`` bytes at ``path``, owned by the sandbox user when
    ``sandbox_owned`` (``uid``/``gid`` on Docker, ``U`` on Podman; the image's init
    also gives each its owner, for engines that mount them root's)."""

    path: str
    size: int
    sandbox_owned: bool = False
    uid: int = SANDBOX_UID
    gid: int = SANDBOX_GID


@dataclass
class LaunchPlan:
    """Everything an engine needs to start one sandbox container, engine-neutral.

    Mutable so that ``pybox_adjust_launch_plan`` hooks can change it in place; the
    backend reads it once, when it starts the container.
    """

    image: str
    #: None: the image's own command.
    command: list[str] | None = None
    #: None: the image's user; pybox's plan gives "0": its init starts as root.
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[PublishedPort] = field(default_factory=list)
    binds: list[Bind] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    no_new_privileges: bool = True
    read_only: bool = False
    #: tmpfs mounts.
    scratch: list[Scratch] = field(default_factory=list)
    #: Container paths that get an anonymous volume (removed with the container).
    volumes: list[str] = field(default_factory=list)
    #: ``(name, address)`` entries the engine adds to the container's /etc/hosts
    #: (Docker's ``--add-host``): an allowlist's domains, resolved by the client when
    #: the root filesystem is read-only (the init cannot pin them there itself).
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)
    memory_bytes: int | None = None
    #: Memory plus swap; None: the engine's default.
    memory_swap_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    #: The container's log (what its processes write to stdout/stderr: the sandbox can
    #: write there directly) is capped at ``log_max_files`` files of this many bytes;
    #: None: the engine's default (unbounded on most).
    log_max_bytes: int | None = None
    log_max_files: int = 2
    name: str | None = None
    #: The port the gateway listens on inside the container.
    gateway_port: int = GATEWAY_PORT

    @property
    def network_policed(self) -> bool:
        """Whether the image's init applies a network policy before the gateway starts."""
        return bool(self.env.get(NETWORK_ENV))

    def published(self, container_port: int) -> PublishedPort:
        for port in self.ports:
            if port.container_port == container_port:
                return port
        raise BackendError(f"the launch plan publishes no port {container_port}")


