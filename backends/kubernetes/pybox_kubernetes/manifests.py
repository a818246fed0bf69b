"""The Kubernetes objects of one sandbox, as plain dicts (what the API takes), made from a
``LaunchPlan``: the pod, the Secret holding its environment (the gateway token and TLS
key among it: never in the pod spec, which more people may read), and the NetworkPolicy
mirroring its network policy. No Kubernetes import here (unit-testable)."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from pybox.errors import UnsupportedOperation
from pybox.image_contract import DEFAULT_BLOCKED_NETWORKS, NETWORK_ENV, SANDBOX_GID, SANDBOX_UID
from pybox.pull import registry_of
from pybox.spec import LaunchPlan
from pybox_kubernetes.config import POD_PIDS_LIMIT_ENV, Settings, is_label_key, is_label_value

#: The sandbox's container in its pod.
CONTAINER = "sandbox"
#: Label naming the sandbox (its pod's name) on each of its objects; the NetworkPolicy selects by it.
SANDBOX_LABEL = "pybox.sandbox"
MANAGED_BY = {"app.kubernetes.io/managed-by": "pybox"}
#: Annotation holding the plan's labels exactly (JSON): Kubernetes label values may not
#: hold every owner label (``pid:[4026531836]``), so labels carry those that fit, for
#: selectors, and this annotation all of them, for ``container_labels``.
LABELS_ANNOTATION = "pybox.labels"


def pod_labels(name: str, labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes labels: the sandbox's name, managed-by, and the plan's labels that are
    valid Kubernetes labels (the others are in LABELS_ANNOTATION only)."""
    fitting = {k: v for k, v in labels.items() if is_label_key(k) and is_label_value(v)}
    return {**fitting, **MANAGED_BY, SANDBOX_LABEL: name}


