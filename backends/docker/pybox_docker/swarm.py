"""The Docker Swarm backend: one swarm service per sandbox, scheduled by the swarm's
managers onto its nodes, reached through ``DOCKER_HOST=tcp://MANAGER:2376`` with TLS (as
docker-remote: plain TCP is refused unless ``PYBOX_ALLOW_INSECURE_ENGINE=1``).

How a sandbox becomes a service:

- one replica, restart condition ``none``: a sandbox whose container dies is reported
  dead (exit code, OOMKilled), never replaced behind the caller's back by a fresh one
  without its state;
- endpoint mode ``dnsrr`` and the kernel gateway published in *host* mode on the node
  that runs the task (the engine picks the port, or ``Sandbox(port=...)``): no virtual
  IP and no ingress routing mesh, which need IPVS on every node. The client connects to
  that node's address (its ``Status.Addr``, or ``PYBOX_SWARM_NODE_HOSTS``) at the port
  the task reports; the traffic is TLS pinned per sandbox, as docker-remote's;
- placement constraints from ``PYBOX_SWARM_CONSTRAINTS`` (``node.labels.pool==sandbox,
  node.role!=manager``), limits *and* reservations from ``Limits`` (so the scheduler
  never puts more sandboxes on a node than its memory and CPUs hold; ``PYBOX_SWARM_
  RESERVATIONS=none`` schedules on limits alone), capabilities (``CapabilityAdd`` /
  ``CapabilityDrop``, Docker 20.10 / API 1.41 and later), read-only root, tmpfs scratch,
  an anonymous volume at /app, log rotation, ownership labels on the service *and* its
  container;
- no-new-privileges: a service has no such setting before API 1.46, so the command is
  started through the image's ``setpriv --no-new-privs`` (util-linux, part of pybox's
  image contract), which sets the same flag before the init runs;
- host-path binds are refused: a path would name a directory on whichever node the
  scheduler picks. Files move with ``Sandbox.upload`` / ``download``.

Files, logs and a dead container's details live on the node that runs the task, which
the manager's API cannot reach into: the backend talks to that node's own engine
(``tcp://NODE:2376``, the same TLS client certificate; ``PYBOX_SWARM_NODE_HOSTS`` and
``PYBOX_SWARM_NODE_PORT`` say otherwise). Uploads pause the container there while the
engine extracts, as on Docker.

Images: a node without the image would reject the task (restart condition none: no
retry elsewhere), so an image "exists" on a swarm when every node a sandbox may be
placed on (Ready, Active, matching the constraints) has it; ``pull_image`` pulls it on
each of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import threading
import time
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse

import docker
import docker.errors
import docker.types
import docker.utils

from pybox import launch
from pybox.backend import ALL_FEATURES, BINDS, Backend, ContainerState, Endpoint, LaunchPlan, PullProgressCallback
from pybox.errors import BackendError, BackendUnavailable, ImageNotFound, InvalidArgument, UnsupportedOperation
from pybox.image_contract import NETWORK_ENV, network_policy_value
from pybox.launch import state_from_inspect
from pybox_docker.remote import RemoteDockerBackend, _APIClient, _explain

#: Placement constraints of every sandbox's service, comma-separated (swarm's syntax).
CONSTRAINTS_ENV = "PYBOX_SWARM_CONSTRAINTS"
#: ``NODE=HOST,...``: where this client reaches a node (its engine and its published
#: ports); NODE is the node's hostname, id or address. Default: the node's address.
NODE_HOSTS_ENV = "PYBOX_SWARM_NODE_HOSTS"
#: Port of the nodes' engine API (TLS). Default: the port in DOCKER_HOST.
NODE_PORT_ENV = "PYBOX_SWARM_NODE_PORT"
#: "none": no resource reservations (limits only). Default: reservations = limits.
RESERVATIONS_ENV = "PYBOX_SWARM_RESERVATIONS"
#: Seconds a service may take to get a running task (scheduling, the node starting it).
START_TIMEOUT_ENV = "PYBOX_SWARM_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 120.0

#: The image's setpriv (util-linux): sets no_new_privs before it runs the command.
SETPRIV = "/usr/bin/setpriv"

SETUP_HINT = (
    "The swarm backend needs DOCKER_HOST naming a swarm manager's engine: DOCKER_HOST=tcp://MANAGER:2376 "
    "with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=DIR (DIR holding ca.pem, cert.pem and key.pem, accepted by "
    "the manager and by every node's engine)"
)
NOT_A_MANAGER_HINT = (
    "Point DOCKER_HOST at a manager of the swarm (`docker node ls` works there), or make this engine one "
    "(`docker swarm init`)"
)
NODE_HINT = (
    "The swarm backend reaches the engine of the node that runs a sandbox for its files, logs and state: "
    "that engine must listen on TCP with TLS (the port in DOCKER_HOST, or " + NODE_PORT_ENV + ") and accept "
    "the client certificate in DOCKER_CERT_PATH; if this client reaches the node under another name or "
    "address than the swarm's, set " + NODE_HOSTS_ENV + "=NODE=HOST,..."
)
BINDS_REFUSED = (
    "on a swarm a host path names a directory on whichever node the scheduler picks, not on this machine. "
    "Copy files in and out instead: Sandbox.upload(local, remote) and Sandbox.download(remote, local) move "
    "them through the node's engine"
)
BUILD_REFUSED = (
    "images live on each node's engine. Build on one engine (`pybox build`), then load the image into every "
    "node's engine (`docker save pybox:latest | docker -H tcp://NODE:2376 --tlsverify load`), or push it to a "
    "registry the nodes reach and use that name"
)

#: Task states after which the task never runs (again).
_ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


@dataclasses.dataclass(frozen=True)
class _Task:
    """Where a service's (latest) task is and how it does."""

    node_id: str
    state: str
    error: str
    message: str
    container_id: str
    exit_code: int | None
    published: dict[int, int]  # target port -> published port on the node


