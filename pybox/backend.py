"""The plugin boundary: what a container backend does, and the values it exchanges.

A backend turns a :class:`LaunchPlan` (decided by core, ``pybox.launch``) into a
running container whose kernel gateway listens on ``plan.gateway_port`` inside,
reports where the client reaches it (:class:`Endpoint`), says how the container is
doing (:class:`ContainerState`), moves files as tar streams, and removes what it
started. It translates the plan into its engine's words and decides nothing about
how the image is run. Core code only ever talks to this class; backends are found
through plugins (``pybox.plugins``).

Errors: a backend raises pybox errors only (``BackendUnavailable``, ``ImageNotFound``,
``BackendError``...), chaining its SDK's exception with ``raise ... from exc``.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Mapping

from pybox.errors import UnsupportedOperation
from pybox.image_contract import GATEWAY_PORT, INIT, NETWORK_INIT, WORKDIR
from pybox.spec import (
    LABEL,
    Bind,
    ContainerSpec,
    ContainerState,
    Endpoint,
    LaunchPlan,
    Limits,
    PublishedPort,
    PullProgress,
    PullProgressCallback,
    Scratch,
)

__all__ = [
    "ALL_FEATURES",
    "BINDS",
    "GATEWAY_PORT",
    "LABEL",
    "INIT",
    "LIMITS",
    "NETWORK_INIT",
    "NETWORK_POLICY",
    "PIDS_LIMIT",
    "READ_ONLY",
    "WORKDIR",
    "Backend",
    "Bind",
    "ContainerSpec",
    "ContainerState",
    "Endpoint",
    "LaunchPlan",
    "Limits",
    "PublishedPort",
    "PullProgress",
    "PullProgressCallback",
    "Scratch",
]

# What a backend can enforce (``Backend.features``). Core refuses a sandbox option
# whose feature its backend does not declare, instead of starting without it.
#: Host paths bind-mounted into the container (``Sandbox(binds=...)``).
BINDS = "binds"
#: Memory and CPU limits (``Sandbox(limits=...)``).
LIMITS = "limits"
#: A process limit per sandbox (``Limits(pids=...)``): Docker's and Podman's pids limit of
#: the container; engines that only have a node-wide one (Kubernetes' --pod-max-pids) do
#: not declare it, and core then refuses a plan with ``pids`` set unless the backend's
#: ``adjust_plan`` took it out because the engine's own limit is at least as tight.
PIDS_LIMIT = "pids_limit"
#: A read-only root filesystem with tmpfs scratch and a volume at /app.
READ_ONLY = "read_only"
#: The default network policy, ``network="none"`` and allowlists: the image's init run
#: as root with NET_ADMIN.
NETWORK_POLICY = "network_policy"
ALL_FEATURES = frozenset({BINDS, LIMITS, PIDS_LIMIT, READ_ONLY, NETWORK_POLICY})


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
    #: What this backend enforces (BINDS, LIMITS, PIDS_LIMIT, READ_ONLY, NETWORK_POLICY). Core
    #: refuses an option whose feature is missing here, with UnsupportedOperation.
    features: ClassVar[frozenset[str]] = frozenset()
    #: Why a feature is missing and what to do instead, by feature (used in the refusal);
    #: under "build", what to do instead of ``pybox build`` when ``build_image`` is not
    #: implemented (``pybox build`` then refuses before it makes or pulls a base image).
    unsupported_hints: ClassVar[Mapping[str, str]] = {}
    #: Whether the client reaches the gateway across a network (an engine on another
    #: host): pybox then encrypts the gateway's traffic with a certificate it makes per
    #: sandbox, passes to the container and pins (pybox.tls), so the token never
    #: crosses the network in clear.
    gateway_tls: ClassVar[bool] = False

    # -- lifecycle -------------------------------------------------------------------

    def adjust_plan(self, plan: LaunchPlan) -> None:
        """Change the plan for what this engine needs before it is checked and started
        (e.g. publish on another address). Default: nothing."""

    def engine_host(self) -> str | None:
        """The engine's host when it is another machine (a name or an address, as this
        client reaches it); None: this machine. The default network policy keeps code
        off the engine's host: this machine's own addresses, or the addresses this
        name resolves to. Default: None (a local engine)."""
        return None

    @abc.abstractmethod
    def start(self, plan: LaunchPlan) -> str:
        """Create and start a container as ``plan`` says, every field honoured (or
        UnsupportedOperation raised); return the engine's container id. Publish each
        of ``plan.ports`` (engine's choice of host port when None). Raise ImageNotFound
        for a missing image (never pull implicitly); remove what a failed start made."""

    @abc.abstractmethod
    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
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
        """Extract the tar stream ``data`` into directory ``path`` of the container.

        An engine that extracts as root, path by path, must keep the container's code
        from changing those paths meanwhile (swapping a directory it just made for a
        link): Docker and Podman pause the container for the copy."""

    @abc.abstractmethod
    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        """A tar stream of ``path`` (file or directory) in the container."""

    # -- images ----------------------------------------------------------------------

    @abc.abstractmethod
    def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present on the engine."""

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The labels of ``image`` (an empty dict when it has none), or None when the
        engine does not have it. Read without creating a container. Core uses it to
        refuse, before starting anything, an image built for another image protocol
        (``IncompatibleImage``); a backend that does not implement it (this default
        raises UnsupportedOperation) skips that check, and sandboxes then fail later
        and less clearly on an outdated image."""
        raise UnsupportedOperation(f"the {self.name} backend cannot read image labels")

    def pull_image(self, image: str, progress: PullProgressCallback | None = None) -> None:
        """Pull ``image`` from its registry (docker.io for a name without one),
        reporting to ``progress`` as the engine goes, one ``PullProgress`` per layer
        event, when given. Use the engine's own credentials (``docker login`` /
        ``podman login``). Raise ``ImagePullError`` when the pull fails: build it with
        ``pybox.pull.pull_error(image, what_the_engine_said, status)``, which names the
        image and the registry and classifies the engine's answer (authentication
        required or denied, not found / manifest unknown, rate limit (429,
        toomanyrequests), registry unreachable, TLS); chain the SDK's error with
        ``raise ... from exc``. Raise ``BackendUnavailable`` when the *engine* does not
        answer. Core calls it (``pybox.pull.pull``) only for a missing image, one pull
        of an image at a time per process; ``Sandbox.start`` only for names that
        include a registry (``host[:port]/...``, ``localhost/...``)."""
        raise UnsupportedOperation(f"the {self.name} backend cannot pull images")

    def tag_image(self, image: str, tag: str) -> None:
        """Give the existing ``image`` the additional name ``tag`` (``pybox build`` tags
        the image with pybox's version)."""
        raise UnsupportedOperation(f"the {self.name} backend cannot tag images")

    def commit(self, container_id: str, tag: str, labels: Mapping[str, str]) -> str:
        """Save the running container's filesystem as image ``tag`` on this engine and
        return the new image's id (``Sandbox.snapshot``). Optional: this default raises
        UnsupportedOperation.

        Obligations, each a security property: (1) the image has the configuration of
        the image the container started from, never the container's, which holds the
        gateway's token, a remote sandbox's TLS key, the user's ``env`` and pybox's owner
        labels: build it with ``pybox.snapshot.snapshot_config`` (engines merge the
        container's environment and labels into a commit; that function empties what
        only the container has) plus ``labels``; an engine that also records the committed
        container's configuration in the image (Docker up to 24: ContainerConfig) must
        commit a container whose configuration is clean (the docker backend commits a never-started
        container made from a first, untagged commit); and check the result with
        ``pybox.snapshot.leaked_config``, removing the image and raising BackendError when
        it leaks; (2) mounts are left out: binds, volumes and the tmpfs scratch mounts
        (``plan.scratch``: among them the gateway's runtime directory, GATEWAY_HOME, with
        the kernels' connection keys and the TLS key), as engine commits do; (3) the
        container is paused while its filesystem is read, so code cannot change files
        mid-commit. Raise BackendError naming ``tag`` when the engine refuses the name,
        and when the container is not running or no longer exists; chain SDK errors."""
        raise UnsupportedOperation(f"the {self.name} backend cannot save a sandbox as an image (snapshot)")

    def remove_image(self, image: str) -> None:
        """Remove ``image`` (a tag or an id) from the engine; a missing image is fine.
        Optional: this default raises UnsupportedOperation."""
        raise UnsupportedOperation(f"the {self.name} backend cannot remove images")

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
