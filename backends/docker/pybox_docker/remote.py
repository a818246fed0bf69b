"""The remote Docker backend: a Docker engine on another host, reached through
``DOCKER_HOST=tcp://HOST:2376`` (TLS from ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``,
as the docker CLI takes them) or ``ssh://user@HOST``.

It assumes nothing about a shared filesystem or a shared network namespace:

- the sandbox's kernel gateway is published on the *remote* host's interfaces
  (``0.0.0.0`` there, or ``PYBOX_REMOTE_PUBLISH_IP``) and the client reaches it at
  the host named in ``DOCKER_HOST`` (or ``PYBOX_REMOTE_GATEWAY_HOST``), never at
  127.0.0.1. The gateway's traffic is TLS with a certificate pybox makes per sandbox
  and pins (``Backend.gateway_tls``, pybox.tls), and its token (also per sandbox)
  protects the port;
- the engine's own API must be encrypted and authenticated too: ``tcp://`` without
  ``DOCKER_TLS_VERIFY`` (plain HTTP, or TLS that does not check the engine's
  certificate) is refused unless ``PYBOX_ALLOW_INSECURE_ENGINE=1`` says the network is
  trusted;
- host-path bind mounts are refused (a path on this machine means nothing to the
  remote engine, and a path on the remote host is not the caller's): files move
  through the engine's archive API with ``Sandbox.upload`` / ``Sandbox.download``;
- ``ssh://``: the engine's API goes through SSH (docker-py: paramiko when installed,
  else the ``ssh`` binary), but the gateway port is not tunnelled. Starting a sandbox
  is refused with ``UnsupportedOperation`` unless ``PYBOX_REMOTE_GATEWAY_HOST`` says
  where the published port *is* reachable (a direct route, or a tunnel/port forward
  you set up). Engine-only operations (``pybox build --backend docker-remote``,
  images) work over ssh:// as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import docker
import docker.errors
import docker.utils

from pybox.backend import ALL_FEATURES, BINDS, Endpoint, LaunchPlan
from pybox.errors import BackendUnavailable, UnsupportedOperation
from pybox_docker.backend import UNAVAILABLE_HINT, DockerBackend

#: Address on the remote host the gateway port is published on (default: all).
PUBLISH_IP_ENV = "PYBOX_REMOTE_PUBLISH_IP"
#: Host the client connects to for the gateway (default: the host in DOCKER_HOST).
GATEWAY_HOST_ENV = "PYBOX_REMOTE_GATEWAY_HOST"
#: "1": accept an engine API without verified TLS (a network the user trusts).
INSECURE_ENGINE_ENV = "PYBOX_ALLOW_INSECURE_ENGINE"

SETUP_HINT = (
    "The docker-remote backend needs DOCKER_HOST naming a remote engine: "
    "DOCKER_HOST=tcp://HOST:2376 with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=DIR "
    "(DIR holding ca.pem, cert.pem and key.pem), or DOCKER_HOST=ssh://USER@HOST; "
    "for an engine on this machine use the docker backend"
)
TLS_HINT = (
    "Set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to a directory holding the client's "
    "ca.pem, cert.pem and key.pem (the files the engine's TLS set-up issued)"
)
REACH_HINT = (
    "Check that the remote engine is running and listening on the address in DOCKER_HOST, "
    "that this machine can reach it (firewall, VPN), and the TLS settings "
    "(DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)"
)
BINDS_REFUSED = (
    "the engine runs on another host and shares no filesystem with this one. Copy files "
    "in and out instead: Sandbox.upload(local, remote) and Sandbox.download(remote, local) "
    "move them through the engine's archive API"
)
SSH_REFUSED = (
    "DOCKER_HOST={docker_host}: over ssh:// the engine's API is tunnelled, but the sandbox's "
    "kernel gateway port is not, so pybox cannot reach it. Use DOCKER_HOST=tcp://HOST:2376 "
    "with TLS, or make the published port reachable (a direct route, or your own SSH port "
    "forward) and set " + GATEWAY_HOST_ENV + " to the host to connect to"
)


class RemoteDockerBackend(DockerBackend):
    name = "docker-remote"
    description = "Docker engine on another host (DOCKER_HOST=tcp://... with TLS, or ssh://...)"
    features = ALL_FEATURES - {BINDS}
    unsupported_hints = {BINDS: BINDS_REFUSED}
    gateway_tls = True

    def __init__(self) -> None:
        super().__init__()
        self.docker_host = os.environ.get("DOCKER_HOST", "").strip()

    # -- connection --------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return urlparse(self.docker_host).scheme.lower()

    @property
    def remote_host(self) -> str:
        """The engine's host as DOCKER_HOST names it (where published ports live)."""
        host = urlparse(self.docker_host).hostname
        if not host:
            raise BackendUnavailable(f"DOCKER_HOST={self.docker_host!r} names no host", SETUP_HINT)
        return host

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _connect(self) -> docker.APIClient:
        if not self.docker_host:
            raise BackendUnavailable("DOCKER_HOST is not set", SETUP_HINT)
        if self.scheme not in ("tcp", "ssh", "https", "http"):
            raise BackendUnavailable(f"DOCKER_HOST={self.docker_host} is not a remote engine address "
                                     f"(tcp:// or ssh://)", SETUP_HINT)
        self.remote_host  # noqa: B018 -- validates that a host is named
        self._refuse_insecure_engine()
        try:
            return _APIClient(timeout=60, use_ssh_client=self.scheme == "ssh" and not _has_paramiko(),
                              **docker.utils.kwargs_from_env())
        except docker.errors.TLSParameterError as exc:
            raise BackendUnavailable(f"the TLS settings for {self.docker_host} are not usable: "
                                     f"{_cert_path_problem() or exc}", TLS_HINT) from exc
        except docker.errors.DockerException as exc:
            raise BackendUnavailable(f"cannot reach the remote Docker engine at {self.docker_host}: "
                                     f"{_explain(exc)}", self._hint(exc)) from exc

    def _hint(self, exc: BaseException) -> str:
        text = str(exc)
        if "HTTP request to an HTTPS server" in text:
            return f"The engine at {self.docker_host} speaks TLS. " + TLS_HINT
        if "SSL" in text or "certificate" in text.lower():
            return ("The TLS handshake failed: check that DOCKER_CERT_PATH holds the CA and client "
                    "certificate issued for this engine, and that the engine's certificate names the "
                    "host in DOCKER_HOST")
        if self.scheme == "ssh":
            return ("Check that `ssh " + self.docker_host.removeprefix("ssh://") + " docker version` works "
                    "without a password prompt (key in ssh-agent, host key known)")
        return REACH_HINT

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """DockerBackend's translation, with messages and hints naming the remote set-up."""
        try:
            with super()._errors(action):
                yield
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if cause is None or exc.hint != UNAVAILABLE_HINT:
                raise
            raise BackendUnavailable(f"cannot reach the remote Docker engine at {self.docker_host} while "
                                     f"trying to {action}: {_explain(cause)}", self._hint(cause)) from cause

    # -- lifecycle -----------------------------------------------------------------------

    def _publish_ip(self) -> str:
        return os.environ.get(PUBLISH_IP_ENV, "").strip() or "0.0.0.0"

    def _gateway_host(self) -> str:
        explicit = os.environ.get(GATEWAY_HOST_ENV, "").strip()
        if explicit:
            return explicit
        publish = self._publish_ip()
        if publish not in ("0.0.0.0", "::", ""):
            return publish
        return self.remote_host

    def _check_usable(self) -> None:
        """Refuse, before anything reaches the engine, settings a sandbox cannot work with."""
        if not self.docker_host:
            raise BackendUnavailable("DOCKER_HOST is not set", SETUP_HINT)
        if self.scheme not in ("tcp", "ssh", "https", "http"):
            raise BackendUnavailable(f"DOCKER_HOST={self.docker_host} is not a remote engine address "
                                     f"(tcp:// or ssh://)", SETUP_HINT)
        if self.scheme == "ssh" and not os.environ.get(GATEWAY_HOST_ENV, "").strip():
            raise UnsupportedOperation(SSH_REFUSED.format(docker_host=self.docker_host))
        self._refuse_insecure_engine()

    def _refuse_insecure_engine(self) -> None:
        """An engine API in clear (or over TLS that trusts any certificate) hands whoever
        is on the path every sandbox's token and code: refused unless opted into."""
        if self.scheme == "ssh" or os.environ.get(INSECURE_ENGINE_ENV, "").strip() == "1":
            return
        if os.environ.get("DOCKER_TLS_VERIFY", "") != "":  # docker-py's and the CLI's reading
            return
        how = ("over TLS without verifying the engine's certificate (DOCKER_CERT_PATH is set, DOCKER_TLS_VERIFY "
               "is not)" if os.environ.get("DOCKER_CERT_PATH", "").strip() else "in clear (plain HTTP)")
        raise BackendUnavailable(
            f"DOCKER_HOST={self.docker_host} would reach the engine {how}: refused, since anyone on the network "
            f"path could read and change what pybox sends it",
            f"{TLS_HINT}; or use DOCKER_HOST=ssh://USER@HOST. To accept it on a network you trust, set "
            f"{INSECURE_ENGINE_ENV}=1")

    def engine_host(self) -> str | None:
        self._check_usable()
        return self.remote_host

    def adjust_plan(self, plan: LaunchPlan) -> None:
        self._check_usable()
        # The client's idea of a safe address (loopback) means the remote host's own
        # loopback there: publish where this client can reach the port.
        plan.ports = [dataclasses.replace(p, host_ip=self._publish_ip()) for p in plan.ports]

    def start(self, plan: LaunchPlan) -> str:
        if plan.binds:  # core refuses these first (features); kept for direct callers
            raise UnsupportedOperation(f"the docker-remote backend cannot bind-mount host paths: {BINDS_REFUSED}")
        if self.scheme == "ssh" and not os.environ.get(GATEWAY_HOST_ENV, "").strip():
            raise UnsupportedOperation(SSH_REFUSED.format(docker_host=self.docker_host))
        return super().start(plan)

    def endpoint(self, container_id: str, plan: LaunchPlan) -> Endpoint:
        local = super().endpoint(container_id, plan)
        return Endpoint(self._gateway_host(), local.port)


