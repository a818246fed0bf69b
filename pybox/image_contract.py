"""The names the client and the sandbox image share, defined once.

The image (``images/sandbox/``) is built from files that hard-code the same values;
``tests/unit/test_image_contract.py`` reads them and fails when one drifts from here.
Change a value in both places, and rebuild the image (``pybox build``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: Image used when ``Sandbox(image=None)``; ``pybox build`` builds it.
DEFAULT_IMAGE = "pybox:latest"

#: Version of the contract between this client and the image (every name in this
#: module, and what the image's files do with them). Bump it when a change needs the
#: image rebuilt, and change the Dockerfile's ``org.pybox.protocol`` label with it: a
#: sandbox refuses an image whose PROTOCOL_LABEL differs (``IncompatibleImage``).
IMAGE_PROTOCOL = 3
#: Image label holding the image protocol (hard-coded in the Dockerfile).
PROTOCOL_LABEL = "org.pybox.protocol"
#: Image label holding the pybox version that built the image (build argument VERSION_BUILD_ARG).
VERSION_LABEL = "org.pybox.version"
VERSION_BUILD_ARG = "PYBOX_VERSION"

#: Port of the kernel gateway inside the container (the Dockerfile's EXPOSE).
GATEWAY_PORT = 8888
#: The gateway, which also starts the first kernel; the init runs it as GATEWAY_USER.
GATEWAY_COMMAND = "/opt/pybox/bin/pybox-gateway"
#: Working directory of every kernel; relative sandbox paths are under it.
WORKDIR = "/app"

#: The unprivileged user code runs as (``useradd`` in the Dockerfile).
SANDBOX_USER = "sandbox"
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOME = "/home/sandbox"
#: The gateway's own user: kernel code (SANDBOX_UID) cannot read its token or signal it.
GATEWAY_USER = "pybox-gateway"
GATEWAY_UID = 999
#: The gateway's home and runtime directory (connection files), which the init gives it.
GATEWAY_HOME = "/var/lib/pybox"

#: Environment variable the gateway reads its token from; it refuses to start without one.
TOKEN_ENV = "KG_AUTH_TOKEN"
#: Environment variables the gateway reads its TLS certificate and key from (PEM), for a
#: sandbox reached across a network (``Backend.gateway_tls``); taken out of the
#: environment, as the token is, and written where only the gateway reads them.
TLS_CERT_ENV = "PYBOX_TLS_CERT"
TLS_KEY_ENV = "PYBOX_TLS_KEY"
#: The gateway starts this many kernels as soon as it is up; the default kernel adopts
#: the first, so the first run does not wait for a kernel start.
PRESPAWN_ENV = "KG_PRESPAWN_COUNT"

#: The image's command and entry point, run as root: it applies the network policy named
#: by NETWORK_ENV (if any), then runs its arguments (default: GATEWAY_COMMAND) as
#: GATEWAY_USER, which runs kernels as SANDBOX_USER with no capabilities left.
INIT = "/usr/local/sbin/pybox-init"
#: Former name of INIT, kept for plugins.
NETWORK_INIT = INIT
#: Capabilities INIT needs (and checks for at start): CHOWN for the directories it
#: prepares, and what the gateway keeps to start kernels as another user (SETUID,
#: SETGID, SETPCAP) and to interrupt and stop them (KILL). No others are granted.
INIT_CAPS: tuple[str, ...] = ("CHOWN", "KILL", "SETGID", "SETUID", "SETPCAP")
#: What INIT needs besides, to apply a network policy.
NETWORK_POLICY_CAPS: tuple[str, ...] = ("NET_ADMIN",)
#: The policy, as INIT reads it: ``default[:ADDRESS,...]`` (the public internet,
#: not the listed addresses of the engine's host), ``none`` or ``allow:ENTRY,ENTRY,...``.
NETWORK_ENV = "PYBOX_NETWORK"
#: What the "default" policy never lets code reach (hard-coded in INIT, which
#: also blocks the container's gateway and the addresses NETWORK_ENV lists, and allows
#: port 53 of the resolvers in the container's /etc/resolv.conf): "this network",
#: private, shared (CGNAT), loopback, link-local (cloud metadata), multicast and reserved
#: IPv4; unspecified, loopback, IPv4-mapped, local-use NAT64, unique-local, link-local,
#: site-local and multicast IPv6.
DEFAULT_BLOCKED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)

#: Field the image's gateway adds to the ``status: restarting/dead`` message it sends
#: when a kernel dies, saying why (e.g. OOMKilled).
DEATH_REASON_FIELD = "pybox_reason"

#: Writable scratch on a read-only root filesystem: what the gateway and IPython write
#: at run time (connection files, config directories), with their size caps and whether
#: the sandbox user must own them (INIT gives them their owners; GATEWAY_HOME its
#: user). The image's other files stay read-only.
SCRATCH_MOUNTS: tuple[tuple[str, int, bool], ...] = (
    ("/tmp", 256 << 20, False),
    (GATEWAY_HOME, 16 << 20, False),
    (f"{SANDBOX_HOME}/.local", 64 << 20, True),
    (f"{SANDBOX_HOME}/.config", 16 << 20, True),
    (f"{SANDBOX_HOME}/.jupyter", 16 << 20, True),
)


def network_policy_value(network: str | tuple[str, ...], host_addresses: tuple[str, ...] = ()) -> str:
    """NETWORK_ENV's value for a policy other than "open"; ``host_addresses`` (the
    engine's host, for "default") are blocked besides DEFAULT_BLOCKED_NETWORKS."""
    if network == "default":
        return "default:" + ",".join(host_addresses) if host_addresses else "default"
    return "none" if network == "none" else "allow:" + ",".join(network)


def images_dir() -> Path:
    """The image definitions: ``images/`` of a source checkout, shipped inside the
    wheel as the package data ``pybox/images``."""
    source_tree = Path(__file__).resolve().parent.parent / "images"
    if (source_tree / "sandbox" / "Dockerfile").is_file():
        return source_tree
    packaged = Path(str(resources.files("pybox") / "images"))
    if (packaged / "sandbox" / "Dockerfile").is_file():
        return packaged
    raise FileNotFoundError(f"the sandbox image definition is missing (looked in {source_tree} and {packaged})")
