"""The Kubernetes backend: one pod per sandbox, through the official ``kubernetes``
client, against the cluster the kubeconfig names (as kubectl finds it: ``KUBECONFIG``,
``~/.kube/config``, else the in-cluster service account).

- The pod runs the plan exactly: the image's init as root with only the plan's
  capabilities, no privilege escalation, the runtime's default seccomp filter, a
  read-only root with memory-backed scratch, requests = limits (Guaranteed QoS when
  memory and CPU are both limited), no service account token. Its environment (the
  gateway token, its TLS key) is in a Secret of the same name, never in the pod spec.
- Ready is the pod's readiness probe on the gateway's port, watched, not slept for.
- The gateway is reached through the API server (a local listener whose connections
  each get a port-forward stream: nothing but a kubeconfig needed), or at the pod's IP
  when pybox runs inside the cluster (``PYBOX_K8S_CONNECT``). Its traffic is TLS with
  a certificate made per sandbox and pinned (``gateway_tls``), and needs the token.
- Files move through ``exec`` + ``tar``, run in the pod as the sandbox user with no
  capabilities and an empty environment: an upload can only write where the sandbox's
  code could, a download only read what it could.
- Owner labels: Kubernetes labels where their values fit, all of them exactly in an
  annotation; ``list_containers`` selects on the first and checks the second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import secrets
import select
import threading
import time
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urlparse

import urllib3.exceptions
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import create_websocket, get_websocket_url
from websocket import ABNF, WebSocketException

from pybox.backend import ALL_FEATURES, BINDS, PIDS_LIMIT, Backend, ContainerState, Endpoint, LaunchPlan
from pybox.errors import (
    BackendError,
    BackendUnavailable,
    ImageNotFound,
    PyboxError,
    StartupTimeout,
    UnsupportedOperation,
)
from pybox.image_contract import SANDBOX_GID, SANDBOX_UID
from pybox.pull import pull_error, registry_of
from pybox.spec import PullProgressCallback
from pybox_kubernetes.config import (
    CONNECT_ENV,
    IN_CLUSTER_NAMESPACE,
    POD_PIDS_LIMIT_ENV,
    PULL_POLICY_ENV,
    Settings,
)
from pybox_kubernetes.forward import PROTOCOL, PortForwarder, PortStream
from pybox_kubernetes.manifests import (
    CONTAINER,
    LABELS_ANNOTATION,
    check_pids,
    label_selector,
    network_policy_manifest,
    owner_reference,
    pod_manifest,
    secret_manifest,
)

log = logging.getLogger("pybox.kubernetes")

SETUP_HINT = (
    "The kubernetes backend finds the cluster as kubectl does: the file(s) KUBECONFIG names, else "
    "~/.kube/config, else the service account of the pod it runs in. Check `kubectl get pods` works "
    "with the same settings"
)
RBAC_HINT = (
    "The account needs, in the sandboxes' namespace: pods (create, get, list, watch, delete), "
    "pods/exec, pods/portforward and pods/log (create/get), secrets (create, patch, delete) and "
    "networkpolicies (create, delete); and nodes (get, list) cluster-wide to check images. "
    "deploy/kubernetes/rbac.yaml in pybox's repository is a ready manifest"
)
BINDS_REFUSED = (
    "pods run on cluster nodes that share no filesystem with this machine. Copy files in and out "
    "instead: Sandbox.upload(local, remote) and Sandbox.download(remote, local) move them through "
    "exec + tar; data that must live on the cluster needs a volume, which pybox does not mount"
)
#: Bytes of a command's stderr (or of the error channel) kept: the sandbox writes them.
MAX_ERROR_TEXT = 4096
#: Bytes of the pod's log read at most.
MAX_LOG_BYTES = 1 << 20
#: Size of the frames sent into an exec's stdin.
FRAME = 32 << 10
#: Waiting reasons that will not pass by themselves.
#: The kubelet's default --node-status-max-images: a node's status lists at most this many.
NODE_STATUS_MAX_IMAGES = 50
_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "ImageInspectError", "RegistryUnavailable")
#: Drop to the sandbox user with no capabilities and an empty environment (the
#: container's holds the gateway token): what an exec'd command then runs as.
AS_SANDBOX_USER = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "/usr/bin/setpriv",
                   f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--no-new-privs", "--"]


class KubernetesBackend(Backend):
    name = "kubernetes"
    description = "Kubernetes cluster, one pod per sandbox (KUBECONFIG, ~/.kube/config or in-cluster)"
    # A process limit: only the cluster's per pod (kubelet --pod-max-pids); adjust_plan
    # accepts a plan's when PYBOX_K8S_POD_PIDS_LIMIT says that one is as tight.
    features = ALL_FEATURES - {BINDS, PIDS_LIMIT}
    unsupported_hints = {BINDS: BINDS_REFUSED,
                         PIDS_LIMIT: f"the cluster enforces one limit per pod; set {POD_PIDS_LIMIT_ENV} to it, or "
                                     f"pass limits=pybox.Limits(pids=None)"}
    # Port-forwarded through the API server, or straight to a pod IP across the cluster
    # network: either way the gateway's traffic is encrypted and pinned.
    gateway_tls = True

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._configuration: client.Configuration | None = None
        self._namespace: str | None = None
        self._api: client.ApiClient | None = None
        self._lock = threading.Lock()
        self._forwarders: dict[str, PortForwarder] = {}

    # -- connection --------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_environment()
        return self._settings

    def _load(self) -> None:
        with self._lock:
            if self._configuration is not None:
                return
            settings = self.settings
            configuration = client.Configuration()
            namespace = None
            explicit = os.environ.get("KUBECONFIG", "").strip()
            default_file = os.path.expanduser("~/.kube/config")
            if explicit or os.path.exists(default_file):
                what = f"KUBECONFIG={explicit}" if explicit else default_file
                try:
                    config.load_kube_config(client_configuration=configuration)
                    _, active = config.list_kube_config_contexts()
                    namespace = (active or {}).get("context", {}).get("namespace")
                except (ConfigException, OSError, ValueError, TypeError) as exc:
                    raise BackendUnavailable(f"cannot use the kubeconfig {what}: {exc}", SETUP_HINT) from exc
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except ConfigException as exc:
                    raise BackendUnavailable(f"no kubeconfig found (KUBECONFIG unset, no {default_file}) and not "
                                             f"running in a pod: {exc}", SETUP_HINT) from exc
                with contextlib.suppress(OSError):
                    namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or None
            self._namespace = settings.namespace or namespace or "default"
            self._configuration = configuration
            self._api = client.ApiClient(configuration)

    @property
    def namespace(self) -> str:
        self._load()
        assert self._namespace is not None
        return self._namespace

    @property
    def core(self) -> client.CoreV1Api:
        self._load()
        return client.CoreV1Api(self._api)

    def _own_core(self) -> client.CoreV1Api:
        """A client of its own, for websocket calls: the library's ``stream`` swaps the
        ApiClient's transport while it runs, which must not touch concurrent REST calls."""
        self._load()
        return client.CoreV1Api(client.ApiClient(self._configuration))

    @property
    def server(self) -> str:
        self._load()
        assert self._configuration is not None
        return str(self._configuration.host)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate the client's errors into pybox errors."""
        try:
            yield
        except PyboxError:
            raise
        except ApiException as exc:
            if exc.status in (401, 403):
                raise BackendUnavailable(f"the Kubernetes API server at {self.server} refused to {action} in "
                                         f"namespace {self.namespace}: {_reason(exc)}", RBAC_HINT) from exc
            handshake = str(exc.reason or "")
            if (exc.status == 0 or exc.status is None) and ("status 403" in handshake or "status 401" in handshake):
                raise BackendUnavailable(f"the Kubernetes API server at {self.server} refused to {action} in "
                                         f"namespace {self.namespace}: {handshake}", RBAC_HINT) from exc
            if exc.status == 0 or exc.status is None:
                raise BackendUnavailable(f"cannot reach the Kubernetes API server at {self.server} while trying "
                                         f"to {action}: {_reason(exc)}", SETUP_HINT) from exc
            raise BackendError(f"Kubernetes could not {action}: {_reason(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError, WebSocketException) as exc:
            raise BackendUnavailable(f"cannot reach the Kubernetes API server at {self.server} while trying to "
                                     f"{action}: {exc}", SETUP_HINT) from exc

    # -- lifecycle -------------------------------------------------------------------

    def engine_host(self) -> str | None:
        """The API server's host: the default network policy keeps sandboxes off it (the
        nodes and pod networks are in private ranges, blocked anyway)."""
        return urlparse(self.server).hostname or None

    def adjust_plan(self, plan: LaunchPlan) -> None:
        # No per-pod process limit in Kubernetes: accepted only when the cluster's own
        # per-pod limit is at least as tight (else UnsupportedOperation), and then taken out
        # of the plan, since there is nothing to set (core refuses a plan with pids on a
        # backend without PIDS_LIMIT).
        check_pids(plan, self.settings)
        plan.pids = None

    def start(self, plan: LaunchPlan) -> str:
        settings = self.settings
        check_pids(plan, settings)
        name = f"pybox-{secrets.token_hex(6)}"
        pod = pod_manifest(name, plan, settings)
        policy = network_policy_manifest(name, plan) if settings.network_policies else None
        core, namespace = self.core, self.namespace
        with self._errors("create the sandbox's secret"):
            core.create_namespaced_secret(namespace, secret_manifest(name, plan))
        try:
            with self._errors("create the sandbox pod"):
                created = core.create_namespaced_pod(namespace, pod)
            uid = created.metadata.uid
            with self._errors("give the sandbox's secret to its pod"):
                core.patch_namespaced_secret(name, namespace,
                                             {"metadata": {"ownerReferences": [owner_reference(name, uid)]}})
            if policy is not None:
                policy["metadata"]["ownerReferences"] = [owner_reference(name, uid)]
                with self._errors("create the sandbox's NetworkPolicy"):
                    client.NetworkingV1Api(self._api).create_namespaced_network_policy(namespace, policy)
            self._wait_ready(name, plan, created.metadata.resource_version, time.monotonic() + settings.start_timeout)
        except BaseException:
            self.remove(name)
            raise
        return name

    def _wait_ready(self, name: str, plan: LaunchPlan, version: str | None, deadline: float) -> None:
        """Until the readiness probe passes (or the container ended: core then reports it
        with its logs). Raise for what will not pass by itself (image missing or not
        pullable), and at the deadline with what the cluster says (unschedulable...)."""
        core, namespace = self.core, self.namespace
        last: Any = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartupTimeout(f"pod {name} in namespace {namespace} was not ready within "
                                     f"{self.settings.start_timeout:g} s ({_pending_reason(last)}; "
                                     f"PYBOX_K8S_START_TIMEOUT sets the wait)", self.logs(name))
            watcher = watch.Watch()
            try:
                with self._errors("watch the sandbox pod"):
                    for event in watcher.stream(core.list_namespaced_pod, namespace,
                                                field_selector=f"metadata.name={name}",
                                                resource_version=version,
                                                timeout_seconds=max(1, min(60, int(remaining) + 1)),
                                                _request_timeout=max(5, min(70, remaining + 10))):
                        pod = event["object"]
                        if event["type"] == "ERROR":
                            version = None  # too old: read afresh
                            break
                        if event["type"] == "DELETED":
                            raise BackendError(f"pod {name} was deleted while starting")
                        last = pod
                        version = pod.metadata.resource_version
                        if self._settled(pod, plan):
                            return
                        if time.monotonic() > deadline:
                            break
            finally:
                watcher.stop()
            if version is None:
                with self._errors("read the sandbox pod"):
                    try:
                        last = core.read_namespaced_pod(name, namespace)
                    except ApiException as exc:
                        if exc.status == 404:
                            raise BackendError(f"pod {name} was deleted while starting") from exc
                        raise
                version = last.metadata.resource_version
                if self._settled(last, plan):
                    return

    def _settled(self, pod: Any, plan: LaunchPlan) -> bool:
        status = pod.status
        if status is None:
            return False
        if status.phase in ("Succeeded", "Failed"):
            return True
        for condition in status.conditions or []:
            if condition.type == "Ready" and condition.status == "True":
                return True
        for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
            state = container.state
            if state is None:
                continue
            if state.terminated is not None and container.name == CONTAINER:
                return True
            if state.terminated is not None and state.terminated.exit_code:
                return True  # the prepare step failed: the pod fails; core reports it with its logs
            waiting = state.waiting
            if waiting is not None and waiting.reason in _PULL_FAILURES:
                message = waiting.message or waiting.reason
                cause = BackendError(f"{waiting.reason}: {message}")
                if waiting.reason == "ErrImageNeverPull":
                    where = ("on no node the pod may run on; with imagePullPolicy Never (the default for an image "
                             "without a registry) it must be there already: build it with `pybox build` and load "
                             f"it into the nodes' container runtime, push it to a registry, or set {PULL_POLICY_ENV}")
                    raise ImageNotFound(plan.image, where) from cause
                if waiting.reason == "InvalidImageName":
                    raise ImageNotFound(plan.image, f"the cluster refuses the name: {message}") from cause
                raise pull_error(plan.image, message) from cause
            # CreateContainerConfigError and the like: the kubelet retries them (a secret cache
            # that timed out under load, say); they are reported at the deadline if they last.
        return False

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        pod = self._read(container_id)
        if pod is None:
            raise BackendError(f"pod {container_id} no longer exists")
        if pod.status is None or pod.status.phase != "Running":
            raise BackendError(f"pod {container_id} is not running ({_pending_reason(pod)})")
        wanted = plan.published(plan.gateway_port).host_port
        if self._connect_mode() == "pod-ip":
            if wanted is not None:
                raise UnsupportedOperation(f"a sandbox reached at its pod's IP listens on the pod's port "
                                           f"{plan.gateway_port}, not on port {wanted}: leave the port unset, or "
                                           f"set {CONNECT_ENV}=port-forward to get a local port of your choice")
            if not pod.status.pod_ip:
                raise BackendError(f"pod {container_id} has no IP address yet")
            return Endpoint(pod.status.pod_ip, plan.gateway_port)
        with self._lock:
            forwarder = self._forwarders.get(container_id)
            if forwarder is None:
                try:
                    forwarder = PortForwarder(lambda: self._open_port_forward(container_id, plan.gateway_port),
                                              container_id, wanted or 0)
                except OSError as exc:
                    raise BackendError(f"port {wanted} on 127.0.0.1 is already in use; choose another port or "
                                       f"leave it unset so that a free one is picked") from exc
                self._forwarders[container_id] = forwarder
        return Endpoint(forwarder.host, forwarder.port)

    def _connect_mode(self) -> str:
        mode = self.settings.connect
        if mode == "auto":
            # Inside a pod (the service variables the kubelet sets), pod IPs are reachable.
            return "pod-ip" if os.environ.get("KUBERNETES_SERVICE_HOST") else "port-forward"
        return mode

    def _open_port_forward(self, name: str, port: int) -> PortStream:
        """A websocket to the pod's portforward subresource for ``port``, authenticated as
        the REST calls are (the kubernetes client's ``create_websocket`` applies the
        kubeconfig's TLS settings and proxy)."""
        self._load()
        configuration = self._configuration
        assert configuration is not None
        headers = {"sec-websocket-protocol": PROTOCOL}
        token = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["authorization"] = token
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/{quote(name, safe='')}/portforward"
        url = get_websocket_url(f"{configuration.host}{path}", [("ports", str(port))])
        return PortStream(create_websocket(configuration, url, headers), name)

    def _read(self, name: str) -> Any:
        with self._errors("read the sandbox pod"):
            try:
                return self.core.read_namespaced_pod(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def inspect(self, container_id: str) -> ContainerState:
        return pod_state(self._read(container_id))

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        pod = self._read(container_id)
        if pod is None:
            return None
        return _labels_of(pod)

    def logs(self, container_id: str, tail: int = 50) -> str:
        with self._errors("read the pod's log"):
            try:
                text = self.core.read_namespaced_pod_log(container_id, self.namespace, container=CONTAINER,
                                                         tail_lines=max(1, tail), limit_bytes=MAX_LOG_BYTES)
            except ApiException as exc:
                if exc.status in (400, 404):  # gone, or no container started yet
                    return ""
                if exc.status is not None and exc.status >= 500:  # the node did not answer: say so, do not mask
                    return f"(the pod's log could not be read: {_reason(exc)})"
                raise
        return text if isinstance(text, str) else str(text)

    def remove(self, container_id: str) -> None:
        with self._lock:
            forwarder = self._forwarders.pop(container_id, None)
        if forwarder is not None:
            forwarder.close()
        core, namespace = self.core, self.namespace
        body = client.V1DeleteOptions(grace_period_seconds=0, propagation_policy="Background")
        calls = [("delete the sandbox pod", lambda: core.delete_namespaced_pod(container_id, namespace, body=body)),
                 ("delete the sandbox's secret",
                  lambda: core.delete_namespaced_secret(container_id, namespace, body=body))]
        if self.settings.network_policies:
            calls.append(("delete the sandbox's NetworkPolicy", lambda: client.NetworkingV1Api(
                self._api).delete_namespaced_network_policy(container_id, namespace, body=body)))
        for action, call in calls:
            with self._errors(action):
                try:
                    call()
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def list_containers(self, labels: dict[str, str]) -> list[str]:
        selector, _ = label_selector(labels)  # the rest: checked against the annotation below
        with self._errors("list the sandbox pods"):
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector or None)
        found = []
        for pod in pods.items:
            recorded = _labels_of(pod)
            if recorded is not None and all(recorded.get(k) == v for k, v in labels.items()):
                found.append(pod.metadata.name)
        return found

    # -- files -----------------------------------------------------------------------

    def put_archive(self, container_id: str, path: str, data: Iterable[bytes]) -> None:
        # tar as the sandbox user: whatever the sandbox's code does to the paths meanwhile
        # (a directory swapped for a link), nothing is written where it could not write.
        command = [*AS_SANDBOX_USER, "/usr/bin/tar", "-x", "-f", "-", "-C", path]
        with self._errors(f"copy files into {path}"):
            session = _Exec(self._own_core(), self.namespace, container_id, command, stdin=True)
            try:
                for chunk in data:
                    session.send(chunk)
                session.wait()
            finally:
                session.close()
        if not session.succeeded:
            raise BackendError(f"copying into {path} in pod {container_id} failed: {session.failure()}") \
                from session.cause()

    def get_archive(self, container_id: str, path: str) -> Iterator[bytes]:
        parent, base = posixpath.split(posixpath.normpath(path))
        if not base:
            parent, base = "/", "."
        # A missing path: no archive at all (tar would still write an empty one), and the words below.
        script = ('cd "$1" && { [ -e "$2" ] || [ -L "$2" ]; } || { echo "$1/$2: No such file" >&2; exit 2; }; '
                  'exec /usr/bin/tar -c -f - -- "$2"')
        command = [*AS_SANDBOX_USER, "/bin/sh", "-c", script, "sh", parent or "/", base]
        with self._errors(f"copy {path} out of the pod"):
            session = _Exec(self._own_core(), self.namespace, container_id, command, stdin=False)
        return self._archive_chunks(session, container_id, path)

    def _archive_chunks(self, session: _Exec, container_id: str, path: str) -> Iterator[bytes]:
        try:
            sent = False
            with self._errors(f"copy {path} out of the pod"):
                for chunk in session.output():
                    sent = True
                    yield chunk
            if not session.succeeded:
                text = session.failure()
                if not sent and ("No such file" in text or "Cannot stat" in text):
                    raise BackendError(f"no such file or directory in the sandbox: {path}") \
                        from FileNotFoundError(2, text, path)
                raise BackendError(f"copying {path} out of pod {container_id} failed: {text}") from session.cause()
        finally:
            session.close()

    # -- images ----------------------------------------------------------------------

    def image_exists(self, image: str) -> bool:
        """Whether a node of the cluster reports having ``image`` (node status lists the
        images present, up to the kubelet's --node-status-max-images)."""
        return self._node_images(image)[0]

    def _node_images(self, image: str) -> tuple[bool, bool]:
        """(a node lists ``image``, every node's list is whole): a kubelet lists at most
        NODE_STATUS_MAX_IMAGES images, the largest first; a shorter list is all it has."""
        wanted = _image_names(image)
        with self._errors("list the nodes (to find the image)"):
            nodes = self.core.list_node()
        found, whole = False, True
        for node in nodes.items:
            entries = (node.status.images or []) if node.status else []
            whole = whole and len(entries) < NODE_STATUS_MAX_IMAGES
            for entry in entries:
                if wanted & {n for name in entry.names or [] for n in _image_names(name)}:
                    found = True
        return found, whole

    def pull_image(self, image: str, progress: PullProgressCallback | None = None) -> None:
        """The kubelet pulls, when the pod starts, as the pull policy says (pull errors are
        raised by ``start`` as ImagePullError). Nothing to do here but refuse an image
        that will never be pulled (policy Never, explicit or by default for a name
        without a registry) and that no node has (said now, not after a pod waited)."""
        policy = self.settings.image_pull_policy or ("IfNotPresent" if registry_of(image) else "Never")
        if policy != "Never":
            return
        found, whole = self._node_images(image)
        if found or not whole:
            return  # a node may have it beyond what its status lists: the pod finds out
        how = (f"{PULL_POLICY_ENV}=Never" if self.settings.image_pull_policy
               else "an image without a registry is never pulled (imagePullPolicy Never)")
        raise ImageNotFound(image, f"no node of the cluster has it and {how}: build it with `pybox build` and "
                                   f"load it into the nodes' container runtime, or push it to a registry")

    # -- engine ------------------------------------------------------------------------

    def ping(self) -> None:
        with self._errors("list pods"):
            self.core.list_namespaced_pod(self.namespace, limit=1, _request_timeout=30)

    def close(self) -> None:
        with self._lock:
            forwarders, self._forwarders = list(self._forwarders.values()), {}
        for forwarder in forwarders:
            forwarder.close()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
        self._api = None
        self._configuration = None


# -- reading pods back ------------------------------------------------------------------------


def pod_state(pod: Any) -> ContainerState:
    """A ContainerState from a pod (None: it no longer exists)."""
    if pod is None:
        return ContainerState(running=False, status="removed")
    if pod.metadata.deletion_timestamp is not None:
        return ContainerState(running=False, status="removing")
    status = pod.status
    container = next((c for c in (status.container_statuses or []) if c.name == CONTAINER), None) if status else None
    state = container.state if container is not None else None
    if state is not None and state.terminated is not None:
        ended = state.terminated
        reason = ended.reason or ""
        return ContainerState(running=False, status="exited", exit_code=ended.exit_code,
                              oom_killed=reason == "OOMKilled",
                              error=" ".join(p for p in (reason, (ended.message or "")[:MAX_ERROR_TEXT]) if p))
    if state is not None and state.running is not None:
        return ContainerState(running=True, status="running")
    if status is not None and status.phase == "Failed":  # evicted, or the prepare step failed
        words = [status.reason or "", status.message or ""]
        for prepare in status.init_container_statuses or []:
            ended = prepare.state.terminated if prepare.state is not None else None
            if ended is not None and ended.exit_code:
                words.append(f"init container {prepare.name} exited with {ended.exit_code} ({ended.reason or ''})")
        return ContainerState(running=False, status="failed", error=" ".join(w for w in words if w)[:MAX_ERROR_TEXT])
    return ContainerState(running=False, status=(status.phase or "pending").lower() if status else "pending",
                          error=_pending_reason(pod))


def _pending_reason(pod: Any) -> str:
    """What keeps a pod from running, in the cluster's words."""
    if pod is None or pod.status is None:
        return "no status yet"
    status = pod.status
    for condition in status.conditions or []:
        if condition.status != "True" and condition.reason:
            return f"{condition.type}: {condition.reason}: {condition.message or ''}".strip()[:MAX_ERROR_TEXT]
    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        if container.state is not None and container.state.waiting is not None:
            waiting = container.state.waiting
            return f"{container.name}: {waiting.reason}: {waiting.message or ''}".strip()[:MAX_ERROR_TEXT]
    return f"phase {status.phase}"


def _labels_of(pod: Any) -> dict[str, str] | None:
    text = (pod.metadata.annotations or {}).get(LABELS_ANNOTATION)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


def _image_names(name: str) -> set[str]:
    """The spellings of an image reference a node may list: ``pybox:latest``,
    ``docker.io/library/pybox:latest``..."""
    names = {name}
    last = name.rsplit("/", 1)[-1]
    if "@" not in name and ":" not in last:
        names.add(name + ":latest")
    for spelled in list(names):
        if registry_of(spelled) is None:
            full = spelled if "/" in spelled else f"library/{spelled}"
            names.add(f"docker.io/{full}")
        elif spelled.startswith("docker.io/library/"):
            names.add(spelled[len("docker.io/library/"):])
        elif spelled.startswith("docker.io/"):
            names.add(spelled[len("docker.io/"):])
    return names


def _reason(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, (bytes, bytearray)):
        body = body[:MAX_ERROR_TEXT].decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            message = json.loads(body).get("message")
            if message:
                return f"{message} (HTTP {exc.status})"
        except (ValueError, AttributeError):
            pass
    return f"{exc.reason or 'error'} (HTTP {exc.status})"


# -- exec -------------------------------------------------------------------------------------


class _Exec:
    """One command in the sandbox container over the exec websocket (channel.k8s.io):
    stdin written in frames, stdout read frame by frame (bounded by the frame size the
    API server uses), stderr and the status kept up to MAX_ERROR_TEXT."""

    STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str, command: list[str], stdin: bool):
        self._api = core.api_client
        try:
            self._client = stream(core.connect_get_namespaced_pod_exec, name, namespace, container=CONTAINER,
                                  command=command, stdin=stdin, stdout=True, stderr=True, tty=False,
                                  _preload_content=False, binary=True)
        except ApiException as exc:
            self._api.close()
            if "404" in str(exc.reason) or exc.status == 404:
                raise BackendError(f"pod {name} no longer exists") from exc
            raise
        self._ws = self._client.sock
        self._stderr = b""
        self._status = b""
        self._done = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            piece, view = bytes(view[:FRAME]), view[FRAME:]
            self._ws.send(bytes((self.STDIN,)) + piece, opcode=ABNF.OPCODE_BINARY)
            self._drain()  # keep the other direction moving without blocking

    def _drain(self) -> None:
        while not self._done and select.select([self._ws.sock], [], [], 0)[0]:
            self._frame()

    def _frame(self, timeout: float | None = None) -> bytes | None:
        """Read one frame; its stdout bytes, or None."""
        if timeout is not None:
            self._ws.sock.settimeout(timeout)
        try:
            opcode, frame = self._ws.recv_data_frame(True)
        except Exception:  # noqa: BLE001 -- the stream ended (closed, reset): the status says how
            self._done = True
            return None
        if opcode == ABNF.OPCODE_CLOSE:
            self._done = True
            return None
        if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not frame.data:
            return None
        data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode()
        channel, payload = data[0], data[1:]
        if channel == self.STDOUT:
            return payload
        if channel == self.STDERR:
            self._stderr = (self._stderr + payload)[:MAX_ERROR_TEXT]
        elif channel == self.ERROR:
            self._status = (self._status + payload)[:MAX_ERROR_TEXT]
            self._done = True
        return None

    def wait(self, timeout: float = 600) -> None:
        """Until the command ends (its status arrives)."""
        deadline = time.monotonic() + timeout
        while not self._done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(f"the command in the pod did not end within {timeout:g} s")
            self._frame(timeout=remaining)

    def output(self) -> Iterator[bytes]:
        while not self._done:
            chunk = self._frame(timeout=600)
            if chunk:
                yield chunk

    @property
    def succeeded(self) -> bool:
        try:
            return bool(json.loads(self._status or b"{}").get("status") == "Success")
        except ValueError:
            return False

    def failure(self) -> str:
        stderr = self._stderr.decode("utf-8", "replace").strip()
        try:
            message = str(json.loads(self._status or b"{}").get("message") or "")
        except ValueError:
            message = ""
        return "; ".join(p for p in (stderr, message) if p) or "the command ended without a status"

    def cause(self) -> BaseException:
        return RuntimeError(self.failure())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
        with contextlib.suppress(Exception):
            self._api.close()


__all__ = ["KubernetesBackend", "pod_state"]
