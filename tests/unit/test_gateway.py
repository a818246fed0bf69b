"""The gateway's REST client, with its HTTP session replaced by a fake (no network)."""

from __future__ import annotations

import pytest
import requests

from pybox import ChannelError, InvalidArgument, Kernel, KernelError
from pybox.kernel.gateway import Gateway


class FakeResponse:
    def __init__(self, status_code=200, json_body=None, text=""):
        self.status_code = status_code
        self._json = json_body
        self.text = text
        self.content = text.encode() if text else (b"{}" if json_body is not None else b"")

    def json(self):
        return self._json


class FakeSession:
    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[tuple[str, str, dict]] = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url, kwargs))
        answer = self.responses.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def close(self):
        pass


def gateway_with(*responses, host="127.0.0.1") -> tuple[Gateway, FakeSession]:
    gateway = Gateway(host, 8888, "tok")
    assert gateway._http.headers["Authorization"] == "token tok"
    assert gateway._http.trust_env is False  # never through an HTTP proxy
    session = FakeSession(*responses)
    gateway._http = session
    return gateway, session


def test_urls_bracket_ipv6_hosts():
    assert Gateway("127.0.0.1", 1, "t").base_url == "http://127.0.0.1:1"
    assert Gateway("::1", 2, "t").base_url == "http://[::1]:2"
    assert Gateway("::1", 2, "t").ws_url("k") == "ws://[::1]:2/api/kernels/k/channels"


def test_create_and_control_kernels():
    gateway, session = gateway_with(FakeResponse(201, {"id": "k1"}), FakeResponse(204), FakeResponse(200),
                                    FakeResponse(204))
    assert gateway.create_kernel(env={"A": "1"}) == "k1"
    gateway.interrupt_kernel("k1")
    gateway.restart_kernel("k1")
    gateway.delete_kernel("k1")
    assert [(m, u.removeprefix("http://127.0.0.1:8888")) for m, u, _ in session.requests] == [
        ("POST", "/api/kernels"),
        ("POST", "/api/kernels/k1/interrupt"),
        ("POST", "/api/kernels/k1/restart"),
        ("DELETE", "/api/kernels/k1"),
    ]
    assert session.requests[0][2]["json"] == {"env": {"A": "1"}}
    assert session.requests[2][2]["timeout"] >= 60  # a restart can be slow


@pytest.mark.parametrize("response, error, text", [
    (FakeResponse(401), ChannelError, "refused the token"),
    (FakeResponse(403, text="Invalid token"), ChannelError, "refused the token"),
    (FakeResponse(404, text="not found"), KernelError, "kernel k9 does not exist"),
    (FakeResponse(500, text="internal trouble"), ChannelError, "500: internal trouble"),
    (requests.ConnectionError("refused"), ChannelError, "did not answer POST /api/kernels/k9/interrupt"),
])
def test_http_failures_become_pybox_errors(response, error, text):
    gateway, _ = gateway_with(response)
    with pytest.raises(error, match=text):
        gateway.interrupt_kernel("k9")


def test_ready_and_wait_ready():
    gateway, _ = gateway_with(requests.ConnectionError("not yet"), FakeResponse(503), FakeResponse(200))
    gateway.wait_ready(deadline=float("inf"), interval=0)
    gateway, _ = gateway_with(FakeResponse(403))
    with pytest.raises(ChannelError, match="refused the token"):
        gateway.ready()
    gateway, _ = gateway_with(FakeResponse(503))
    with pytest.raises(ChannelError, match="did not become ready"):
        gateway.wait_ready(deadline=0.0)


@pytest.mark.parametrize("port", [0, 70000, "8888", None])
def test_connect_validates_the_port(port):
    with pytest.raises(InvalidArgument, match="port"):
        Kernel.connect("127.0.0.1", port, "tok")


def test_connect_refuses_a_bool_port(monkeypatch):
    def must_not_connect(self, deadline, interval=0.02):
        raise AssertionError(f"connect went on to reach {self.base_url}")

    monkeypatch.setattr(Gateway, "wait_ready", must_not_connect)
    with pytest.raises(InvalidArgument, match="port"):
        Kernel.connect("127.0.0.1", True, "tok")
