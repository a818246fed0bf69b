"""How a sandbox container is started, decided once for every engine.

``plan_launch`` turns a :class:`~pybox.backend.ContainerSpec` (what the sandbox asks
for) into a :class:`LaunchPlan` (how to start this image so that it is honoured: the
command and user, capabilities, mounts, resources in plain units). Plugins may adjust
the plan (hook ``pybox_adjust_launch_plan``); backends only translate it into their
SDK's words. The helpers at the end read an engine's inspect data back, for the
engines whose inspect output has Docker's shape (Docker, Podman).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pybox.backend import BINDS, LIMITS, NETWORK_POLICY, PIDS_LIMIT, READ_ONLY, Backend
from pybox.errors import BackendError, UnsupportedOperation
from pybox.image_contract import (
    DEFAULT_BLOCKED_NETWORKS,
    GATEWAY_HOME,
    INIT,
    INIT_CAPS,
    NETWORK_ENV,
    NETWORK_POLICY_CAPS,
    SCRATCH_MOUNTS,
    WORKDIR,
    network_policy_value,
)
from pybox.spec import ContainerSpec, ContainerState, LaunchPlan, Limits, PublishedPort, Scratch, memory_bytes

#: Cap of each of the container's log files (two of them): code in the sandbox can write
#: to the container's log directly, and must not fill the host's disk that way.
LOG_MAX_BYTES = 10 << 20


def plan_launch(spec: ContainerSpec) -> LaunchPlan:
    """The launch plan that honours ``spec`` with pybox's sandbox image."""
    plan = LaunchPlan(
        image=spec.image,
        env=dict(spec.env),
        labels=dict(spec.labels),
        ports=[PublishedPort(spec.gateway_port, spec.host_ip, spec.host_port)],
        binds=list(spec.binds),
        # The image's init starts as root, applies the network policy, then runs the
        # gateway as its own user and kernels as the sandbox user with no capabilities.
        # The container gets only what the init and the gateway need.
        command=[INIT, *(spec.command or [])],
        user="0",
        cap_drop=["ALL"],
        cap_add=list(INIT_CAPS),
        no_new_privileges=True,
        name=spec.name,
        gateway_port=spec.gateway_port,
    )
    apply_limits(plan, spec.limits)
    plan.log_max_bytes = LOG_MAX_BYTES
    if spec.read_only:
        plan.read_only = True
        plan.scratch = [Scratch(path, size, owned) for path, size, owned in SCRATCH_MOUNTS]
        # /app must stay writable for the kernel and for upload/download.
        plan.volumes = [WORKDIR]
    else:
        # The gateway's runtime directory (connection files with the kernels' keys, the
        # TLS key of a remote engine's sandbox) is never on the container's disk, in
        # every mode: a commit of the container (Sandbox.snapshot) leaves mounts out.
        plan.scratch = [Scratch(path, size, owned) for path, size, owned in SCRATCH_MOUNTS if path == GATEWAY_HOME]
    if spec.network != "open":
        # Applied by the init before anything else runs; "default" gets the engine's
        # host addresses in prepare_launch (they depend on the backend).
        plan.cap_add += NETWORK_POLICY_CAPS
        plan.env[NETWORK_ENV] = network_policy_value(spec.network)
    return plan


def apply_limits(plan: LaunchPlan, limits: Limits) -> None:
    plan.memory_bytes = None if limits.memory is None else memory_bytes(limits.memory)
    # Docker's default, made explicit so that every engine gives the same: as much swap again.
    plan.memory_swap_bytes = None if plan.memory_bytes is None else 2 * plan.memory_bytes
    plan.cpus = float(limits.cpus) if limits.cpus else None
    plan.pids = limits.pids


# -- reading an engine's inspect data back (Docker's shape; Podman's compat output too) --


def state_from_inspect(info: Mapping[str, Any] | None) -> ContainerState:
    """A container's state from its inspect data (None: it no longer exists)."""
    if info is None:
        return ContainerState(running=False, status="removed")
    state = info.get("State") or {}
    exit_code = state.get("ExitCode")
    return ContainerState(
        running=bool(state.get("Running")),
        status=str(state.get("Status", "")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
    )


def labels_from_inspect(info: Mapping[str, Any] | None) -> dict[str, str] | None:
    if info is None:
        return None
    return dict((info.get("Config") or {}).get("Labels") or {})


def published_host_port(info: Mapping[str, Any], container_port: int, container_id: str) -> int:
    """The host port the engine published ``container_port`` on."""
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(f"{container_port}/tcp") or []
    try:
        return int(bindings[0]["HostPort"])
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"container {container_id[:12]} publishes no port for the kernel gateway") from exc


