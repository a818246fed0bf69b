"""REST client for the kernel gateway: create, interrupt, restart and delete kernels.

Execution never goes through here (that is the websocket in ``channel.py``); these
are the rare control calls, so a plain ``requests.Session`` is enough.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import requests

from pybox.errors import ChannelError, InvalidArgument, KernelError

log = logging.getLogger(__name__)

#: How long ``adopt_prespawned`` waits for the prespawned kernel to be listed.
PRESPAWN_WAIT = 5.0


class Gateway:
    """One kernel gateway at ``http://host:port``, authenticated by ``token``."""

    def __init__(self, host: str, port: int, token: str, *, request_timeout: float = 30.0):
        self.host = host
        self.port = int(port)
        self.token = token
        self.request_timeout = request_timeout
        self.base_url = f"http://{_url_host(host)}:{self.port}"
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"token {token}"
        # The gateway is local or reached directly; never through an HTTP proxy.
        self._http.trust_env = False

    def ws_url(self, kernel_id: str) -> str:
        return f"ws://{_url_host(self.host)}:{self.port}/api/kernels/{kernel_id}/channels"

    def _request(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        url = self.base_url + path
        try:
            response = self._http.request(method, url, timeout=timeout or self.request_timeout, **kwargs)
        except requests.RequestException as exc:
            raise ChannelError(f"kernel gateway at {self.base_url} did not answer {method} {path}: {exc}") from exc
        if response.status_code == 401 or (response.status_code == 403 and "token" in response.text.lower()):
            raise ChannelError(f"kernel gateway at {self.base_url} refused the token ({response.status_code})")
        if response.status_code == 404 and path.startswith("/api/kernels/"):
            raise KernelError(f"kernel {path.split('/')[3]} does not exist on the gateway at {self.base_url}")
        if response.status_code >= 400:
            raise ChannelError(
                f"kernel gateway at {self.base_url}: {method} {path} failed with "
                f"{response.status_code}: {response.text[-2000:]}"
            )
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def ready(self, timeout: float = 1.0) -> bool:
        """True once the gateway answers its API with this token."""
        try:
            response = self._http.get(self.base_url + "/api", timeout=timeout)
        except requests.RequestException:
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
                raise ChannelError(f"kernel gateway at {self.base_url} did not become ready")
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
                return str(kernels[0]["id"])
            if time.monotonic() >= deadline:
                log.info("gateway %s: no prespawned kernel within %s s; creating one", self.base_url, wait)
                return None
            time.sleep(0.01)

    def list_kernels(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/kernels") or []

    def kernelspecs(self) -> dict[str, dict[str, Any]]:
        """The kernels the gateway can start (GET /api/kernelspecs): kernelspec name ->
        its spec (``argv``, ``display_name``, ``language``...)."""
        listed = (self._request("GET", "/api/kernelspecs") or {}).get("kernelspecs") or {}
        return {str(name): dict((entry or {}).get("spec") or {}) for name, entry in listed.items()}

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
        return str(self._request("POST", "/api/kernels", json=body)["id"])

    def interrupt_kernel(self, kernel_id: str) -> None:
        self._request("POST", f"/api/kernels/{kernel_id}/interrupt")

    def restart_kernel(self, kernel_id: str) -> None:
        self._request("POST", f"/api/kernels/{kernel_id}/restart", timeout=max(self.request_timeout, 60.0))

    def delete_kernel(self, kernel_id: str) -> None:
        self._request("DELETE", f"/api/kernels/{kernel_id}")

    def close(self) -> None:
        self._http.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
