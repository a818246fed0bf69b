"""Snapshots: a sandbox's filesystem saved as an image on its engine (``Sandbox.snapshot``).

Engines make an image of a container with a *commit*, which copies the container's
configuration into the image: its environment (the gateway's token, the TLS key of a
remote engine's sandbox, the user's ``env=``), its command and its labels (pybox's owner
labels). Docker merges the container's environment and labels into a commit even when the
commit is given a configuration of its own (a key the given configuration lacks is
copied), and Podman copies them too. So a snapshot is committed with the configuration of
the image the sandbox started from, in which every variable and label only the container
has is present *empty*: engines keep the given value, and the image holds nothing of the
sandbox's. What is decided here needs no engine; backends apply it (``Backend.commit``).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Mapping

from pybox.errors import InvalidArgument

#: Label of every snapshot: the image the sandbox started from (as it was named).
SNAPSHOT_LABEL = "org.pybox.snapshot.of"
#: Label of every snapshot: that image's id on the engine.
SNAPSHOT_BASE_ID_LABEL = "org.pybox.snapshot.base-id"
#: Label of every snapshot: when it was taken (seconds since the epoch, UTC).
SNAPSHOT_CREATED_LABEL = "org.pybox.snapshot.created"

#: The image configuration fields a snapshot takes from its base image.
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "User", "WorkingDir", "ExposedPorts", "Labels", "Volumes",
                 "StopSignal")

# distribution/reference's grammar (what Docker and Podman accept as a name to tag).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?)"
_TAG = r"[\w][\w.-]{0,127}"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?")
_NAME_MAX = 255


def check_tag(tag: object) -> str:
    """``tag`` when it is a name an engine can give an image (``my-env:v1``,
    ``registry.example:5000/team/env:2``; ``:latest`` when no tag is given), else
    InvalidArgument naming it. A digest (``@sha256:...``) is refused: an image's digest
    is the engine's to compute."""
    if not isinstance(tag, str):
        raise InvalidArgument(f"snapshot tag must be an image name such as 'my-env:v1', not {type(tag).__name__}")
    why = ""
    if not tag:
        why = "it is empty"
    elif "@" in tag:
        why = "a digest (@sha256:...) cannot be chosen, only a name and a tag"
    elif _REFERENCE.fullmatch(tag) is None:
        why = ("names are lowercase letters, digits and separators (. _ -), in /-separated parts, "
               "optionally after a registry host[:port]/, then :TAG (letters, digits, . _ -; at most 128)")
    elif len(tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag) > _NAME_MAX:
        why = f"the name is longer than {_NAME_MAX} characters"
    if why:
        raise InvalidArgument(f"invalid snapshot tag {tag!r}: {why}")
    return tag


def split_tag(tag: str) -> tuple[str, str]:
    """``(repository, tag)`` of an image name (tag ``latest`` when it has none)."""
    last = tag.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, version = tag.rpartition(":")
        return repository, version
    return tag, "latest"


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def snapshot_config(base: Mapping[str, Any] | None, container: Mapping[str, Any] | None,
                    labels: Mapping[str, str], engine_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The configuration to commit a snapshot with (Docker's ``Config`` shape, as in
    ``docker image inspect``): ``base`` (the configuration of the image the sandbox
    started from) for every field of CONFIG_FIELDS, each environment variable and label
    that ``container`` (the container's configuration) has and ``base`` lacks present
    with an empty value, and ``labels`` (the snapshot's) added. Empty lists and maps
    stand for fields ``base`` leaves unset: an engine fills an unset field from the
    container. ``engine_env``: variables the engine puts in every container (Podman's
    ``TERM=xterm``, ``container=podman``), left as they are when the container has
    them with that value."""
    engine_env = dict(engine_env or {})
    base = dict(base or {})
    container = dict(container or {})
    env = [str(entry) for entry in base.get("Env") or []]
    known = {_env_key(entry) for entry in env}
    for entry in container.get("Env") or []:
        key = _env_key(str(entry))
        if engine_env.get(key) is not None and str(entry) == f"{key}={engine_env[key]}":
            continue
        if key and key not in known:
            env.append(f"{key}=")
            known.add(key)
    base_labels = {str(k): str(v) for k, v in (base.get("Labels") or {}).items()}
    image_labels = dict(base_labels)
    for key in (container.get("Labels") or {}):
        if key not in image_labels:
            image_labels[str(key)] = ""
    image_labels.update(labels)
    return {
        "Env": env,
        "Cmd": list(base.get("Cmd") or []),
        "Entrypoint": list(base.get("Entrypoint") or []),
        "User": str(base.get("User") or ""),
        "WorkingDir": str(base.get("WorkingDir") or ""),
        "ExposedPorts": dict(base.get("ExposedPorts") or {}),
        "Labels": image_labels,
        "Volumes": dict(base.get("Volumes") or {}),
        "StopSignal": base.get("StopSignal") or None,
    }


def snapshot_labels(base_image: str, base_id: str | None = None, now: float | None = None) -> dict[str, str]:
    """The labels that mark an image as a pybox snapshot of ``base_image``."""
    labels = {SNAPSHOT_LABEL: base_image, SNAPSHOT_CREATED_LABEL: str(int(time.time() if now is None else now))}
    if base_id:
        labels[SNAPSHOT_BASE_ID_LABEL] = base_id
    return labels


def leaked_config(image: Mapping[str, Any] | None, base: Mapping[str, Any] | None,
                  engine_env: Mapping[str, str] | None = None) -> list[str]:
    """What of a container's configuration a committed image carries beyond its base:
    environment variables with a value the base image does not give them (empty ones
    and ``engine_env``'s defaults aside), labels the base lacks or has with another
    value (empty ones and the snapshot's aside), another command or entry point. Empty
    when the commit went as ``snapshot_config`` asked; backends check it and remove an
    image that leaks."""
    image, base, engine_env = dict(image or {}), dict(base or {}), dict(engine_env or {})
    base_env = dict(str(e).partition("=")[::2] for e in base.get("Env") or [])
    base_labels = base.get("Labels") or {}
    leaked = []
    for entry in image.get("Env") or []:
        key, _, value = str(entry).partition("=")
        if value == "" or base_env.get(key) == value or engine_env.get(key) == value:
            continue
        leaked.append(f"environment variable {key}")
    for key, value in (image.get("Labels") or {}).items():
        if key.startswith("org.pybox.snapshot.") or value == "" or base_labels.get(key) == value:
            continue
        leaked.append(f"label {key}")
    if (image.get("Cmd") or []) != (base.get("Cmd") or []):
        leaked.append("command")
    if (image.get("Entrypoint") or []) != (base.get("Entrypoint") or []):
        leaked.append("entry point")
    return leaked


def podman_changes(config: Mapping[str, Any]) -> list[str]:
    """``config`` (from ``snapshot_config``) as the Dockerfile instructions Podman's
    commit applies (``changes``): Podman starts from the container's configuration."""
    changes = [f"ENV {entry}" for entry in config.get("Env") or []]
    changes += [f"LABEL {key}={json.dumps(value)}" for key, value in (config.get("Labels") or {}).items()]
    changes.append(f"CMD {json.dumps(list(config.get('Cmd') or []))}")
    changes.append(f"ENTRYPOINT {json.dumps(list(config.get('Entrypoint') or []))}")
    if config.get("User"):
        changes.append(f"USER {config['User']}")
    if config.get("WorkingDir"):
        changes.append(f"WORKDIR {config['WorkingDir']}")
    return changes