#: os.ModeSymlink of Go, in the mode of a path's stat (header X-Docker-Container-Path-Stat).
_GO_MODE_SYMLINK = 1 << 27


def refuse_linked_bind_targets(plan: LaunchPlan, path_stat: Callable[[str], str | None]) -> None:
    """Between a container's creation and its start: refuse a bind whose target passes
    through a symbolic link in the container's files. The engine mounts a bind where its
    target resolves, and a snapshot holds what code made of /app (the sandbox user's): with
    /app/data a link to /usr/local/sbin, the bound host directory would cover the init.
    ``path_stat(path)`` is the engine's stat of ``path`` in the container, base64 JSON as
    Docker's and Podman's ``HEAD /containers/{id}/archive`` send it, or None if missing."""
    for bind in plan.binds:
        path = ""
        for part in [p for p in bind.container.split("/") if p]:
            path += "/" + part
            header = path_stat(path)
            if header is None:
                break  # missing: the engine makes it, a directory
            try:
                stat = json.loads(base64.b64decode(header))
                mode = int(stat.get("mode") or 0)
            except (ValueError, TypeError, AttributeError) as exc:
                raise BackendError(f"cannot tell what {path} is in image {plan.image}: the engine's answer "
                                   f"is unreadable") from exc
            if mode & _GO_MODE_SYMLINK:
                raise BackendError(
                    f"cannot bind {bind.host} at {bind.container}: in image {plan.image}, {path} is a symbolic "
                    f"link (to {str(stat.get('linkTarget') or '?')[:200]}), and the engine would mount the "
                    f"directory at the link's target (a snapshot holds what code made of /app); bind it "
                    f"elsewhere, or remove the link from the image")


def client_host(host_ip: str) -> str:
    """Where a client on the engine's host connects to a port published on ``host_ip``."""
    return "127.0.0.1" if host_ip in ("", "0.0.0.0") else ("::1" if host_ip == "::" else host_ip)


# -- what the default network policy must know from the client ----------------------------

_BLOCKED = [ipaddress.ip_network(network) for network in DEFAULT_BLOCKED_NETWORKS]


def host_addresses(engine_host: str | None) -> tuple[str, ...]:
    """The addresses of the engine's host that the default policy blocks besides
    DEFAULT_BLOCKED_NETWORKS (and the container's gateway, which the init finds): this
    machine's interface addresses when ``engine_host`` is None (a local engine), else
    what ``engine_host`` is or resolves to. Sorted, without those already blocked."""
    if engine_host is None:
        found: Iterable[str] = local_addresses()
    else:
        try:
            found = [str(ipaddress.ip_address(engine_host.strip("[]")))]
        except ValueError:
            try:
                found = {str(info[4][0]) for info in socket.getaddrinfo(engine_host, None)}
            except OSError:
                found = []
    addresses = set()
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if not any(address.version == net.version and address in net for net in _BLOCKED):
            addresses.add(address)
    return tuple(str(a) for a in sorted(addresses, key=lambda a: (a.version, a)))


def local_addresses() -> list[str]:
    """This machine's interface addresses, from /proc (Linux), else ``ip -o addr``; an
    empty list where neither is available."""
    found: list[str] = []
    try:
        last = None
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text[3:].split()[0]
            elif text.startswith("/32 host LOCAL") and last:
                found.append(last)
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            digits = line.split()[0]
            found.append(str(ipaddress.ip_address(int(digits, 16))))
    except (OSError, ValueError, IndexError):
        pass
    if found:
        return found
    ip = shutil.which("ip")
    if ip is None:
        return []
    try:
        output = subprocess.run([ip, "-o", "addr"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    for line in output.splitlines():
        words = line.split()
        for family in ("inet", "inet6"):
            if family in words[:-1]:
                found.append(words[words.index(family) + 1].split("/")[0])
    return found


def pin_allowed_domains(plan: LaunchPlan) -> None:
    """Resolve the domains of an allowlist here and have the engine write them into the
    container's /etc/hosts (``plan.extra_hosts``), for a read-only root filesystem where
    the init cannot. A name that does not resolve here is left to the init, which
    fails the start naming it if it cannot resolve it either."""
    policy = plan.env.get(NETWORK_ENV, "")
    if not policy.startswith("allow:"):
        return
    pinned = {name for name, _ in plan.extra_hosts}
    for entry in policy[len("allow:"):].split(","):
        if not entry or ":" in entry or not any(c.isalpha() for c in entry) or entry in pinned:
            continue  # an address or a CIDR, or pinned already
        try:
            addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(entry, None)})
        except OSError:
            continue
        plan.extra_hosts += [(entry, address.split("%")[0]) for address in addresses]


