"""A sandbox's options, validated once: every check of what a user passes to
``Sandbox``, ``Pool`` or ``Kernel.connect`` lives here.

:class:`SandboxOptions` is frozen and checks itself on construction (as
:class:`~pybox.Limits` does), so whatever holds one can trust it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from pybox.errors import InvalidArgument
from pybox.image_contract import DEFAULT_IMAGE, TLS_CERT_ENV, TLS_KEY_ENV, TOKEN_ENV, WORKDIR
from pybox.plugins import resolve_backend_name
from pybox.spec import Bind, Limits

#: Default seconds ``run`` waits before interrupting the code (as ipybox).
DEFAULT_TIMEOUT = 120.0
#: Seconds a kernel gets to settle after an interrupt before it is restarted.
DEFAULT_INTERRUPT_GRACE = 2.0
#: Seconds a sandbox may take from start until its gateway answers.
DEFAULT_STARTUP_TIMEOUT = 60.0
#: Characters of output a Result keeps by default (its first and last halves, with a
#: marker between): about 1-4 MB of text, far more than a person or a model reads, and a
#: bound on what code in the sandbox can make the client hold. ``max_output=None``
#: keeps everything (unbounded client memory: an explicit choice).
DEFAULT_MAX_OUTPUT = 1_000_000


class KernelDefault:
    """The ``max_output`` of ``run`` / ``submit`` when none is given: the kernel's own
    (the sandbox's). ``None`` there means no limit, as everywhere."""

    def __repr__(self) -> str:
        return "KERNEL_DEFAULT"


#: See KernelDefault.
KERNEL_DEFAULT = KernelDefault()

Network = str | tuple[str, ...]
#: What users pass as ``binds``: host path -> container path.
BindsArg = Mapping[str, str] | Mapping[os.PathLike[str], str] | Mapping[str | os.PathLike[str], str]


@dataclass(frozen=True)
class SandboxOptions:
    """What a sandbox is made of, checked and normalized on construction.

    ``binds`` maps host paths (relative to the current directory, or absolute) to
    container paths (relative to /app, or absolute under /app); they become
    :class:`~pybox.backend.Bind` values. ``env`` is passed to the container. ``port``
    fixes the gateway's host port (default: the engine picks one). ``network`` is
    ``"default"`` (the public internet only), ``"open"``, ``"none"`` or a list of
    allowed IPs, CIDRs and domain names. ``max_output`` (characters, default
    ``DEFAULT_MAX_OUTPUT``; None: no limit) bounds what each Result keeps.
    """

    image: str = DEFAULT_IMAGE
    #: Backend name; None: PYBOX_BACKEND or the default (resolved by the plugins).
    backend: str | None = None
    binds: tuple[Bind, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    limits: Limits = field(default_factory=Limits)
    port: int | None = None
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    interrupt_grace: float = DEFAULT_INTERRUPT_GRACE
    startup_code: str | None = None
    read_only: bool = False
    max_output: int | None = DEFAULT_MAX_OUTPUT
    network: Network = "default"

    def __post_init__(self) -> None:
        normalized: dict[str, Any] = {
            "image": check_image(DEFAULT_IMAGE if self.image is None else self.image),
            "backend": check_backend_name(self.backend),
            "binds": check_binds(self.binds),
            "env": MappingProxyType(check_env(self.env)),
            "limits": check_limits(self.limits),
            "port": None if self.port is None else check_port(self.port),
            "startup_timeout": check_seconds(self.startup_timeout, "startup_timeout"),
            "interrupt_grace": check_seconds(self.interrupt_grace, "interrupt_grace", zero_ok=True),
            "startup_code": check_startup_code(self.startup_code),
            "read_only": check_flag(self.read_only, "read_only"),
            "max_output": check_max_output(self.max_output),
            "network": check_network(self.network),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)


# -- the checks, one per option --------------------------------------------------------------


def check_image(image: object) -> str:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise InvalidArgument(f"image must be an image name such as 'pybox:latest', got {image!r}")
    return image


def check_backend_name(name: object) -> str | None:
    if name is None:
        return None  # PYBOX_BACKEND or the default, read when the sandbox is made
    # Not a usable name: BackendNotFound, listing the installed backends.
    return resolve_backend_name(name)  # type: ignore[arg-type]


def check_limits(limits: object) -> Limits:
    if limits is None:
        return Limits()
    if not isinstance(limits, Limits):
        raise InvalidArgument(f"limits must be a pybox.Limits, not {type(limits).__name__}")
    return limits


def check_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidArgument(f"port must be an integer between 1 and 65535, got {value!r}")
    return value


def check_seconds(value: object, what: str, zero_ok: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
            or not (value >= 0 if zero_ok else value > 0) or value == float("inf")):
        raise InvalidArgument(f"{what} must be a {'' if zero_ok else 'positive '}number of seconds, got {value!r}")
    return float(value)


def check_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, got {value!r}")
    return value


def check_startup_code(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"startup_code must be a str, not {type(value).__name__}")
    return value


# jupyter_client's kernelspec names (it matches them case-insensitively).
_KERNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_kernel_name(value: object) -> str:
    """A kernelspec name (``"python3"``, ``"bash"``): letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(value, str):
        raise InvalidArgument(f"kernel name must be a str (a kernelspec name such as 'bash'), "
                              f"not {type(value).__name__}")
    if not _KERNEL_NAME.fullmatch(value):
        raise InvalidArgument(f"kernel name must be a kernelspec name (1-64 letters, digits, '.', '_', '-'), "
                              f"got {value!r}")
    return value


def check_max_output(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 100:
        raise InvalidArgument(f"max_output must be a number of characters of at least 100, or None, got {value!r}")
    return value


def check_env(env: object) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgument(f"env must be a mapping of str -> str, not {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env variable name {key!r} is not valid")
        if not isinstance(value, str):
            raise InvalidArgument(f"env variable {key} must be a str, not {type(value).__name__}")
    for name in (TOKEN_ENV, TLS_CERT_ENV, TLS_KEY_ENV):
        if name in env:
            raise InvalidArgument(f"env may not set {name}: pybox sets the gateway's token and certificate itself")
    return dict(env)


def check_binds(binds: object) -> tuple[Bind, ...]:
    if binds is None:
        return ()
    if isinstance(binds, tuple) and all(isinstance(b, Bind) for b in binds):
        return binds  # already checked (a copy of options)
    if not isinstance(binds, Mapping):
        raise InvalidArgument(f"binds must be a dict of host path -> container path, not {type(binds).__name__}")
    result = []
    for host, target in binds.items():
        if not isinstance(host, (str, os.PathLike)) or not str(host).strip():
            raise InvalidArgument(f"bind host path must be a non-empty path, got {host!r}")
        host_path = Path(host).expanduser().resolve()
        if not host_path.exists():
            raise InvalidArgument(f"bind host path {str(host)!r} does not exist ({host_path})")
        result.append(Bind(str(host_path), container_path(target, "bind container path")))
    return tuple(result)


def container_path(path: object, what: str = "sandbox path") -> str:
    """A sandbox path made absolute: relative paths are under /app, and nothing may
    leave /app."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InvalidArgument(f"{what} must be a non-empty path, got {path!r}")
    raw = PurePosixPath(WORKDIR, str(path))
    parts: list[str] = []
    for part in raw.parts[1:]:
        if part == "..":
            if not parts:
                raise InvalidArgument(f"{what} {str(path)!r} leaves /")
            parts.pop()
        elif part != ".":
            parts.append(part)
    resolved = "/" + "/".join(parts)
    if resolved != WORKDIR and not resolved.startswith(WORKDIR + "/"):
        raise InvalidArgument(f"{what} {str(path)!r} is outside {WORKDIR}, the sandbox's working directory")
    return resolved


_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                     r"[A-Za-z0-9])?$")


def check_network(network: object) -> Network:
    if network in ("default", "open", "none"):
        return str(network)
    if isinstance(network, (str, bytes)) or not isinstance(network, Sequence):
        raise InvalidArgument(f"network must be 'default', 'open', 'none' or a list of allowed destinations, "
                              f"got {network!r}")
    entries = []
    for entry in network:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidArgument(f"network allowlist entries must be addresses, CIDRs or domains, got {entry!r}")
        entry = entry.strip()
        try:
            entries.append(str(ipaddress.ip_network(entry, strict=False)) if "/" in entry
                           else str(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        if any(c.isdigit() for c in entry.split(".")[-1][:1]) or not _DOMAIN.match(entry):
            raise InvalidArgument(f"network allowlist entry {entry!r} is not an IP address, a CIDR or a domain name")
        entries.append(entry.lower())
    return tuple(entries)
