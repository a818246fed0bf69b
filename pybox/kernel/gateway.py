"""REST client for the kernel gateway: create, interrupt, restart and delete kernels.

Execution never goes through here (that is the websocket in ``channel.py``); these
are the rare control calls, so a plain ``requests.Session`` is enough.

The gateway is the sandbox's: its answers are read as hostile. A body is read up to
``MAX_BODY_BYTES`` within the request's timeout, and anything that is not JSON of the
shape expected (a list of kernels, an object with a kernel id...) raises ChannelError,
chained to the parse error when there is one.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from typing import Any, Callable

import requests
import requests.adapters

from pybox.errors import ChannelError, InvalidArgument, KernelError, PyboxError
from pybox.tls import GatewayCertificate

log = logging.getLogger(__name__)

#: How long ``adopt_prespawned`` waits for the prespawned kernel to be listed.
PRESPAWN_WAIT = 5.0
#: The largest REST body read from the gateway (its answers are a few KB).
MAX_BODY_BYTES = 8 * 1024 * 1024

# Jupyter kernel ids are UUIDs; a kernel id becomes a URL path segment.
_KERNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_kernel_id(value: object, error: type[PyboxError] = ChannelError) -> str:
    """``value`` if it can be a kernel id (letters, digits, ``-``, ``_``, ``.``; at most
    128), else ``error`` (ChannelError: the gateway said it; InvalidArgument: a caller)."""
    if not isinstance(value, str) or not _KERNEL_ID.fullmatch(value):
        raise error(f"{value!r} is not a kernel id (a UUID such as '0f1e...', letters, digits, '-', '_', '.')")
    return value


class _PinnedTLSAdapter(requests.adapters.HTTPAdapter):
    """HTTPS trusting one certificate: a context of its own that trusts only it, no CA
    bundle (requests would load certifi's into the context), and urllib3's fingerprint
    check of the exact certificate besides."""

    def __init__(self, certificate: GatewayCertificate):
        self._certificate = certificate
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._certificate.client_context()
        kwargs["assert_hostname"] = False
        kwargs["assert_fingerprint"] = self._certificate.fingerprint
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests' version points the connection at its CA bundle, which urllib3 then
        # loads into the pinned context: any publicly trusted certificate would pass.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


class Gateway:
    """One kernel gateway at ``http://host:port``, authenticated by ``token``; at
    ``https://`` (and ``wss://``) when ``certificate`` is given: the sandbox's own
    (a remote engine's), the only one trusted."""

    def __init__(self, host: str, port: int, token: str, *, request_timeout: float = 30.0,
                 certificate: GatewayCertificate | None = None):
        self.host = host
        self.port = int(port)
        self.token = token
        self.request_timeout = request_timeout
        self.certificate = certificate
        scheme = "https" if certificate is not None else "http"
        self.base_url = f"{scheme}://{_url_host(host)}:{self.port}"
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"token {token}"
        # The gateway is local or reached directly; never through an HTTP proxy.
        self._http.trust_env = False
        if certificate is not None:
            self._http.mount("https://", _PinnedTLSAdapter(certificate))

    def ws_url(self, kernel_id: str) -> str:
        scheme = "wss" if self.certificate is not None else "ws"
        return f"{scheme}://{_url_host(self.host)}:{self.port}/api/kernels/{kernel_id}/channels"

    def _request(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        url = self.base_url + path
        limit = timeout or self.request_timeout
        deadline = time.monotonic() + limit
        try:
            response = self._http.request(method, url, timeout=limit, stream=True, **kwargs)
            try:
                body = self._read_body(response, method, path, deadline)
            finally:
                response.close()
        except requests.RequestException as exc:
            raise ChannelError(f"kernel gateway at {self.base_url} did not answer {method} {path}: {exc}") from exc
        status = response.status_code
        text = body[-2000:].decode("utf-8", errors="replace")
        if status == 401 or (status == 403 and "token" in text.lower()):
            raise ChannelError(f"kernel gateway at {self.base_url} refused the token ({status})")
        if status == 404 and path.startswith("/api/kernels/"):
            raise KernelError(f"kernel {path.split('/')[3]} does not exist on the gateway at {self.base_url}")
        if status >= 400:
            raise ChannelError(f"kernel gateway at {self.base_url}: {method} {path} failed with {status}: {text}")
        if status == 204 or not body:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ChannelError(f"kernel gateway at {self.base_url} answered {method} {path} with a body that is "
                               f"not JSON: {body[:200]!r}") from exc

    def _read_body(self, response: requests.Response, method: str, path: str, deadline: float) -> bytes:
        """The body, up to MAX_BODY_BYTES and within the deadline (ChannelError past either)."""
        chunks = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ChannelError(f"kernel gateway at {self.base_url} answered {method} {path} with more than "
                                   f"{MAX_BODY_BYTES:,} bytes (pybox.kernel.gateway.MAX_BODY_BYTES)")
            if time.monotonic() > deadline:
                raise ChannelError(f"kernel gateway at {self.base_url} did not finish answering {method} {path} "
                                   f"in time")
            chunks.append(chunk)
        return b"".join(chunks)

    def _unexpected(self, method: str, path: str, body: object, expected: str) -> ChannelError:
        shown = repr(body)
        return ChannelError(f"kernel gateway at {self.base_url} answered {method} {path} with JSON of the wrong "
                            f"shape (expected {expected}): {shown[:200]}")

    def ready(self, timeout: float = 1.0) -> bool:
        """True once the gateway answers its API with this token."""
        try:
            response = self._http.get(self.base_url + "/api", timeout=timeout, stream=True)
            response.close()  # the status is the answer: no body is read
        except requests.RequestException as exc:
            mismatch = _certificate_mismatch(exc)
            if mismatch is not None:  # not a gateway still starting: someone else answers
                raise ChannelError(f"kernel gateway at {self.base_url} did not present the sandbox's certificate "
                                   f"(pinned by pybox): {mismatch}; the token was not sent") from exc
            return False
        if response.status_code in (401, 403):
            raise ChannelError(f"kernel gateway at {self.base_url} refused the token ({response.status_code})")
        return response.status_code == 200

    def wait_ready(self, deadline: float, interval: float = 0.02) -> None:
        """Poll until the gateway answers; raises ChannelError at ``deadline`` (monotonic)."""
        while True:
            if self.ready(timeout=max(0.2, min(2.0, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                hint = ("" if self.certificate is not None else
                        " (a sandbox on a remote engine speaks TLS: pass its gateway_certificate)")
                raise ChannelError(f"kernel gateway at {self.base_url} did not become ready{hint}")
            time.sleep(interval)

    def wait_until_ready(self, deadline: float, check_alive: Callable[[], None] | None = None) -> bool:
        """Poll until the gateway answers (True), calling ``check_alive`` now and then
        (it raises when the container will never answer, e.g. it exited); False at
        ``deadline`` (monotonic). A refused token raises ChannelError at once."""
        checks = 0
        while True:
            if self.ready(timeout=0.5):
                return True
            checks += 1
            if check_alive is not None and checks % 10 == 0:
                check_alive()
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def adopt_prespawned(self, wait: float = PRESPAWN_WAIT) -> str | None:
        """The id of the kernel the gateway prespawned at start (PRESPAWN_ENV), or None
        when none is listed within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                kernels = self.list_kernels()
            except ChannelError as exc:
                # The gateway answers 500 while the prespawned kernel is half made
                # (jupyter_server reads its last_activity before it is set): retry.
                log.debug("gateway %s: listing kernels failed, retrying: %s", self.base_url, exc)
                kernels = []
            if kernels:
                return str(kernels[0]["id"])  # checked by list_kernels
            if time.monotonic() >= deadline:
                log.info("gateway %s: no prespawned kernel within %s s; creating one", self.base_url, wait)
                return None
            time.sleep(0.01)

    def list_kernels(self) -> list[dict[str, Any]]:
        """The gateway's kernels, each an object with a valid ``id`` (ChannelError otherwise)."""
        kernels = self._request("GET", "/api/kernels") or []
        if not isinstance(kernels, list) or not all(isinstance(k, dict) for k in kernels):
            raise self._unexpected("GET", "/api/kernels", kernels, "a list of kernel objects")
        for kernel in kernels:
            check_kernel_id(kernel.get("id"))
        return kernels

    def kernelspecs(self) -> dict[str, dict[str, Any]]:
        """The kernels the gateway can start (GET /api/kernelspecs): kernelspec name ->
        its spec (``argv``, ``display_name``, ``language``...)."""
        body = self._request("GET", "/api/kernelspecs") or {}
        listed = body.get("kernelspecs") if isinstance(body, dict) else None
        if not isinstance(listed, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("spec"), dict)
                                                   for entry in listed.values()):
            raise self._unexpected("GET", "/api/kernelspecs", body, '{"kernelspecs": {name: {"spec": {...}}}}')
        specs = {str(name): dict(entry["spec"]) for name, entry in listed.items()}
        for name, spec in specs.items():
            language = spec.get("language")
            if language is not None and not isinstance(language, str):
                raise self._unexpected("GET", "/api/kernelspecs", {name: spec}, "a language that is a string")
        return specs

    def kernelspec(self, name: str, where: str = "") -> dict[str, Any]:
        """The spec of kernelspec ``name`` (matched case-insensitively, as jupyter_client
        does). InvalidArgument naming the kernels there are when the gateway has none
        of that name; ``where`` says whose they are in that message (e.g. the image)."""
        specs = self.kernelspecs()
        found = specs.get(name) or specs.get(name.lower())
        if found is None:
            have = ", ".join(sorted(specs)) or "none"
            raise InvalidArgument(
                f"no kernel named {name!r} {where or f'on the gateway at {self.base_url}'} (it has: {have}); "
                "add one to the image with `pybox build --kernel REQUIREMENT[:INSTALL_MODULE]`")
        return found

    def create_kernel(self, name: str | None = None, env: dict[str, str] | None = None) -> str:
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if env:
            body["env"] = env
        created = self._request("POST", "/api/kernels", json=body)
        if not isinstance(created, dict):
            raise self._unexpected("POST", "/api/kernels", created, 'an object with the new kernel\'s "id"')
        return check_kernel_id(created.get("id"))

    def kernel_exists(self, kernel_id: str) -> bool:
        """Whether the gateway still has the kernel (GET /api/kernels/<id>)."""
        try:
            self._request("GET", f"/api/kernels/{kernel_id}")
        except ChannelError:
            raise
        except KernelError:  # 404
            return False
        return True

    def interrupt_kernel(self, kernel_id: str) -> None:
        self._request("POST", f"/api/kernels/{kernel_id}/interrupt")

    def restart_kernel(self, kernel_id: str) -> None:
        self._request("POST", f"/api/kernels/{kernel_id}/restart", timeout=max(self.request_timeout, 60.0))

    def delete_kernel(self, kernel_id: str) -> None:
        self._request("DELETE", f"/api/kernels/{kernel_id}")

    def close(self) -> None:
        self._http.close()


def _certificate_mismatch(exc: BaseException) -> str | None:
    """The verification error inside a requests exception, if the TLS peer's
    certificate was refused (requests wraps urllib3's error, which wraps ssl's)."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current)
        if "Fingerprints did not match" in str(current):  # urllib3's assert_fingerprint
            return "certificate fingerprint mismatch"
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