def keep_image_content(plan: LaunchPlan) -> None:
    """For a read-only sandbox started from a snapshot (``Sandbox.snapshot``): the
    sandbox user's scratch directories (~/.local with the packages ``pip install`` put
    there, ~/.config, ~/.jupyter) become volumes, which engines fill with the image's
    content, instead of empty tmpfs mounts that would hide it. Like /app's volume they
    have no size cap. /tmp and the gateway's home stay tmpfs (the snapshot's /tmp is
    not seen there)."""
    if not plan.read_only:
        return
    moved = [s.path for s in plan.scratch if s.sandbox_owned]
    plan.scratch = [s for s in plan.scratch if not s.sandbox_owned]
    plan.volumes += [path for path in moved if path not in plan.volumes]


# -- from spec to a checked plan ----------------------------------------------------------

#: The sandbox option each backend feature stands for, as users write it.
_OPTION_OF_FEATURE = {
    BINDS: "binds",
    LIMITS: "limits (memory, cpus)",
    PIDS_LIMIT: "a process limit per sandbox (limits=pybox.Limits(pids=...))",
    READ_ONLY: "read_only=True",
    NETWORK_POLICY: "a network policy (the default policy, network='none' or an allowlist; "
                    "network='open' needs none)",
}


def features_needed(plan: LaunchPlan) -> list[str]:
    """The backend features a plan relies on."""
    needed = []
    if plan.binds:
        needed.append(BINDS)
    if plan.memory_bytes is not None or plan.cpus is not None:
        needed.append(LIMITS)
    if plan.pids is not None:
        needed.append(PIDS_LIMIT)
    if plan.read_only:
        needed.append(READ_ONLY)
    if plan.network_policed:
        needed.append(NETWORK_POLICY)
    return needed


def refuse_unsupported(plan: LaunchPlan, backend: Backend) -> None:
    """Raise UnsupportedOperation when the plan needs what ``backend`` cannot enforce:
    a sandbox never starts without an option it was given."""
    for feature in features_needed(plan):
        if feature not in backend.features:
            hint = backend.unsupported_hints.get(feature, "")
            if not hint and feature == LIMITS:
                hint = "to run without limits, pass limits=pybox.Limits(memory=None, cpus=None, pids=None)"
            if not hint and feature == PIDS_LIMIT:
                hint = "to run without a process limit, pass limits=pybox.Limits(pids=None)"
            what = f"the {backend.name} backend cannot enforce {_OPTION_OF_FEATURE[feature]}"
            if feature == BINDS:
                what += f" ({', '.join(b.host for b in plan.binds)})"
            raise UnsupportedOperation(f"{what}: {hint}" if hint else what)


def prepare_launch(
    spec: ContainerSpec, backend: Backend, adjust: Callable[[LaunchPlan, str], None] | None = None
) -> LaunchPlan:
    """The plan a backend starts: pybox's plan for ``spec``, adjusted by plugins
    (``adjust``: the ``pybox_adjust_launch_plan`` hook) and by the backend itself,
    then checked against what the backend can enforce."""
    plan = plan_launch(spec)
    if adjust is not None:
        adjust(plan, backend.name)
    backend.adjust_plan(plan)
    refuse_unsupported(plan, backend)
    if plan.network_policed:
        if plan.env.get(NETWORK_ENV) == "default":
            plan.env[NETWORK_ENV] = network_policy_value("default", host_addresses(backend.engine_host()))
        if plan.read_only:
            pin_allowed_domains(plan)
    return plan