class _APIClient(docker.APIClient):
    """docker-py's client, keeping the engine's CA when REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE is set: requests lets those override a session's ``verify`` (it
    merges the environment per request), so docker-py would verify the engine's
    certificate against the system bundle and fail with CERTIFICATE_VERIFY_FAILED."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and (isinstance(self.verify, str) or self.verify is False):
            settings["verify"] = self.verify
        return settings


def _cert_path_problem() -> str:
    """What is wrong with DOCKER_CERT_PATH, in words naming it (docker-py's own
    message does not say which variable or file is at fault)."""
    cert_path = os.environ.get("DOCKER_CERT_PATH", "")
    directory = Path(cert_path).expanduser() if cert_path else Path.home() / ".docker"
    where = f"DOCKER_CERT_PATH={cert_path}" if cert_path else f"DOCKER_CERT_PATH is unset, so {directory}"
    if not directory.is_dir():
        return f"{where} is not a directory"
    missing = [name for name in ("ca.pem", "cert.pem", "key.pem") if not (directory / name).is_file()]
    if missing:
        return f"{where} lacks {', '.join(missing)}"
    return ""


def _explain(exc: BaseException) -> str:
    text = str(exc)
    if "HTTP request to an HTTPS server" in text:
        return "the engine expects TLS but this client spoke plain HTTP (" + text + ")"
    return text


def _has_paramiko() -> bool:
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return False
    return True