def label_selector(labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A label selector for the labels that can be selected on, and the rest (matched
    against LABELS_ANNOTATION by the caller)."""
    selectable = {k: v for k, v in labels.items() if is_label_key(k) and is_label_value(v)}
    rest = {k: v for k, v in labels.items() if k not in selectable}
    return ",".join(f"{k}={v}" for k, v in sorted(selectable.items())), rest


def pull_policy(plan: LaunchPlan, settings: Settings) -> str:
    """PYBOX_K8S_IMAGE_PULL_POLICY, else Never for an image without a registry part (never
    pulled implicitly, as on every backend: it must be on the node), else IfNotPresent."""
    if settings.image_pull_policy:
        return settings.image_pull_policy
    return "IfNotPresent" if registry_of(plan.image) else "Never"


def check_pids(plan: LaunchPlan, settings: Settings) -> None:
    """Kubernetes has no per-pod process limit: the kubelets enforce one for every pod
    (--pod-max-pids). A plan's limit is honoured only when the operator says, through
    PYBOX_K8S_POD_PIDS_LIMIT, that the cluster's is at least as tight; refused otherwise."""
    if plan.pids is None:
        return
    no_limit = "or run without a process limit: limits=pybox.Limits(pids=None)"
    if settings.pod_pids_limit is None:
        raise UnsupportedOperation(
            f"the kubernetes backend cannot set a process limit per sandbox (pids={plan.pids}): Kubernetes has no "
            f"such pod field, its kubelets enforce one limit for every pod (--pod-max-pids). If your cluster's "
            f"kubelets do, set {POD_PIDS_LIMIT_ENV} to that limit; {no_limit}")
    if settings.pod_pids_limit > plan.pids:
        raise UnsupportedOperation(
            f"the kubernetes backend cannot give this sandbox a process limit of {plan.pids}: the cluster's kubelets "
            f"enforce {settings.pod_pids_limit} per pod ({POD_PIDS_LIMIT_ENV}); ask for at least that, {no_limit}")


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def resources(plan: LaunchPlan) -> dict[str, Any]:
    """Requests = limits (Guaranteed QoS when both memory and CPU are limited). Swap: none
    (Kubernetes gives pods none, stricter than memory_swap_bytes)."""
    limits: dict[str, str] = {}
    if plan.memory_bytes is not None:
        limits["memory"] = str(plan.memory_bytes)
    if plan.cpus is not None:
        limits["cpu"] = _quantity_cpu(plan.cpus)
    return {"limits": dict(limits), "requests": dict(limits)} if limits else {}


def pod_manifest(name: str, plan: LaunchPlan, settings: Settings) -> dict[str, Any]:
    """The pod running ``plan``; its environment comes from the Secret of the same name."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, scratch in enumerate(plan.scratch):
        volume = f"scratch-{index}"
        volumes.append({"name": volume, "emptyDir": {"medium": "Memory", "sizeLimit": str(scratch.size)}})
        mounts.append({"name": volume, "mountPath": scratch.path})
    for index, path in enumerate(plan.volumes):
        volume = f"volume-{index}"
        volumes.append({"name": volume, "emptyDir": {}})
        mounts.append({"name": volume, "mountPath": path})
    if plan.binds:  # core refuses these first (features); kept for direct callers
        raise UnsupportedOperation("the kubernetes backend cannot bind-mount host paths")
    security: dict[str, Any] = {
        "privileged": False,
        "allowPrivilegeEscalation": not plan.no_new_privileges,
        "readOnlyRootFilesystem": plan.read_only,
        "capabilities": {"drop": list(plan.cap_drop), "add": list(plan.cap_add)},
        # Docker's and Podman's default seccomp filter, which Kubernetes 1.20 does not apply by itself.
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if plan.user is not None:
        user, _, group = plan.user.partition(":")
        if not user.isdigit() or (group and not group.isdigit()):
            raise UnsupportedOperation(f"the kubernetes backend needs a numeric user (uid[:gid]), got {plan.user!r}")
        security["runAsUser"] = int(user)
        security["runAsGroup"] = int(group or user)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": plan.image,
        "imagePullPolicy": pull_policy(plan, settings),
        "envFrom": [{"secretRef": {"name": name}}],
        "ports": [{"name": "gateway", "containerPort": plan.gateway_port, "protocol": "TCP"}],
        "resources": resources(plan),
        "securityContext": security,
        "volumeMounts": mounts,
        # Ready when the gateway accepts connections (TLS and the token come after that).
        "readinessProbe": {"tcpSocket": {"port": plan.gateway_port}, "periodSeconds": 1, "timeoutSeconds": 1,
                           "successThreshold": 1, "failureThreshold": 1},
    }
    if plan.command is not None:
        container["command"] = list(plan.command)
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Never",
        "volumes": volumes,
        # The sandbox gets no API credentials and no list of the cluster's services.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
    }
    prepare = _prepare_container(plan, mounts, security)
    if prepare is not None:
        spec["initContainers"] = [prepare]
    if plan.extra_hosts:
        by_address: dict[str, list[str]] = {}
        for host, address in plan.extra_hosts:
            by_address.setdefault(address, []).append(host)
        spec["hostAliases"] = [{"ip": ip, "hostnames": names} for ip, names in by_address.items()]
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in settings.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": pod_labels(name, plan.labels),
            "annotations": {LABELS_ANNOTATION: json.dumps(plan.labels, sort_keys=True)},
        },
        "spec": spec,
    }


def _prepare_container(plan: LaunchPlan, mounts: list[dict[str, Any]],
                       security: dict[str, Any]) -> dict[str, Any] | None:
    """Empty directories mount root's, mode 0777: give them what Docker's tmpfs and
    volumes have (/tmp sticky 1777; a volume the image's directory's owner, the sandbox
    user for /app) before the sandbox starts. The same image, root, CHOWN only."""
    steps = []
    for mount in mounts:
        path = mount["mountPath"]
        if path == "/tmp":
            steps.append(f"chmod 1777 {path}")
        elif mount["name"].startswith("volume-"):
            steps.append(f"chmod 755 {path} && chown {SANDBOX_UID}:{SANDBOX_GID} {path}")  # chmod while root's
    if not steps:
        return None
    return {
        "name": "prepare",
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent" if registry_of(plan.image) else "Never",
        "command": ["/bin/sh", "-c", " && ".join(steps)],
        "resources": resources(plan),
        "securityContext": {**security, "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
        "volumeMounts": mounts,
    }


def secret_manifest(name: str, plan: LaunchPlan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {**MANAGED_BY, SANDBOX_LABEL: name}},
        "type": "Opaque",
        "stringData": dict(plan.env),
    }


def owner_reference(pod_name: str, pod_uid: str) -> dict[str, Any]:
    """Makes the cluster's garbage collector delete the object with the pod."""
    return {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid, "blockOwnerDeletion": False}


# -- NetworkPolicy -----------------------------------------------------------------------------


def network_policy_manifest(name: str, plan: LaunchPlan) -> dict[str, Any] | None:
    """The NetworkPolicy mirroring the plan's network policy (None: no policy, "open").

    It is a second layer: the image's init applies the policy itself with iptables in the
    pod's own network namespace, on any cluster. Where the cluster's network plugin
    enforces NetworkPolicy, this holds too, whatever happens inside the pod. It can only
    be as strict or stricter than the init: ingress to the gateway's port only; "none":
    no egress; "default": the public internet and DNS; an allowlist: its addresses and
    networks, and its domains as the addresses they resolve to here (NetworkPolicy has
    no names) plus DNS."""
    policy = plan.env.get(NETWORK_ENV, "")
    if not policy:
        return None
    egress: list[dict[str, Any]]
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    if policy == "none":
        egress = []
    elif policy.startswith("default"):
        hosts = [h for h in policy.partition(":")[2].split(",") if h]
        v4 = [n for n in DEFAULT_BLOCKED_NETWORKS if ":" not in n]
        # (IPv4-mapped addresses: Kubernetes reads ::ffff:0:0/96 as IPv4 and refuses it here;
        # what they map to is excluded from the IPv4 block already)
        v6 = [n for n in DEFAULT_BLOCKED_NETWORKS if ":" in n and n not in ("::/128", "::ffff:0:0/96")]
        for host in hosts:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                continue
            (v4 if address.version == 4 else v6).append(f"{address}/{address.max_prefixlen}")
        egress = [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": _within(v4, "0.0.0.0/0")}},
                    {"ipBlock": {"cidr": "::/0", "except": _within(v6, "::/0")}}]},
            dns,
        ]
    elif policy.startswith("allow:"):
        peers = []
        for entry in filter(None, policy[len("allow:"):].split(",")):
            for cidr in _addresses_of(entry):
                peers.append({"ipBlock": {"cidr": cidr}})
        egress = [{"to": peers}, dns] if peers else [dns]
    else:
        raise UnsupportedOperation(f"the kubernetes backend does not know the network policy {policy!r}")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {**MANAGED_BY, SANDBOX_LABEL: name}},
        "spec": {
            "podSelector": {"matchLabels": {SANDBOX_LABEL: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": plan.gateway_port}]}],
            "egress": egress,
        },
    }


def _within(networks: list[str], outer: str) -> list[str]:
    """The networks as CIDRs strictly inside ``outer`` (what ipBlock.except accepts)."""
    parent = ipaddress.ip_network(outer)
    found = []
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        if network.version == parent.version and network != parent and network.subnet_of(parent):  # type: ignore[arg-type]
            found.append(str(network))
    return sorted(set(found))


def _addresses_of(entry: str) -> list[str]:
    try:
        network = ipaddress.ip_network(entry, strict=False)
        return [str(network)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(entry, None)
    except OSError:
        return []  # not resolvable here: nothing allowed for it (stricter, never open)
    found = set()
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        found.add(f"{address}/{address.max_prefixlen}")
    return sorted(found)
