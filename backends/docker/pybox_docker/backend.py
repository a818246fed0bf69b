"""The local Docker backend: docker-py's low-level API against the engine that
``DOCKER_HOST`` (or the default socket) names.

The low-level ``APIClient`` is used on purpose: the high-level ``containers.run``
pulls missing images behind the caller's back and costs extra round trips on the
cold-start path.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse

import docker
import docker.errors
import requests

from pybox.backend import NETWORK_INIT, WORKDIR, Backend, ContainerSpec, ContainerState, Endpoint, network_env
from pybox.errors import BackendError, BackendUnavailable, ImageNotFound, PyboxError

#: Writable scratch on a read-only root: what the gateway and IPython write at run
#: time (connection files, config dirs); the image's font cache stays readable.
READ_ONLY_TMPFS = {
    "/tmp": "rw,nosuid,nodev,size=256m",
    "/home/sandbox/.local": "rw,nosuid,nodev,size=64m,uid=1000,gid=1000",
    "/home/sandbox/.config": "rw,nosuid,nodev,size=16m,uid=1000,gid=1000",
    "/home/sandbox/.jupyter": "rw,nosuid,nodev,size=16m,uid=1000,gid=1000",
}

UNAVAILABLE_HINT = (
    "Is the Docker engine running? Start it (`systemctl start docker`, or `dockerd &` "
    "where there is no systemd) or point DOCKER_HOST at a running engine"
)


class DockerBackend(Backend):
    name = "docker"
    description = "Docker engine from the environment (DOCKER_HOST or the local socket)"

    def __init__(self) -> None:
        self._api: docker.APIClient | None = None

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

    def host_config_options(self, spec: ContainerSpec) -> dict:
        """Keyword arguments of docker-py's ``create_host_config``; subclasses extend them."""
        return {
            "port_bindings": {spec.gateway_port: (spec.host_ip, spec.host_port)},
            "binds": {b.host: {"bind": b.container, "mode": "ro" if b.read_only else "rw"} for b in spec.binds},
            "mem_limit": spec.limits.memory,
            "nano_cpus": int(spec.limits.cpus * 1e9) if spec.limits.cpus else None,
            "pids_limit": spec.limits.pids,
            "read_only": spec.read_only,
            "tmpfs": READ_ONLY_TMPFS if spec.read_only else None,
            # A network policy is applied by the image's init as root with NET_ADMIN;
            # it then drops to the sandbox user with no capabilities at all.
            "cap_add": ["NET_ADMIN"] if spec.network != "open" else None,
            "security_opt": ["no-new-privileges"],
        }

    def container_options(self, spec: ContainerSpec) -> dict:
        """Keyword arguments of docker-py's ``create_container`` (but the host config);
        subclasses extend them."""
        policed = spec.network != "open"
        env = {**spec.env, **({"PYBOX_NETWORK": network_env(spec.network)} if policed else {})}
        return {
            "command": ([NETWORK_INIT, *(spec.command or [])]) if policed else spec.command,
            "user": "0" if policed else None,
            "environment": [f"{k}={v}" for k, v in env.items()],
            "labels": spec.labels,
            "ports": [f"{spec.gateway_port}/tcp"],
            "name": spec.name,
            "detach": True,
            # With a read-only root, /app is an anonymous volume (removed with the
            # container) so that the kernel and upload/download can still write there.
            "volumes": [WORKDIR] if spec.read_only else None,
        }

    def start(self, spec: ContainerSpec) -> str:
        api = self.api
        with self._errors("create the sandbox container"):
            host_config = api.create_host_config(**self.host_config_options(spec))
            try:
                created = api.create_container(spec.image, host_config=host_config, **self.container_options(spec))
            except docker.errors.ImageNotFound as exc:
                raise ImageNotFound(spec.image) from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 404 and "image" in str(exc.explanation or "").lower():
                    raise ImageNotFound(spec.image) from exc
                raise
        container_id = created["Id"]
        try:
            with self._errors("start the sandbox container"):
                try:
                    api.start(container_id)
                except docker.errors.APIError as exc:
                    text = str(exc.explanation or exc)
                    if "already allocated" in text or "address already in use" in text:
                        raise BackendError(
                            f"port {spec.host_port} on {spec.host_ip} is already in use; choose another "
                            f"port or leave it unset so the engine picks a free one"
                        ) from exc
                    raise
        except BaseException:
            self.remove(container_id)
            raise
        return container_id

    def endpoint(self, container_id: str, spec: ContainerSpec) -> Endpoint:
        with self._errors("inspect the sandbox container"):
            info = self.api.inspect_container(container_id)
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{spec.gateway_port}/tcp") or []
        if not bindings:
            raise BackendError(f"container {container_id[:12]} publishes no port for the kernel gateway")
        port = int(bindings[0]["HostPort"])
        return Endpoint(self._engine_host() or _client_host(spec.host_ip), port)

    def _engine_host(self) -> str | None:
        """The engine's host when it is reached over TCP: published ports live there."""
        url = urlparse(self.api.base_url)
        if url.scheme in ("http", "https", "tcp") and url.hostname:
            return url.hostname
        return None

    def inspect(self, container_id: str) -> ContainerState:
        with self._errors("inspect the sandbox container"):
            try:
                state = self.api.inspect_container(container_id).get("State") or {}
            except docker.errors.NotFound:
                return ContainerState(running=False, status="removed")
        return ContainerState(
            running=bool(state.get("Running")),
            status=str(state.get("Status", "")),
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
        )

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        with self._errors("inspect the sandbox container"):
            try:
                return dict(self.api.inspect_container(container_id).get("Config", {}).get("Labels") or {})
            except docker.errors.NotFound:
                return None

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
        with self._errors(f"copy files into {path}"):
            try:
                self.api.put_archive(container_id, path, data)
            except docker.errors.NotFound as exc:
                raise BackendError(f"cannot copy into {path}: {exc.explanation or exc}") from exc

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

    def pull_image(self, image: str) -> bool:
        repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        try:
            for _ in self.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                pass
        except (docker.errors.APIError, requests.RequestException):
            return False
        return self.image_exists(image)

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


def _client_host(host_ip: str) -> str:
    return "127.0.0.1" if host_ip in ("", "0.0.0.0") else ("::1" if host_ip == "::" else host_ip)
