"""The Podman backend: Podman's REST API (``podman system service``) through the
podman package's low-level ``APIClient``, at the address ``CONTAINER_HOST`` names
(default: the rootful socket, then the user's ``$XDG_RUNTIME_DIR/podman/podman.sock``).

The libpod endpoints are called directly rather than through the SDK's managers:
the managers pull missing images behind the caller's back, cost extra round trips
on the cold-start path, read a whole build's output before returning, and hold
archive uploads in memory. The API client still does the transport (unix socket,
ssh, tcp) and the error mapping.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import os
import re
import socket
import struct
import tarfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, urlparse

import podman
import podman.errors
import requests

from pybox.backend import (
    ALL_FEATURES,
    Backend,
    ContainerState,
    Endpoint,
    LaunchPlan,
    PullProgress,
    PullProgressCallback,
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
from pybox.snapshot import SNAPSHOT_BASE_ID_LABEL, leaked_config, podman_changes, snapshot_config, split_tag

log = logging.getLogger(__name__)

#: Podman's rootful API socket (``podman system service`` as root, or podman.socket).
ROOTFUL_SOCKET = "/run/podman/podman.sock"
#: Seconds an ordinary API call may take; builds and archive copies get longer.
TIMEOUT = 60
LONG_TIMEOUT = 3600
#: What Podman puts in every container's environment (containers.conf's defaults): not
#: the sandbox's, left in a snapshot's configuration when unchanged.
ENGINE_ENV = {"TERM": "xterm", "container": "podman"}
#: Where a registry-less short name is looked for when pulling (docker's convention).
DEFAULT_REGISTRY = "docker.io"
def configured_service() -> tuple[str, str | None] | None:
    """The default connection of Podman's own configuration (``podman system connection
    default``: podman-connections.json, or containers.conf's ``active_service``), read by
    podman-py as the podman CLI reads it: its URL and SSH identity, or None."""
    try:
        from podman.domain.config import PodmanConfig

        service = PodmanConfig().active_service
    except Exception as exc:  # an unreadable configuration: fall back as podman would without one
        log.warning("cannot read Podman's connection configuration: %s", exc)
        return None
    url = None if service is None else (service.attrs.get("URI") or service.attrs.get("uri"))
    if not url:
        return None
    identity = service.attrs.get("Identity") or service.attrs.get("identity") or None
    return str(url), identity


def default_url() -> str:
    """The Podman service's URL: CONTAINER_HOST, else the default connection of Podman's
    configuration, else the rootful socket where it exists, else the user's socket under
    XDG_RUNTIME_DIR."""
    host = os.environ.get("CONTAINER_HOST", "").strip()
    if host:
        return host
    configured = configured_service()
    if configured is not None:
        return configured[0]
    candidates = [ROOTFUL_SOCKET]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime_dir:
        candidates.append(os.path.join(runtime_dir, "podman", "podman.sock"))
    for path in candidates:
        if os.path.exists(path) and os.access(path, os.R_OK | os.W_OK):
            return f"unix://{path}"
    return f"unix://{candidates[0] if os.geteuid() == 0 or len(candidates) == 1 else candidates[-1]}"


def unavailable_hint(url: str) -> str:
    socket_url = url if url.startswith("unix://") else f"unix://{ROOTFUL_SOCKET}"
    return (
        f"Is the Podman service running? Start it with `podman system service --time=0 {socket_url} &` "
        f"and set CONTAINER_HOST={socket_url} (or point CONTAINER_HOST at a running service)"
    )


class PodmanBackend(Backend):
    name = "podman"
    description = "Podman service from the environment (CONTAINER_HOST or the local podman.sock)"
    features = ALL_FEATURES

    def __init__(self) -> None:
        self.url = default_url()
        configured = None if os.environ.get("CONTAINER_HOST", "").strip() else configured_service()
        self.identity = configured[1] if configured is not None and configured[0] == self.url else None
        self._api: podman.api.APIClient | None = None
        # One copy into a container at a time: each pauses it (put_archive).
        self._archive_lock = threading.Lock()

    @property
    def api(self) -> podman.api.APIClient:
        if self._api is None:
            try:
                extra = {"identity": self.identity} if self.identity else {}
                self._api = podman.PodmanClient(base_url=self.url, timeout=TIMEOUT, **extra).api
            except (ValueError, podman.errors.PodmanError) as exc:
                raise BackendUnavailable(f"cannot use the Podman service at {self.url}: {exc}",
                                         unavailable_hint(self.url)) from exc
        return self._api

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate podman-py and transport errors into pybox errors."""
        try:
            yield
        except PyboxError:
            raise
        except podman.errors.APIError as exc:
            if exc.response is None:  # the SDK wraps transport failures (OSError) in APIError
                raise BackendUnavailable(
                    f"cannot reach the Podman service at {self.url} while trying to {action}: "
                    f"{exc.__cause__ or exc}", unavailable_hint(self.url)) from exc
            raise BackendError(f"Podman could not {action}: {_explain(exc)}") from exc
        except (requests.ConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise BackendUnavailable(f"cannot reach the Podman service at {self.url} while trying to "
                                     f"{action}: {exc}", unavailable_hint(self.url)) from exc
        except (requests.RequestException, podman.errors.PodmanError) as exc:
            raise BackendError(f"Podman could not {action}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------

    def create_options(self, plan: LaunchPlan) -> dict[str, Any]:
        """The body of libpod's container-create call (a SpecGenerator) for ``plan``."""
        body: dict[str, Any] = {
            "image": plan.image,
            "env": dict(plan.env),
            "labels": dict(plan.labels),
            "portmappings": [{
                "container_port": p.container_port,
                "host_ip": p.host_ip,
                "host_port": p.host_port or 0,  # 0: the engine picks a free port
                "protocol": "tcp",
            } for p in plan.ports],
            "mounts": [{
                "type": "bind",
                "source": b.host,
                "destination": b.container,
                "options": ["rbind", "ro" if b.read_only else "rw"],
            } for b in plan.binds] + [{
                "type": "tmpfs",
                "source": "tmpfs",
                "destination": s.path,
                # Podman refuses tmpfs's uid=/gid= options; U chowns to the container's user.
                "options": ["rw", "nosuid", "nodev", f"size={s.size}", *(["U"] if s.sandbox_owned else [])],
            } for s in plan.scratch],
            "resource_limits": _resource_limits(plan),
            "no_new_privileges": plan.no_new_privileges,
        }
        if plan.log_max_bytes is not None:
            # k8s-file rotates at `size`, keeping one old file: bounded like Docker's two files.
            body["log_configuration"] = {"driver": "k8s-file", "size": plan.log_max_bytes}
        if plan.command is not None:
            body["command"] = list(plan.command)
        if plan.user is not None:
            body["user"] = plan.user
        if plan.cap_add:
            body["cap_add"] = list(plan.cap_add)
        if plan.cap_drop:
            body["cap_drop"] = list(plan.cap_drop)
        if plan.extra_hosts:
            body["hostadd"] = [f"{name}:{address}" for name, address in plan.extra_hosts]
        if plan.name:
            body["name"] = plan.name
        if plan.read_only:
            body["read_only_filesystem"] = True
        if plan.volumes:
            body["volumes"] = [{"Name": "", "Dest": path} for path in plan.volumes]  # anonymous
        return body

    def start(self, plan: LaunchPlan) -> str:
        api = self.api
        gateway = plan.published(plan.gateway_port)
        if gateway.host_port and self.url.startswith("unix:"):
            # Podman 4.3, failing to start a second container on a busy port, tears down
            # the port forwarding of the container that holds it: find out first.
            _check_port_free(gateway.host_ip, gateway.host_port)
        body = self.create_options(plan)
        with self._errors("create the sandbox container"):
            response = api.post("/containers/create", data=json.dumps(body),
                                headers={"Content-Type": "application/json"})
            try:
                response.raise_for_status(not_found=podman.errors.ImageNotFound)
            except podman.errors.APIError as exc:
                if response.status_code == 404 or _is_missing_image(response):
                    raise ImageNotFound(plan.image) from exc
                raise
            container_id = response.json()["Id"]
        try:
            self._refuse_linked_bind_targets(plan)
            with self._errors("start the sandbox container"):
                response = api.post(f"/containers/{container_id}/start")
                try:
                    response.raise_for_status()
                except podman.errors.APIError as exc:
                    text = _message(response)
                    if "already in use" in text or "already allocated" in text or "address in use" in text:
                        raise BackendError(
                            f"port {gateway.host_port} on {gateway.host_ip} is already in use; choose another "
                            f"port or leave it unset so the engine picks a free one ({text})"
                        ) from exc
                    raise
        except BaseException:
            self.remove(container_id)
            raise
        return container_id

    def _refuse_linked_bind_targets(self, plan: LaunchPlan) -> None:
        # Podman's stat of a created container's path resolves into its mounts (a bind's
        # target reads as the host directory): the image's own files are looked at in a
        # probe container made without mounts, never started, removed at once.
        if not plan.binds:
            return
        with self._errors("check the bind targets in the image"):
            response = self.api.post("/containers/create", data=json.dumps({
                "image": plan.image, "labels": dict(plan.labels), "netns": {"nsmode": "none"}}),
                headers={"Content-Type": "application/json"})
            response.raise_for_status()
            probe = response.json()["Id"]
        try:
            refuse_linked_bind_targets(plan, lambda path: self._path_stat(probe, path))
        finally:
            self.remove(probe)

    def _path_stat(self, container_id: str, path: str) -> str | None:
        with self._errors(f"check the bind target {path}"):
            response = self.api.head(f"/containers/{quote(container_id, safe='')}/archive", params={"path": path})
            if response.status_code == 404:
                return None
            response.raise_for_status()
        return response.headers.get("X-Docker-Container-Path-Stat") or ""

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        info = self._inspect(container_id, "inspect the sandbox container")
        if info is None:
            raise BackendError(f"container {container_id[:12]} no longer exists")
        port = published_host_port(info, plan.gateway_port, container_id)
        return Endpoint(self._engine_host() or client_host(plan.published(plan.gateway_port).host_ip), port)

    def engine_host(self) -> str | None:
        return self._engine_host()

    def _engine_host(self) -> str | None:
        """The service's host when it is reached over TCP or ssh: published ports live there."""
        url = urlparse(self.url)
        if url.scheme in ("http", "https", "tcp", "ssh", "http+ssh") and url.hostname:
            return url.hostname
        return None

    def _inspect(self, container_id: str, action: str) -> dict[str, Any] | None:
        with self._errors(action):
            response = self.api.get(f"/containers/{quote(container_id, safe='')}/json")
            if _container_gone(response):
                return None
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]

    def inspect(self, container_id: str) -> ContainerState:
        return state_from_inspect(self._inspect(container_id, "inspect the sandbox container"))

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        return labels_from_inspect(self._inspect(container_id, "inspect the sandbox container"))

    def logs(self, container_id: str, tail: int = 50) -> str:
        with self._errors("read the container's logs"):
            response = self.api.get(f"/containers/{quote(container_id, safe='')}/logs",
                                    params={"stdout": True, "stderr": True, "tail": str(tail)})
            if response.status_code == 404:
                return ""
            response.raise_for_status()
            return _demultiplex(response.content).decode("utf-8", errors="replace")

    def remove(self, container_id: str) -> None:
        with self._errors("remove the sandbox container"):
            response = self.api.delete(f"/containers/{quote(container_id, safe='')}",
                                       params={"force": True, "v": True, "volumes": True, "timeout": 0})
            if response.status_code == 409 or _container_gone(response):  # 409: removal in progress
                return
            response.raise_for_status()

    def list_containers(self, labels: dict[str, str]) -> list[str]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        with self._errors("list containers"):
            response = self.api.get("/containers/json", params={"all": True, "filters": filters})
            response.raise_for_status()
            return [c["Id"] for c in response.json() or []]

    # -- files -----------------------------------------------------------------------

    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        # The engine extracts as root, path by path: code in the container could swap a
        # directory it just made for a link between two members and have root write
        # through it. Frozen (paused) meanwhile, it cannot.
        container = quote(container_id, safe="")
        with self._archive_lock, self._errors(f"copy files into {path}"):
            paused = self.api.post(f"/containers/{container}/pause")
            if paused.status_code >= 400:
                raise BackendError(f"cannot copy into {path}: could not pause the container to copy safely: "
                                   f"{_message(paused)}")
            try:
                # copyUIDGID=false keeps the archive's owners (pybox.files: the sandbox user);
                # Podman's default chowns to the container's user (root: the init's).
                response = self.api.put(f"/containers/{container}/archive",
                                        params={"path": path, "copyUIDGID": "false"}, data=iter(data),
                                        headers={"Content-Type": "application/x-tar"}, timeout=LONG_TIMEOUT)
                try:
                    response.raise_for_status()
                except podman.errors.APIError as exc:
                    raise BackendError(f"cannot copy into {path}: {_message(response)}") from exc
            finally:
                self.api.post(f"/containers/{container}/unpause")

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        with self._errors(f"copy {path} out of the container"):
            response = self.api.get(f"/containers/{quote(container_id, safe='')}/archive",
                                    params={"path": path}, stream=True, timeout=LONG_TIMEOUT)
            try:
                response.raise_for_status()
            except podman.errors.APIError as exc:
                text = _message(response)
                response.close()
                if response.status_code == 404 or "no such file" in text.lower() or "not found" in text.lower():
                    raise BackendError(f"no such file or directory in the sandbox: {path}") from exc
                raise BackendError(f"cannot copy {path} out of the container: {text}") from exc
        return self._chunks(response, path)

    def _chunks(self, response, path: str) -> Iterator[bytes]:
        try:
            with self._errors(f"copy {path} out of the container"):
                yield from response.iter_content(chunk_size=1 << 20)
        finally:
            response.close()

    # -- images ----------------------------------------------------------------------

    def image_exists(self, image: str) -> bool:
        with self._errors(f"inspect image {image}"):
            response = self.api.get(f"/images/{quote(image, safe='')}/exists")
            if response.status_code == 404:
                return False
            response.raise_for_status()
            return True

    def image_labels(self, image: str) -> dict[str, str] | None:
        with self._errors(f"inspect image {image}"):
            response = self.api.get(f"/images/{quote(image, safe='')}/json")
            if response.status_code == 404:
                return None
            response.raise_for_status()
            info = response.json()
        return dict(info.get("Labels") or (info.get("Config") or {}).get("Labels") or {})

    def pull_image(self, image: str, progress: PullProgressCallback | None = None) -> None:
        # The service's credentials (`podman login`) are used. Registries on this host are
        # reached without TLS verification, over plain HTTP where they speak it, as Docker
        # does by default (127.0.0.0/8 is an insecure registry there).
        reference = _qualified(image)
        params: dict[str, Any] = {"reference": reference, "quiet": False}
        if _loopback_registry(reference):
            params["tlsVerify"] = False
        with self._errors(f"pull image {image}"):
            response = self.api.post("/images/pull", params=params, stream=True, timeout=LONG_TIMEOUT)
            try:
                if response.status_code >= 400:
                    text = _message(response)
                    raise pull_error(image, text, response.status_code) from podman.errors.APIError(text)
                copying: dict[str, None] = {}  # layers being copied, in order
                for raw in response.iter_lines():
                    try:
                        chunk = json.loads(raw) if raw else {}
                    except ValueError:
                        continue
                    if chunk.get("error"):
                        raise pull_error(image, chunk["error"]) from podman.errors.APIError(chunk["error"])
                    events = [_pull_progress(image, line) for line in str(chunk.get("stream") or "").splitlines()
                              if line.strip()]
                    if chunk.get("id"):  # the final report: every layer is in
                        events += [PullProgress(image, layer, "Pull complete") for layer in copying]
                        events.append(PullProgress(image, None, f"Downloaded {str(chunk['id'])[:12]}"))
                    for event in events:
                        if event.layer and event.status == "Copying blob":
                            copying[event.layer] = None
                        if progress is not None:
                            progress(event)
            finally:
                response.close()

    def tag_image(self, image: str, tag: str) -> None:
        name = tag.split("@", 1)[0]
        colon = name.rfind(":")
        repository, version = (name[:colon], name[colon + 1:]) if colon > name.rfind("/") else (name, "latest")
        with self._errors(f"tag image {image} as {tag}"):
            response = self.api.post(f"/images/{quote(image, safe='')}/tag",
                                     params={"repo": repository, "tag": version})
            response.raise_for_status()

    def commit(self, container_id: str, tag: str, labels: Mapping[str, str]) -> str:
        repository, version = split_tag(tag)
        # The archive lock: an upload pausing and unpausing the container meanwhile would
        # unfreeze it mid-commit.
        with self._archive_lock, self._errors(f"save the sandbox as image {tag}"):
            info = self._inspect(container_id, "inspect the sandbox container")
            state = state_from_inspect(info)
            if info is None or not state.running:
                raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: it is not "
                                   f"running ({state.describe()})")
            base_id = str(info.get("Image") or "")
            response = self.api.get(f"/images/{quote(base_id, safe='')}/json")
            if response.status_code == 404:
                raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: the image it "
                                   f"started from ({base_id[:12]}) is gone from the engine")
            response.raise_for_status()
            base = response.json().get("Config") or {}
            config = snapshot_config(base, info.get("Config"), {**labels, SNAPSHOT_BASE_ID_LABEL: base_id},
                                     engine_env=ENGINE_ENV)
            # Podman starts from the container's configuration; the changes set every field
            # back to the base image's and empty what only the container has. pause: frozen
            # while the engine reads the container's layer.
            response = self.api.post("/commit", params={
                "container": container_id, "repo": repository, "tag": version, "pause": True,
                "changes": podman_changes(config)}, timeout=LONG_TIMEOUT)
            if response.status_code >= 400:
                text = _message(response)
                if _container_gone(response):
                    raise BackendError(f"cannot save sandbox container {container_id[:12]} as image {tag}: it no "
                                       f"longer exists") from podman.errors.APIError(text)
                raise BackendError(f"Podman refused to save the sandbox as image {tag!r}: {text}") \
                    from podman.errors.APIError(text)
            image_id = str(response.json().get("Id") or "")
            response = self.api.get(f"/images/{quote(image_id, safe='')}/json")
            response.raise_for_status()
            leaked = leaked_config(response.json().get("Config"), base, engine_env=ENGINE_ENV)
            if leaked:
                self.remove_image(image_id)
                raise BackendError(f"the image Podman made of the sandbox kept the container's "
                                   f"{', '.join(leaked)}; it was removed (no snapshot {tag} made)")
        return image_id

    def remove_image(self, image: str) -> None:
        with self._errors(f"remove image {image}"):
            response = self.api.delete(f"/images/{quote(image, safe='')}", params={"force": True})
            if response.status_code not in (200, 404):
                response.raise_for_status()

    def build_image(
        self, context: Path, tag: str, buildargs: dict[str, str], progress: Callable[[str], None]
    ) -> None:
        with self._errors(f"build image {tag}"):
            response = self.api.post(
                "/build",
                params={"t": tag, "buildargs": json.dumps(buildargs), "rm": True, "forcerm": True,
                        "layers": True, "dockerfile": "Dockerfile"},
                data=_tar_directory(context),
                headers={"Content-Type": "application/x-tar"},
                stream=True,
                timeout=LONG_TIMEOUT,
            )
            try:
                response.raise_for_status()
            except podman.errors.APIError as exc:
                raise BackendError(f"building image {tag} failed: {_message(response)}") from exc
            last = ""
            for raw in response.iter_lines():
                if not raw:
                    continue
                chunk = json.loads(raw)
                if chunk.get("error"):
                    detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                    raise BackendError(f"building image {tag} failed: {detail.strip()}") from \
                        podman.errors.BuildError(detail, [raw])
                line = chunk.get("stream") or chunk.get("status") or ""
                for part in line.rstrip("\n").split("\n"):
                    if part.strip():
                        last = part
                        progress(part.rstrip())
            if not self.image_exists(tag):
                reason = last or "no image was produced"
                raise BackendError(f"building image {tag} failed: {reason}") from podman.errors.BuildError(reason, [])

    def import_image(self, rootfs_tar: Path, tag: str) -> None:
        with self._errors(f"import image {tag}"), open(rootfs_tar, "rb") as tar:
            response = self.api.post("/images/import", params={"reference": tag}, data=tar,
                                     headers={"Content-Type": "application/x-tar"}, timeout=LONG_TIMEOUT)
            try:
                response.raise_for_status()
            except podman.errors.APIError as exc:
                raise BackendError(f"importing image {tag} failed: {_message(response)}") from exc

    # -- engine ------------------------------------------------------------------------

    def ping(self) -> None:
        with self._errors("answer a ping"):
            response = self.api.get("/_ping")
            response.raise_for_status()

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


