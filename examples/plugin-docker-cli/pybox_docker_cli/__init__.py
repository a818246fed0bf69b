"""pybox-docker-cli: a third-party backend written from scratch, as an author would:
it drives the ``docker`` command-line client and imports nothing of pybox's Docker
backend.

It is all translation of the LaunchPlan pybox decided: no network-policy, read-only or
limit logic of its own. The gateway token (like every env value) is passed in the
environment of the ``docker`` process, never on its command line.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Iterator

import pybox
from pybox.backend import ALL_FEATURES, Backend, ContainerState, Endpoint, LaunchPlan
from pybox.errors import BackendError, BackendUnavailable, ImageNotFound
from pybox.launch import client_host, labels_from_inspect, published_host_port, state_from_inspect


class DockerCliBackend(Backend):
    name = "docker-cli"
    description = "the docker command-line client (a test backend written from scratch)"
    features = ALL_FEATURES

    def _docker(self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> bytes:
        try:
            done = subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=120,
                                  env={**os.environ, **(env or {})})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendUnavailable(f"docker {args[0]} failed: {exc}", "install the docker CLI") from exc
        if done.returncode != 0:
            error = subprocess.CalledProcessError(done.returncode, ["docker", *args], done.stdout, done.stderr)
            text = done.stderr.decode(errors="replace").strip()
            if "No such image" in text or "Unable to find image" in text or "pull access denied" in text:
                raise ImageNotFound(args[-1] if args[0] != "create" else "?") from error
            if "Cannot connect to the Docker daemon" in text:
                raise BackendUnavailable(text, "start dockerd") from error
            raise BackendError(f"docker {args[0]}: {text}") from error
        return done.stdout

    def _create_args(self, plan: LaunchPlan) -> list[str]:
        args = ["create", "--pull=never"]
        for key in plan.env:
            args += ["--env", key]  # the value comes from the environment: no secret in argv
        args += [arg for key, value in plan.labels.items() for arg in ("--label", f"{key}={value}")]
        for port in plan.ports:
            args += ["--publish", f"{port.host_ip}:{port.host_port or ''}:{port.container_port}"]
        for bind in plan.binds:
            args += ["--mount", f"type=bind,src={bind.host},dst={bind.container}" + (",readonly" if bind.read_only
                                                                                    else "")]
        args += [arg for cap in plan.cap_add for arg in ("--cap-add", cap)]
        args += [arg for cap in plan.cap_drop for arg in ("--cap-drop", cap)]
        args += [arg for name, address in plan.extra_hosts for arg in ("--add-host", f"{name}:{address}")]
        if plan.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        if plan.read_only:
            args.append("--read-only")
        for scratch in plan.scratch:
            owner = f",uid={scratch.uid},gid={scratch.gid}" if scratch.sandbox_owned else ""
            args += ["--tmpfs", f"{scratch.path}:rw,nosuid,nodev,size={scratch.size}{owner}"]
        args += [arg for path in plan.volumes for arg in ("--volume", path)]
        if plan.memory_bytes is not None:
            args += ["--memory", f"{plan.memory_bytes}b"]
        if plan.memory_swap_bytes is not None:
            args += ["--memory-swap", f"{plan.memory_swap_bytes}b"]
        if plan.cpus is not None:
            args += ["--cpus", str(plan.cpus)]
        if plan.pids is not None:
            args += ["--pids-limit", str(plan.pids)]
        if plan.user is not None:
            args += ["--user", plan.user]
        if plan.log_max_bytes is not None:
            args += ["--log-driver", "json-file", "--log-opt", f"max-size={plan.log_max_bytes}",
                     "--log-opt", f"max-file={plan.log_max_files}"]
        if plan.name:
            args += ["--name", plan.name]
        return [*args, plan.image, *(plan.command or [])]

    def start(self, plan: LaunchPlan) -> str:
        try:
            container = self._docker(*self._create_args(plan), env=dict(plan.env)).decode().strip()
        except ImageNotFound as exc:
            raise ImageNotFound(plan.image) from exc.__cause__
        try:
            self._docker("start", container)
        except BaseException:
            self.remove(container)
            raise
        return container

    def _inspect(self, container_id: str) -> dict | None:
        try:
            return json.loads(self._docker("inspect", container_id))[0]
        except BackendError as exc:
            if "No such" in str(exc):
                return None
            raise

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        info = self._inspect(container_id) or {}
        return Endpoint(client_host(plan.published(plan.gateway_port).host_ip),
                        published_host_port(info, plan.gateway_port, container_id))

    def inspect(self, container_id: str) -> ContainerState:
        return state_from_inspect(self._inspect(container_id))

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        return labels_from_inspect(self._inspect(container_id))

    def logs(self, container_id: str, tail: int = 50) -> str:
        try:
            return self._docker("logs", "--tail", str(tail), container_id).decode(errors="replace")
        except BackendError:
            return ""

    def remove(self, container_id: str) -> None:
        try:
            self._docker("rm", "--force", "--volumes", container_id)
        except BackendError as exc:
            if "No such container" not in str(exc) and "already in progress" not in str(exc):
                raise

    def list_containers(self, labels: dict[str, str]) -> list[str]:
        filters = [arg for key, value in labels.items() for arg in ("--filter", f"label={key}={value}")]
        return self._docker("ps", "--all", "--quiet", "--no-trunc", *filters).decode().split()

    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        self._docker("cp", "-", f"{container_id}:{path}", stdin=b"".join(data))

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        try:
            return iter([self._docker("cp", f"{container_id}:{path}", "-")])
        except BackendError as exc:
            raise BackendError(f"no such file or directory in the sandbox: {path}") from exc.__cause__

    def image_exists(self, image: str) -> bool:
        try:
            self._docker("image", "inspect", image)
            return True
        except BackendError:
            return False

    def ping(self) -> None:
        self._docker("version")


class DockerCliPlugin:
    @pybox.hookimpl
    def pybox_register_backends(self, register):
        register(DockerCliBackend)


#: The object the ``pybox`` entry point names.
plugin = DockerCliPlugin()
