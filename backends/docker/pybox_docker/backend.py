"""The local Docker backend: docker-py's low-level API against the engine that
``DOCKER_HOST`` (or the default socket) names.

The low-level ``APIClient`` is used on purpose: the high-level ``containers.run``
pulls missing images behind the caller's back and costs extra round trips on the
cold-start path.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlparse

import docker
import docker.errors
import docker.types
import docker.utils
import requests

from pybox.backend import (
    ALL_FEATURES,
    Backend,
    ContainerState,
    Endpoint,
    LaunchPlan,
    PullProgress,
    PullProgressCallback,
    Scratch,
)
from pybox.errors import BackendError, BackendUnavailable, ImageNotFound, PyboxError
from pybox.launch import (
    client_host,
    labels_from_inspect,
    published_host_port,
    refuse_linked_bind_targets,
    state_from_inspect,
)
from pybox.pull import pull_error
from pybox.snapshot import SNAPSHOT_BASE_ID_LABEL, leaked_config, snapshot_config, split_tag

#: Seconds a commit (Sandbox.snapshot) may take: the engine copies the container's layer.
COMMIT_TIMEOUT = 3600

UNAVAILABLE_HINT = (
    "Is the Docker engine running? Start it (`systemctl start docker`, or `dockerd &` "
    "where there is no systemd) or point DOCKER_HOST at a running engine"
)


class DockerBackend(Backend):
    name = "docker"
    description = "Docker engine from the environment (DOCKER_HOST or the local socket)"
    features = ALL_FEATURES

    def __init__(self) -> None:
        self._api: docker.APIClient | None = None
        # One copy into a container at a time: each pauses it (put_archive).
        self._archive_lock = threading.Lock()

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            try:
                self._api = docker.from_env(timeout=60).api
            except docker.errors.DockerException as exc:
                raise BackendUnavailable(f"cannot reach the Docker engine: {exc}", UNAVAILABLE_HINT) from exc
        return self._api

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate docker-py and transport errors into pybox errors."""
        try:
            yield
        except PyboxError:
            raise
        except (requests.ConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise BackendUnavailable(f"cannot reach the Docker engine while trying to {action}: {exc}",
                                     UNAVAILABLE_HINT) from exc
        except docker.errors.APIError as exc:
            raise BackendError(f"Docker could not {action}: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise BackendError(f"Docker could not {action}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------

    def host_config_options(self, plan: LaunchPlan) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_host_config`` for ``plan``."""
        return {
            "port_bindings": {p.container_port: (p.host_ip, p.host_port) for p in plan.ports},
            "binds": {b.host: {"bind": b.container, "mode": "ro" if b.read_only else "rw"} for b in plan.binds},
            "mem_limit": plan.memory_bytes,
            "memswap_limit": plan.memory_swap_bytes,
            "nano_cpus": int(plan.cpus * 1e9) if plan.cpus else None,
            "pids_limit": plan.pids,
            "read_only": plan.read_only,
            "tmpfs": {s.path: _tmpfs_options(s) for s in plan.scratch} or None,
            "cap_add": list(plan.cap_add) or None,
            "extra_hosts": [f"{name}:{address}" for name, address in plan.extra_hosts] or None,
            "cap_drop": list(plan.cap_drop) or None,
            "security_opt": ["no-new-privileges"] if plan.no_new_privileges else None,
            "log_config": None if plan.log_max_bytes is None else docker.types.LogConfig(
                type="json-file", config={"max-size": str(plan.log_max_bytes), "max-file": str(plan.log_max_files)}),
        }

    def container_options(self, plan: LaunchPlan) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_container`` (but the host config)."""
        return {
            "command": plan.command,
            "user": plan.user,
            "environment": [f"{k}={v}" for k, v in plan.env.items()],
            "labels": plan.labels,
            "ports": [f"{p.container_port}/tcp" for p in plan.ports],
            "name": plan.name,
            "detach": True,
            "volumes": list(plan.volumes) or None,
        }

    def start(self, plan: LaunchPlan) -> str:
        api = self.api
        with self._errors("create the sandbox container"):
            host_config = api.create_host_config(**self.host_config_options(plan))
            try:
                created = api.create_container(plan.image, host_config=host_config, **self.container_options(plan))
            except docker.errors.ImageNotFound as exc:
                raise ImageNotFound(plan.image) from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 404 and "image" in str(exc.explanation or "").lower():
                    raise ImageNotFound(plan.image) from exc
                raise
        container_id = created["Id"]
        try:
            refuse_linked_bind_targets(plan, lambda path: self._path_stat(container_id, path))
            with self._errors("start the sandbox container"):
                try:
                    api.start(container_id)
                except docker.errors.APIError as exc:
                    text = str(exc.explanation or exc)
                    if "already allocated" in text or "address already in use" in text:
                        port = plan.published(plan.gateway_port)
                        raise BackendError(
                            f"port {port.host_port} on {port.host_ip} is already in use; choose another "
                            f"port or leave it unset so the engine picks a free one"
                        ) from exc
                    raise
        except BaseException:
            self.remove(container_id)
            raise
        return container_id

    def _path_stat(self, container_id: str, path: str) -> str | None:
        api = self.api
        with self._errors(f"check the bind target {path}"):
            # docker-py has no call for the archive's HEAD (a stat without the content)
            response = api.head(api._url("/containers/{0}/archive", container_id), params={"path": path},
                                timeout=api.timeout)
            if response.status_code == 404:
                return None
            api._raise_for_status(response)
        return response.headers.get("X-Docker-Container-Path-Stat") or ""

    def _inspect(self, container_id: str) -> dict[str, Any] | None:
        with self._errors("inspect the sandbox container"):
            try:
                return self.api.inspect_container(container_id)  # type: ignore[no-any-return]
            except docker.errors.NotFound:
                return None

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        info = self._inspect(container_id)
        if info is None:
            raise BackendError(f"container {container_id[:12]} no longer exists")
        port = published_host_port(info, plan.gateway_port, container_id)
        return Endpoint(self._engine_host() or client_host(plan.published(plan.gateway_port).host_ip), port)

    def engine_host(self) -> str | None:
        return self._engine_host()

    def _engine_host(self) -> str | None:
        """The engine's host when it is reached over TCP: published ports live there."""
        url = urlparse(self.api.base_url)
        if url.scheme in ("http", "https", "tcp") and url.hostname:
            return url.hostname
        return None

    def inspect(self, container_id: str) -> ContainerState:
        return state_from_inspect(self._inspect(container_id))

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        return labels_from_inspect(self._inspect(container_id))

    def logs(self, container_id: str, tail: int = 50) -> str:
        with self._errors("read the container's logs"):
            try:
                return self.api.logs(container_id, tail=tail).decode("utf-8", errors="replace")
            except docker.errors.NotFound:
                return ""

    def remove(self, container_id: str) -> None:
        with self._errors("remove the sandbox container"):
            try:
                self.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise

    def list_containers(self, labels: dict[str, str]) -> list[str]:
        with self._errors("list containers"):
            found = self.api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [c["Id"] for c in found]

    # -- files -----------------------------------------------------------------------

    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        # The engine extracts as root, path by path: code in the container could swap a
        # directory it just made for a link between two members and have root write
        # through it. Frozen (paused) meanwhile, it cannot.
        with self._archive_lock, self._errors(f"copy files into {path}"):
            try:
                self.api.pause(container_id)
            except docker.errors.NotFound as exc:
                raise BackendError(f"cannot copy into {path}: {exc.explanation or exc}") from exc
            try:
                self.api.put_archive(container_id, path, data)
            except docker.errors.NotFound as exc:
                raise BackendError(f"cannot copy into {path}: {exc.explanation or exc}") from exc
            finally:
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    self.api.unpause(container_id)

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        with self._errors(f"copy {path} out of the container"):
            try:
                stream, _stat = self.api.get_archive(container_id, path, chunk_size=1 << 20)
            except docker.errors.NotFound as exc:
                raise BackendError(f"no such file or directory in the sandbox: {path}") from exc
        return iter(stream)

    # -- images ----------------------------------------------------------------------

    def image_exists(self, image: str) -> bool:
        with self._errors(f"inspect image {image}"):
            try:
                self.api.inspect_image(image)
                return True
            except docker.errors.ImageNotFound:
                return False
            except docker.errors.NotFound:
                return False

    def image_labels(self, image: str) -> dict[str, str] | None:
        with self._errors(f"inspect image {image}"):
            try:
                info = self.api.inspect_image(image)
            except docker.errors.NotFound:  # docker.errors.ImageNotFound included
                return None
        return dict((info.get("Config") or {}).get("Labels") or {})

    def pull_image(self, image: str, progress: PullProgressCallback | None = None) -> None:
        # The engine's own credentials (~/.docker/config.json) are sent by docker-py.
        with self._errors(f"pull image {image}"):
            try:
                for event in self.api.pull(image, stream=True, decode=True):
                    if event.get("error"):
                        detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                        raise pull_error(image, detail) from docker.errors.APIError(detail)
                    if progress is not None:
                        progress(_pull_progress(image, event))
            except docker.errors.APIError as exc:  # the engine refused at once (404, 500 with the reason)
                raise pull_error(image, str(exc.explanation or exc), exc.status_code) from exc
            except requests.Timeout as exc:
                raise BackendError(f"Docker stopped reporting on the pull of {image}: {exc}") from exc

    def tag_image(self, image: str, tag: str) -> None:
        repository, version = docker.utils.parse_repository_tag(tag)
        with self._errors(f"tag image {image} as {tag}"):
            self.api.tag(image, repository, version or "latest", force=True)

    def commit(self, container_id: str, tag: str, labels: Mapping[str, str]) -> str:
        api = self.api
        repository, version = split_tag(tag)
        # The archive lock: an upload pausing and unpausing the container meanwhile would
        # unfreeze it mid-commit.
        with self._archive_lock, self._errors(f"save the sandbox as image {tag}"):
            info = self._inspect(container_id)
            state = state_from_inspect(info)
            if info is None or not state.running:
                raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: it is not "
                                   f"running ({state.describe()})")
            base_id = str(info.get("Image") or "")
            try:
                base = api.inspect_image(base_id).get("Config") or {}
            except docker.errors.NotFound as exc:
                raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: the image it "
                                   f"started from ({base_id[:19]}) is gone from the engine") from exc
            conf = snapshot_config(base, info.get("Config"), {**labels, SNAPSHOT_BASE_ID_LABEL: base_id})
            # A large layer takes the engine a while: the client's usual 60 s would cut it off.
            previous, api.timeout = api.timeout, COMMIT_TIMEOUT
            try:
                # pause=True: the container is frozen while the engine reads its layer. Docker
                # up to 24 also records the committed container's whole configuration in the
                # image (ContainerConfig, pushed and saved with it): the token, env=. So this
                # first image stays untagged, and a container created from it (its config the
                # clean one above, never started) is committed as the snapshot.
                layer = api.commit(container_id, conf=conf, pause=True)
                helper = api.create_container(str(layer.get("Id") or ""), host_config=api.create_host_config())
                try:
                    answer = api.commit(helper["Id"], repository=repository, tag=version, conf=conf, pause=False)
                finally:
                    with contextlib.suppress(docker.errors.NotFound):
                        api.remove_container(helper["Id"], force=True, v=True)
            except requests.Timeout as exc:
                raise BackendError(f"Docker did not finish saving the sandbox as image {tag} within "
                                   f"{COMMIT_TIMEOUT} s") from exc
            except docker.errors.NotFound as exc:
                raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: it no "
                                   f"longer exists") from exc
            except docker.errors.APIError as exc:
                raise BackendError(f"Docker refused to save the sandbox as image {tag!r}: "
                                   f"{exc.explanation or exc}") from exc
            finally:
                api.timeout = previous
            image_id = str(answer.get("Id") or "")
            image = api.inspect_image(image_id)
            leaked = leaked_config(image.get("Config"), base) + [
                f"{what} (in ContainerConfig)" for what in leaked_config(image.get("ContainerConfig"), base)]
            if leaked:
                self.remove_image(image_id)
                raise BackendError(f"the image Docker made of the sandbox kept the container's "
                                   f"{', '.join(leaked)}; it was removed (no snapshot {tag} made)")
        return image_id

    def remove_image(self, image: str) -> None:
        with self._errors(f"remove image {image}"):
            try:
                self.api.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass

    def build_image(
        self, context: Path, tag: str, buildargs: dict[str, str], progress: Callable[[str], None]
    ) -> None:
        with self._errors(f"build image {tag}"):
            for chunk in self.api.build(path=str(context), tag=tag, buildargs=buildargs, rm=True,
                                        forcerm=True, decode=True):
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise BackendError(f"building image {tag} failed: {detail.strip()}")
                line = chunk.get("stream") or chunk.get("status") or ""
                if line.strip():
                    progress(line.rstrip("\n"))

    def import_image(self, rootfs_tar: Path, tag: str) -> None:
        repository, _, version = tag.rpartition(":")
        with self._errors(f"import image {tag}"):
            answer = self.api.import_image_from_file(str(rootfs_tar), repository=repository, tag=version)
        if isinstance(answer, str) and '"error"' in answer:
            raise BackendError(f"importing image {tag} failed: {json.loads(answer.splitlines()[-1])}")

    # -- engine ------------------------------------------------------------------------

    def ping(self) -> None:
        with self._errors("answer a ping"):
            self.api.ping()

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


def _pull_progress(image: str, event: dict[str, Any]) -> PullProgress:
    """A PullProgress from one event of Docker's pull stream: ``{"status": "Downloading",
    "id": "a1b2c3d4e5f6", "progressDetail": {"current": 1, "total": 2}}``; image-wide
    events ("Pulling from pybox" with the tag as id, "Digest: ...", "Status: ...") get no layer."""
    status = str(event.get("status") or "")
    layer = event.get("id")
    if not isinstance(layer, str) or not layer or status.startswith("Pulling from"):
        layer = None
    detail = event.get("progressDetail") or {}
    current, total = detail.get("current"), detail.get("total")
    return PullProgress(image, layer, status, current if isinstance(current, int) else None,
                        total if isinstance(total, int) and total > 0 else None)


def _tmpfs_options(scratch: Scratch) -> str:
    owner = f",uid={scratch.uid},gid={scratch.gid}" if scratch.sandbox_owned else ""
    return f"rw,nosuid,nodev,size={scratch.size}{owner}"