class SwarmBackend(RemoteDockerBackend):
    name = "swarm"
    description = "Docker Swarm: a service per sandbox, scheduled on the swarm's nodes (DOCKER_HOST=tcp:// a manager)"
    features = ALL_FEATURES - {BINDS}
    unsupported_hints = {BINDS: BINDS_REFUSED, "build": BUILD_REFUSED}
    gateway_tls = True

    def __init__(self) -> None:
        super().__init__()
        self._nodes_lock = threading.Lock()
        self._node_engines: dict[str, _NodeEngine] = {}

    # -- snapshots ---------------------------------------------------------------------------

    def commit(self, container_id: str, tag: str, labels: Mapping[str, str]) -> str:
        raise UnsupportedOperation(
            "the swarm backend cannot save a sandbox as an image: the image would exist on the one node "
            "that runs it, and the swarm starts sandboxes on any eligible node. Snapshot on the docker or "
            "docker-remote backend, and load or push the image to every node")

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> docker.APIClient:
        self._check_usable()
        return super()._connect()

    def _check_usable(self) -> None:
        if not self.docker_host:
            raise BackendUnavailable("DOCKER_HOST is not set", SETUP_HINT)
        if self.scheme not in ("tcp", "https", "http"):
            raise BackendUnavailable(f"DOCKER_HOST={self.docker_host} is not a swarm manager's TCP address "
                                     f"(tcp://MANAGER:2376): the swarm backend also reaches each node's engine "
                                     f"over TCP with the same TLS settings", SETUP_HINT)
        self.remote_host  # noqa: B018 -- validates that a host is named
        self._refuse_insecure_engine()

    def _node_port(self) -> int:
        text = os.environ.get(NODE_PORT_ENV, "").strip()
        if text:
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise InvalidArgument(f"{NODE_PORT_ENV}={text!r} is not a port number")
            return int(text)
        return urlparse(self.docker_host).port or 2376

    def _node_hosts(self) -> dict[str, str]:
        text = os.environ.get(NODE_HOSTS_ENV, "").strip()
        hosts = {}
        for entry in filter(None, (e.strip() for e in text.split(","))):
            node, sep, host = entry.partition("=")
            if not sep or not node.strip() or not host.strip():
                raise InvalidArgument(f"{NODE_HOSTS_ENV}: {entry!r} is not NODE=HOST (NODE: a node's hostname, "
                                      f"id or address)")
            hosts[node.strip()] = host.strip()
        return hosts

    def _nodes(self) -> list[dict[str, Any]]:
        with self._errors("list the swarm's nodes"):
            try:
                return list(self.api.nodes())
            except docker.errors.APIError as exc:
                if exc.status_code == 503 or "not a swarm manager" in str(exc.explanation or "") \
                        or "not part of a swarm" in str(exc.explanation or ""):
                    raise BackendUnavailable(f"the engine at {self.docker_host} is not a swarm manager: "
                                             f"{exc.explanation or exc}", NOT_A_MANAGER_HINT) from exc
                raise

    def _node(self, node_id: str) -> dict[str, Any]:
        with self._errors(f"inspect swarm node {node_id[:12]}"):
            try:
                return self.api.inspect_node(node_id)  # type: ignore[no-any-return]
            except docker.errors.NotFound as exc:
                raise BackendError(f"swarm node {node_id[:12]} is no longer part of the swarm") from exc

    def _node_host(self, node: Mapping[str, Any]) -> str:
        """Where this client reaches ``node``: PYBOX_SWARM_NODE_HOSTS, else its address."""
        address = str((node.get("Status") or {}).get("Addr") or "")
        if address in ("", "0.0.0.0", "::"):  # a manager may report no address of its own
            manager = str((node.get("ManagerStatus") or {}).get("Addr") or "")
            address = manager.rsplit(":", 1)[0].strip("[]") if manager else ""
        hostname = str((node.get("Description") or {}).get("Hostname") or "")
        overrides = self._node_hosts()
        for key in (str(node.get("ID", "")), hostname, address):
            if key and key in overrides:
                return overrides[key]
        if not address:
            raise BackendError(f"swarm node {hostname or str(node.get('ID', ''))[:12]} reports no address: set "
                               f"{NODE_HOSTS_ENV}={hostname or node.get('ID')}=HOST")
        return address

    def _node_engine(self, node_id: str) -> _NodeEngine:
        with self._nodes_lock:
            engine = self._node_engines.get(node_id)
        if engine is not None:
            return engine
        host = self._node_host(self._node(node_id))
        url = f"tcp://{'[' + host + ']' if ':' in host else host}:{self._node_port()}"
        if url.removeprefix("tcp://") == self.docker_host.removeprefix("tcp://").rstrip("/"):
            api = self.api  # the manager runs it: one connection
        else:
            kwargs = docker.utils.kwargs_from_env()
            kwargs["base_url"] = url
            try:
                api = _APIClient(timeout=60, **kwargs)
            except docker.errors.DockerException as exc:
                raise BackendUnavailable(f"cannot reach the engine of swarm node {host} at {url}: {_explain(exc)}",
                                         NODE_HINT) from exc
        engine = _NodeEngine(url, api)
        with self._nodes_lock:
            self._node_engines.setdefault(node_id, engine)
            return self._node_engines[node_id]

    # -- placement ---------------------------------------------------------------------------

    def _constraints(self) -> list[str]:
        text = os.environ.get(CONSTRAINTS_ENV, "").strip()
        constraints = [c.strip() for c in text.split(",") if c.strip()]
        for constraint in constraints:
            if not re.fullmatch(r"[\w.\-/]+\s*(==|!=)\s*\S.*", constraint):
                raise InvalidArgument(f"{CONSTRAINTS_ENV}: {constraint!r} is not a placement constraint such as "
                                      f"'node.labels.pool==sandbox' or 'node.role!=manager'")
        return constraints

    def eligible_nodes(self) -> list[dict[str, Any]]:
        """The nodes a sandbox may be placed on: Ready, Active, matching the constraints."""
        constraints = self._constraints()
        nodes = [n for n in self._nodes()
                 if (n.get("Status") or {}).get("State") == "ready"
                 and (n.get("Spec") or {}).get("Availability") == "active"
                 and all(_matches(n, c) for c in constraints)]
        if not nodes:
            where = f" matching {CONSTRAINTS_ENV}={','.join(constraints)}" if constraints else ""
            raise BackendError(f"the swarm at {self.docker_host} has no Ready and Active node{where} "
                               f"(`docker node ls` on a manager lists them)")
        return nodes

    # -- lifecycle -----------------------------------------------------------------------------

    def engine_host(self) -> str | None:
        self._check_usable()
        return self.remote_host

    def adjust_plan(self, plan: LaunchPlan) -> None:
        self._check_usable()
        # Host-mode ports are published on every address of the node; nothing else exists.
        plan.ports = [dataclasses.replace(p, host_ip="0.0.0.0") for p in plan.ports]
        if plan.env.get(NETWORK_ENV) == "default":
            # Code may run on any node: keep it off all of them (and the manager).
            found: set[str] = set(launch.host_addresses(self.remote_host))
            for node in self._nodes():
                with contextlib.suppress(BackendError):
                    found.update(launch.host_addresses(self._node_host(node)))
            plan.env[NETWORK_ENV] = network_policy_value("default", tuple(sorted(found)))

    def _refuse_what_a_service_cannot_do(self, plan: LaunchPlan) -> None:
        """A service has no field for these; starting without them would ignore the plan."""
        if plan.binds:
            raise UnsupportedOperation(f"the swarm backend cannot bind-mount host paths: {BINDS_REFUSED}")
        if len(plan.ports) != 1 or plan.ports[0].container_port != plan.gateway_port:
            raise UnsupportedOperation("the swarm backend publishes exactly one port, the kernel gateway's "
                                       f"({plan.gateway_port}); the plan asks for {len(plan.ports)}")
        if plan.ports[0].host_ip not in ("0.0.0.0", ""):
            raise UnsupportedOperation(f"the swarm backend cannot publish on one address "
                                       f"({plan.ports[0].host_ip}): host-mode ports of a service are "
                                       f"published on all of its node's addresses")
        default_swap = None if plan.memory_bytes is None else 2 * plan.memory_bytes
        if plan.memory_swap_bytes not in (None, default_swap):
            raise UnsupportedOperation("the swarm backend cannot set a service's swap (it gets the engine's "
                                       "default, as much swap as memory)")
        if plan.no_new_privileges and not plan.command:
            raise UnsupportedOperation("the swarm backend sets no-new-privileges by starting the command "
                                       "through setpriv, and the plan names no command")

    def service_spec(self, plan: LaunchPlan, name: str) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_service`` for ``plan``."""
        command = list(plan.command or [])
        if plan.no_new_privileges:
            command = [SETPRIV, "--no-new-privs", "--", *command]
        # tmpfs as the engine mounts them (mode 1777); the image's init gives each its owner.
        mounts = [docker.types.Mount(target=s.path, source=None, type="tmpfs", tmpfs_size=s.size)
                  for s in plan.scratch]
        mounts += [docker.types.Mount(target=path, source=None, type="volume") for path in plan.volumes]
        container = docker.types.ContainerSpec(
            image=plan.image,
            # The service's id (the sandbox's id), as a Docker container's hostname is its id's start.
            hostname="{{.Service.ID}}",
            command=command or None,
            env=dict(plan.env),
            user=plan.user,
            labels=dict(plan.labels),
            mounts=mounts or None,
            read_only=plan.read_only,
            cap_add=list(plan.cap_add) or None,
            cap_drop=list(plan.cap_drop) or None,
            # SIGKILL at once when the service goes: nothing in a sandbox needs a grace period.
            stop_signal="SIGKILL",
            stop_grace_period=0,
        )
        if plan.extra_hosts:  # swarm's format, "ADDRESS NAME" (a name may have several addresses)
            container["Hosts"] = [f"{address} {name}" for name, address in plan.extra_hosts]
        nano_cpus = int(plan.cpus * 1e9) if plan.cpus else None
        reserve = os.environ.get(RESERVATIONS_ENV, "").strip().lower() != "none"
        resources = docker.types.Resources(cpu_limit=nano_cpus, mem_limit=plan.memory_bytes,
                                           cpu_reservation=nano_cpus if reserve else None,
                                           mem_reservation=plan.memory_bytes if reserve else None)
        if plan.pids is not None:
            resources.setdefault("Limits", {})["Pids"] = plan.pids
        log_driver = None if plan.log_max_bytes is None else docker.types.DriverConfig(
            "json-file", {"max-size": str(plan.log_max_bytes), "max-file": str(plan.log_max_files)})
        port = plan.ports[0]
        published: dict[str, Any] = {"Protocol": "tcp", "TargetPort": port.container_port, "PublishMode": "host"}
        if port.host_port is not None:
            published["PublishedPort"] = port.host_port
        constraints = self._constraints()
        task = docker.types.TaskTemplate(
            container_spec=container,
            resources=resources,
            restart_policy=docker.types.RestartPolicy(condition="none"),
            placement=docker.types.Placement(constraints=constraints) if constraints else None,
            log_driver=log_driver,
        )
        return {
            "task_template": task,
            "name": name,
            "labels": dict(plan.labels),
            "mode": docker.types.ServiceMode("replicated", replicas=1),
            "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr", ports=[published]),
        }

    def start(self, plan: LaunchPlan) -> str:
        self._refuse_what_a_service_cannot_do(plan)
        timeout = self._start_timeout()
        self._require_image(plan.image)
        name = plan.name or f"pybox-{secrets.token_hex(6)}"
        with self._errors("create the sandbox's service"):
            try:
                created = self.api.create_service(**self.service_spec(plan, name))
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise BackendError(f"a swarm service named {name!r} exists already; choose another name") \
                        from exc
                if exc.status_code == 400 and "constraint" in str(exc.explanation or "").lower():
                    raise BackendError(f"the swarm refused the placement constraints {CONSTRAINTS_ENV}="
                                       f"{os.environ.get(CONSTRAINTS_ENV, '')}: {exc.explanation}") from exc
                raise
        service_id = str(created["ID"])
        try:
            self._wait_running(service_id, plan, timeout)
        except BaseException:
            self.remove(service_id)
            raise
        return service_id

    def _require_image(self, image: str) -> None:
        """ImageNotFound unless every eligible node has ``image``: swarm would place the
        task on one that lacks it, which rejects it (and restart condition none ends it)."""
        for node in self.eligible_nodes():
            engine = self._node_engine(str(node["ID"]))
            missing = engine.image_missing(image)
            if missing is not None:
                where = (node.get("Description") or {}).get("Hostname") or self._node_host(node)
                raise ImageNotFound(image, f"swarm node {where} ({self._node_host(node)}) does not have it: build "
                                           f"it with `pybox build` on one engine and load it into every node's "
                                           f"engine (`docker save | docker load`), or push it to a registry the "
                                           f"nodes reach and use that name") from missing

    @staticmethod
    def _start_timeout() -> float:
        text = os.environ.get(START_TIMEOUT_ENV, "").strip()
        try:
            timeout = float(text) if text else DEFAULT_START_TIMEOUT
        except ValueError as exc:
            raise InvalidArgument(f"{START_TIMEOUT_ENV}={text!r} is not a number of seconds") from exc
        if not timeout > 0:
            raise InvalidArgument(f"{START_TIMEOUT_ENV}={text!r} is not a positive number of seconds")
        return timeout

    def _wait_running(self, service_id: str, plan: LaunchPlan, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            task = self._task(service_id)
            if task is not None:
                if task.state == "running" and plan.gateway_port in task.published:
                    return
                if task.state in _ENDED:
                    if task.container_id and task.exit_code is not None and not _start_failure(task):
                        # Its container ran and exited (an init that refused to start, say):
                        # as on Docker, the caller finds it stopped and reports why, with its logs.
                        return
                    self._raise_ended(service_id, task, plan)
                if task.state == "pending" and "port" in task.error and "in use" in task.error:
                    # every eligible node has the port taken: waiting would not free it
                    raise BackendError(f"port {plan.ports[0].host_port} is already in use on every node the "
                                       f"sandbox may run on ({task.error}); choose another port or leave it "
                                       f"unset so the engine picks a free one")
            if time.monotonic() > deadline:
                what = f"{task.state}: {task.error or task.message}" if task else "no task made"
                raise BackendError(f"the sandbox's swarm service {service_id[:12]} got no running task within "
                                   f"{timeout:g} s ({what}); `docker service ps --no-trunc` on a manager says "
                                   f"why: a task pending on 'no suitable node' needs free memory or CPUs on a "
                                   f"node, or other constraints ({CONSTRAINTS_ENV}, {RESERVATIONS_ENV}=none)")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.3)

    def _raise_ended(self, service_id: str, task: _Task, plan: LaunchPlan) -> None:
        text = task.error or task.message
        if _missing_image(text):
            raise ImageNotFound(plan.image, "the swarm node that got the task does not have it: build it with "
                                            "`pybox build` on one engine and load it into every node's engine") \
                from BackendError(text)
        if _port_taken(text):
            port = plan.ports[0].host_port
            raise BackendError(f"port {port} is already in use on the node the swarm chose; choose another "
                               f"port or leave it unset so the engine picks a free one") from BackendError(text)
        exit_code = f", exit code {task.exit_code}" if task.exit_code is not None else ""
        raise BackendError(f"the sandbox's swarm task ended before it ran ({task.state}{exit_code}: {text})")

    def _task(self, service_id: str) -> _Task | None:
        """The service's latest task, or None when it has none (yet, or any more)."""
        with self._errors("list the service's tasks"):
            try:
                tasks = self.api.tasks(filters={"service": service_id})
            except docker.errors.NotFound:
                return None
        tasks = [t for t in tasks if t.get("ServiceID") == service_id]
        if not tasks:
            return None
        latest = max(tasks, key=lambda t: ((t.get("Meta") or t.get("Version") or {}).get("Index", 0),
                                           str(t.get("CreatedAt", ""))))
        status = latest.get("Status") or {}
        container = status.get("ContainerStatus") or {}
        ports = (status.get("PortStatus") or {}).get("Ports") or []
        exit_code = container.get("ExitCode")
        return _Task(
            node_id=str(latest.get("NodeID") or ""),
            state=str(status.get("State") or ""),
            error=str(status.get("Err") or ""),
            message=str(status.get("Message") or ""),
            container_id=str(container.get("ContainerID") or ""),
            exit_code=exit_code if isinstance(exit_code, int) and status.get("State") in _ENDED else None,
            published={int(p["TargetPort"]): int(p["PublishedPort"]) for p in ports
                       if p.get("PublishedPort") and p.get("TargetPort")},
        )

    def _service(self, service_id: str) -> dict[str, Any] | None:
        with self._errors("inspect the sandbox's service"):
            try:
                return self.api.inspect_service(service_id)  # type: ignore[no-any-return]
            except docker.errors.NotFound:
                return None

    def _located(self, service_id: str, action: str) -> tuple[_NodeEngine, str]:
        """The engine of the node running ``service_id``'s container, and the container."""
        task = self._task(service_id)
        if task is None or not task.node_id or not task.container_id:
            if self._service(service_id) is None:
                raise BackendError(f"cannot {action}: sandbox service {service_id[:12]} no longer exists") \
                    from docker.errors.NotFound(f"service {service_id}")
            raise BackendError(f"cannot {action}: sandbox service {service_id[:12]} has no container "
                               f"({task.state if task else 'no task'})")
        return self._node_engine(task.node_id), task.container_id

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        task = self._task(container_id)
        if task is None or plan.gateway_port not in task.published:
            raise BackendError(f"sandbox service {container_id[:12]} publishes no port for the kernel gateway "
                               f"({task.state if task else 'no task'})")
        return Endpoint(self._node_host(self._node(task.node_id)), task.published[plan.gateway_port])

    def inspect(self, container_id: str) -> ContainerState:
        task = self._task(container_id)
        if task is None:
            if self._service(container_id) is None:
                return ContainerState(running=False, status="removed")
            return ContainerState(running=False, status="pending", error="no task yet")
        if task.container_id and task.node_id:
            # The node's engine knows what the task summary does not (OOMKilled, exact status).
            with contextlib.suppress(BackendError):
                info = self._node_engine(task.node_id).inspect_info(task.container_id)
                if info is not None:
                    return state_from_inspect(info)
        running = task.state == "running"
        return ContainerState(running=running, status=task.state, exit_code=task.exit_code,
                              error="" if running else (task.error or ""))

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        service = self._service(container_id)
        if service is None:
            return None
        return dict((service.get("Spec") or {}).get("Labels") or {})

    def logs(self, container_id: str, tail: int = 50) -> str:
        try:
            engine, container = self._located(container_id, "read the sandbox's logs")
        except BackendError:
            return ""
        return engine.logs(container, tail)

    def remove(self, container_id: str) -> None:
        task = self._task(container_id)
        with self._errors("remove the sandbox's service"):
            try:
                self.api.remove_service(container_id)
            except docker.errors.NotFound:
                pass
        if task is None or not task.container_id or not task.node_id:
            return
        # The node's agent removes the container in its own time, SIGKILL first (the
        # service's stop signal); remove it (and its /app volume) now, so that remove()
        # returning means the sandbox is gone.
        try:
            engine = self._node_engine(task.node_id)
            engine.remove(task.container_id)
            deadline = time.monotonic() + 30
            while engine.inspect_info(task.container_id) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
                engine.remove(task.container_id)
        except BackendError:
            if self._service(container_id) is not None:
                raise
            # the node is unreachable: the service is gone, its agent will reap the container

    def list_containers(self, labels: dict[str, str]) -> list[str]:
        with self._errors("list services"):
            found = self.api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [str(s["ID"]) for s in found]

    # -- files -------------------------------------------------------------------------------------

    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        engine, container = self._located(container_id, f"copy files into {path}")
        engine.put_archive(container, path, data)  # paused meanwhile, as on Docker

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        engine, container = self._located(container_id, f"copy {path} out of the sandbox")
        return engine.get_archive(container, path)

    # -- images ------------------------------------------------------------------------------------

    def image_exists(self, image: str) -> bool:
        return all(self._node_engine(str(n["ID"])).image_missing(image) is None for n in self.eligible_nodes())

    def image_labels(self, image: str) -> dict[str, str] | None:
        labels: dict[str, str] | None = None
        for node in self.eligible_nodes():
            found = self._node_engine(str(node["ID"])).image_labels(image)
            if found is None:
                return None
            labels = found if labels is None else labels
        return labels

    def pull_image(self, image: str, progress: PullProgressCallback | None = None) -> None:
        for node in self.eligible_nodes():
            self._node_engine(str(node["ID"])).pull_image(image, progress)

    # Images live on each node's engine: build (tag, import) on one engine, then load the
    # image into every node or push it to a registry they reach. The base class refuses;
    # `pybox build --backend swarm` says so before it makes a base image.
    build_image = Backend.build_image
    tag_image = Backend.tag_image
    import_image = Backend.import_image

    # -- engine ----------------------------------------------------------------------------------------

    def ping(self) -> None:
        with self._errors("answer a ping"):
            self.api.ping()
            info = self.api.info()
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise BackendUnavailable(f"the engine at {self.docker_host} is not a swarm manager (swarm state "
                                     f"{swarm.get('LocalNodeState') or 'inactive'})", NOT_A_MANAGER_HINT)

    def close(self) -> None:
        with self._nodes_lock:
            engines, self._node_engines = list(self._node_engines.values()), {}
        for engine in engines:
            if engine._api is not self._api:
                engine.close()
        super().close()