# -- helpers ---------------------------------------------------------------------------

def _resource_limits(plan: LaunchPlan) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if plan.memory_bytes is not None:
        limits["memory"] = {"limit": plan.memory_bytes}
        if plan.memory_swap_bytes is not None:
            limits["memory"]["swap"] = plan.memory_swap_bytes
    if plan.cpus:
        period = 100_000
        limits["cpu"] = {"period": period, "quota": int(plan.cpus * period)}
    if plan.pids is not None:
        limits["pids"] = {"limit": int(plan.pids)}
    return limits


def _container_gone(response) -> bool:
    """The container does not exist: a 404, or Podman 4's 500 "... does not exist in
    database: no such container" for one removed while it was looked up."""
    return response.status_code == 404 or (response.status_code >= 400
                                           and "no such container" in _message(response).lower())


def _message(response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("cause") or body)
    except ValueError:
        return response.text.strip()


def _explain(exc: podman.errors.APIError) -> str:
    return str(exc.explanation or exc)


def _is_missing_image(response) -> bool:
    text = _message(response).lower()
    return "image not known" in text or "no such image" in text or "failed to find image" in text


def _qualified(image: str) -> str:
    """A pullable reference: registry-less names go to docker.io, as with docker."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"{DEFAULT_REGISTRY}/{image}" if "/" in image else f"{DEFAULT_REGISTRY}/library/{image}"


_COPYING_BLOB = re.compile(r"Copying blob (?:sha256:)?([0-9a-f]{12})[0-9a-f]*\s*(.*)")


def _pull_progress(image: str, line: str) -> PullProgress:
    """A PullProgress from one line of libpod's pull stream: ``Copying blob sha256:...``
    (a layer; "skipped: already exists" when the engine has it) or an image-wide step
    ("Trying to pull ...", "Copying config ...", "Writing manifest ..."). Podman 4 reports
    no byte counts through its API."""
    line = line.strip()
    found = _COPYING_BLOB.match(line)
    if found is None:
        return PullProgress(image, None, line)
    rest = found.group(2).strip()
    status = "Already exists" if "already exists" in rest else ("Copying blob" if not rest else f"Copying blob {rest}")
    return PullProgress(image, found.group(1), status)


def _loopback_registry(reference: str) -> bool:
    """Whether the reference's registry is on this host (localhost, 127.0.0.0/8, ::1)."""
    host = reference.split("/", 1)[0]
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tar_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in sorted(directory.iterdir()):
            tar.add(str(item), arcname=item.name)
    return buffer.getvalue()


def _demultiplex(data: bytes) -> bytes:
    """Strip the 8-byte stream headers of a multiplexed log stream (left as is when
    the stream is not multiplexed)."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        kind, size = struct.unpack(">BxxxL", data[pos:pos + 8])
        if kind not in (0, 1, 2) or pos + 8 + size > len(data):
            return data if pos == 0 else b"".join(out) + data[pos:]
        out.append(data[pos + 8:pos + 8 + size])
        pos += 8 + size
    return b"".join(out) + data[pos:]


def _check_port_free(host_ip: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host_ip, port))
        except OSError as exc:
            raise BackendError(
                f"port {port} on {host_ip} is already in use; choose another port or leave it unset so "
                f"the engine picks a free one"
            ) from exc
