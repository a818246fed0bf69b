"""The Kubernetes backend's settings, read from the environment (``Backend()`` takes no
arguments) and checked once: a wrong value raises ``BackendUnavailable`` naming the
variable, its value and what it accepts. No Kubernetes import here (unit-testable)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pybox.errors import BackendUnavailable

NAMESPACE_ENV = "PYBOX_K8S_NAMESPACE"
SERVICE_ACCOUNT_ENV = "PYBOX_K8S_SERVICE_ACCOUNT"
NODE_SELECTOR_ENV = "PYBOX_K8S_NODE_SELECTOR"
TOLERATIONS_ENV = "PYBOX_K8S_TOLERATIONS"
PULL_SECRETS_ENV = "PYBOX_K8S_IMAGE_PULL_SECRETS"
PULL_POLICY_ENV = "PYBOX_K8S_IMAGE_PULL_POLICY"
CONNECT_ENV = "PYBOX_K8S_CONNECT"
START_TIMEOUT_ENV = "PYBOX_K8S_START_TIMEOUT"
NETWORK_POLICIES_ENV = "PYBOX_K8S_NETWORK_POLICIES"
POD_PIDS_LIMIT_ENV = "PYBOX_K8S_POD_PIDS_LIMIT"

ALL_ENV = (NAMESPACE_ENV, SERVICE_ACCOUNT_ENV, NODE_SELECTOR_ENV, TOLERATIONS_ENV, PULL_SECRETS_ENV,
           PULL_POLICY_ENV, CONNECT_ENV, START_TIMEOUT_ENV, NETWORK_POLICIES_ENV, POD_PIDS_LIMIT_ENV)

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CONNECT_MODES = ("auto", "port-forward", "pod-ip")
#: Where a pod's service account namespace is (in-cluster).
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")

SETTINGS_HINT = "See the Kubernetes section of docs/backends.md for the PYBOX_K8S_* variables"


def _bad(variable: str, value: str, what: str) -> BackendUnavailable:
    return BackendUnavailable(f"{variable}={value!r} is not valid: {what}", SETTINGS_HINT)


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and _DNS_SUBDOMAIN.fullmatch(text) is not None


def is_label_key(key: str) -> bool:
    """A Kubernetes label (or annotation) key: ``[prefix/]name``."""
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


@dataclass(frozen=True)
class Settings:
    """What the PYBOX_K8S_* variables say (None / empty: Kubernetes' own default)."""

    namespace: str | None = None  # None: the kubeconfig context's, in-cluster's, or "default"
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    #: None: Never for an image without a registry part (never pulled implicitly: it
    #: must be on the node), IfNotPresent for one with a registry.
    image_pull_policy: str | None = None
    connect: str = "auto"
    start_timeout: float = 300.0
    network_policies: bool = True
    pod_pids_limit: int | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, "").strip()

        namespace = get(NAMESPACE_ENV) or None
        if namespace is not None and not is_dns_label(namespace):
            raise _bad(NAMESPACE_ENV, namespace, "a namespace name is a DNS label (lower-case letters, digits and "
                                                 "'-', at most 63 characters)")
        account = get(SERVICE_ACCOUNT_ENV) or None
        if account is not None and not is_dns_subdomain(account):
            raise _bad(SERVICE_ACCOUNT_ENV, account, "a service account name is a DNS subdomain (lower-case "
                                                     "letters, digits, '-' and '.')")
        selector: dict[str, str] = {}
        raw = get(NODE_SELECTOR_ENV)
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not is_label_key(key) or not is_label_value(value):
                raise _bad(NODE_SELECTOR_ENV, raw, f"{item!r} is not a label KEY=VALUE (e.g. "
                                                   f"'kubernetes.io/os=linux,pool=sandboxes')")
            selector[key] = value
        tolerations = _tolerations(get(TOLERATIONS_ENV))
        secrets: list[str] = []
        raw = get(PULL_SECRETS_ENV)
        for name in filter(None, (part.strip() for part in raw.split(","))):
            if not is_dns_subdomain(name):
                raise _bad(PULL_SECRETS_ENV, raw, f"{name!r} is not a secret name (comma-separated names of "
                                                  f"docker-registry secrets in the namespace)")
            secrets.append(name)
        policy = get(PULL_POLICY_ENV) or None
        if policy is not None and policy not in PULL_POLICIES:
            raise _bad(PULL_POLICY_ENV, policy, f"one of {', '.join(PULL_POLICIES)}")
        connect = get(CONNECT_ENV) or "auto"
        if connect not in CONNECT_MODES:
            raise _bad(CONNECT_ENV, connect, "one of auto (pod IP inside the cluster, else port-forward through "
                                             "the API server), port-forward, pod-ip")
        timeout = 300.0
        raw = get(START_TIMEOUT_ENV)
        if raw:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout < 86400:
                raise _bad(START_TIMEOUT_ENV, raw, "seconds a pod may take to be scheduled, pull its image and "
                                                   "become ready (a positive number)")
        raw = get(NETWORK_POLICIES_ENV) or "1"
        if raw not in ("0", "1"):
            raise _bad(NETWORK_POLICIES_ENV, raw, "1 (a NetworkPolicy object mirrors each sandbox's network "
                                                  "policy) or 0 (the pod's own iptables rules only)")
        pids: int | None = None
        raw = get(POD_PIDS_LIMIT_ENV)
        if raw:
            try:
                pids = int(raw)
            except ValueError:
                pids = 0
            if pids < 16:
                raise _bad(POD_PIDS_LIMIT_ENV, raw, "the process limit the cluster's kubelets enforce per pod "
                                                    "(their --pod-max-pids / podPidsLimit), an integer of at "
                                                    "least 16")
        return cls(namespace=namespace, service_account=account, node_selector=selector, tolerations=tolerations,
                   image_pull_secrets=secrets, image_pull_policy=policy, connect=connect, start_timeout=timeout,
                   network_policies=raw_bool(get(NETWORK_POLICIES_ENV) or "1"), pod_pids_limit=pids)


def raw_bool(text: str) -> bool:
    return text == "1"


def _tolerations(raw: str) -> list[dict[str, Any]]:
    if not raw:
        return []
    what = ("a JSON list of tolerations, e.g. '[{\"key\": \"sandbox\", \"operator\": \"Exists\", "
            "\"effect\": \"NoSchedule\"}]'")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _bad(TOLERATIONS_ENV, raw, f"{what} ({exc})") from exc
    if not isinstance(value, list):
        raise _bad(TOLERATIONS_ENV, raw, what)
    for item in value:
        if not isinstance(item, dict) or not set(item) <= _TOLERATION_KEYS:
            raise _bad(TOLERATIONS_ENV, raw, f"{what}; each with only the keys {', '.join(sorted(_TOLERATION_KEYS))}")
        if item.get("operator", "Equal") not in _TOLERATION_OPERATORS:
            raise _bad(TOLERATIONS_ENV, raw, f"operator must be one of {', '.join(_TOLERATION_OPERATORS)}")
        if item.get("effect", "") not in _TOLERATION_EFFECTS:
            effects = ", ".join(e or repr(e) for e in _TOLERATION_EFFECTS)
            raise _bad(TOLERATIONS_ENV, raw, f"effect must be one of {effects}")
        for key in ("key", "value"):
            if key in item and not isinstance(item[key], str):
                raise _bad(TOLERATIONS_ENV, raw, f"{key} must be a string")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise _bad(TOLERATIONS_ENV, raw, "tolerationSeconds must be an integer")
    return value