class _NodeEngine(RemoteDockerBackend):
    """The engine of one swarm node, for what only it can do with a task's container:
    Docker's own pause-then-extract upload, download, logs, inspect, images. Not a
    registered backend (no name): a helper of SwarmBackend."""

    name = "swarm"

    def __init__(self, url: str, api: docker.APIClient) -> None:
        super().__init__()
        self.docker_host = url
        self._api = api

    def _hint(self, exc: BaseException) -> str:
        text = str(exc)
        if "SSL" in text or "certificate" in text.lower():
            return "The TLS handshake with the node's engine failed. " + NODE_HINT
        return NODE_HINT

    def inspect_info(self, container_id: str) -> dict[str, Any] | None:
        return self._inspect(container_id)

    def image_missing(self, image: str) -> docker.errors.NotFound | None:
        """None when the node has ``image``, else the engine's NotFound (to chain)."""
        with self._errors(f"inspect image {image}"):
            try:
                self.api.inspect_image(image)
                return None
            except docker.errors.NotFound as exc:
                return exc

    def remove(self, container_id: str) -> None:
        with self._errors("remove the sandbox container"):
            try:
                self.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress (the node's agent)
                    raise


def _missing_image(text: str) -> bool:
    return "No such image" in text or "image not found" in text.lower()


def _port_taken(text: str) -> bool:
    return "address already in use" in text or "port is already allocated" in text


def _start_failure(task: _Task) -> bool:
    """Whether the task ended because its container could not start (not because it ran and exited)."""
    text = task.error or task.message
    return _missing_image(text) or _port_taken(text)


# -- placement constraints, as swarm evaluates them (for image_exists: which nodes count) --------


def _matches(node: Mapping[str, Any], constraint: str) -> bool:
    """Whether ``node`` satisfies ``constraint`` (``KEY==VALUE`` or ``KEY!=VALUE``, the
    keys swarm knows); an unknown key counts as matching (the swarm judges it)."""
    match = re.fullmatch(r"\s*([\w.\-/]+)\s*(==|!=)\s*(.*?)\s*", constraint)
    if not match:
        return True
    key, operator, wanted = match.groups()
    description = node.get("Description") or {}
    spec = node.get("Spec") or {}
    value: str | None
    lowered = key.lower()
    if lowered == "node.id":
        value = str(node.get("ID", ""))
    elif lowered == "node.hostname":
        value = str(description.get("Hostname", ""))
    elif lowered == "node.role":
        value = str(spec.get("Role", ""))
    elif lowered == "node.platform.os":
        value = str((description.get("Platform") or {}).get("OS", ""))
    elif lowered == "node.platform.arch":
        value = str((description.get("Platform") or {}).get("Architecture", ""))
    elif lowered.startswith("node.labels."):
        value = (spec.get("Labels") or {}).get(key[len("node.labels."):])
    elif lowered.startswith("engine.labels."):
        value = ((description.get("Engine") or {}).get("Labels") or {}).get(key[len("engine.labels."):])
    else:
        return True
    equal = value is not None and value.lower() == wanted.lower() if not lowered.startswith(
        ("node.labels.", "engine.labels.")) else value == wanted
    return equal if operator == "==" else not equal

