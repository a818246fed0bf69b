"""The gateway's REST client, with its HTTP session replaced by a fake (no network)."""

from __future__ import annotations

import json

import pytest
import requests

from pybox import ChannelError, InvalidArgument, Kernel, KernelError
from pybox.kernel.gateway import Gateway


class FakeResponse:
    """A streamed response: the body is read through iter_content (as pybox does)."""

    def __init__(self, status_code=200, json_body=None, text="", body=None):
        self.status_code = status_code
        if body is None:
            body = text.encode() if text else (json.dumps(json_body).encode() if json_body is not None else b"")
        self.body = body
        self.closed = False

    def iter_content(self, chunk_size=1):
        for start in range(0, len(self.body), chunk_size):
            yield self.body[start:start + chunk_size]

    def close(self):
        self.closed = True


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


# -- hostile REST bodies: the gateway is the sandbox's -----------------------------------


@pytest.mark.parametrize("call, body, words", [
    ("create", b"not json", "not JSON"),
    ("create", b"[]", "wrong shape"),
    ("create", b'["k1"]', "wrong shape"),
    ("create", b'{"id": 5}', "not a kernel id"),
    ("create", b'{"id": null}', "not a kernel id"),
    ("create", b'{"id": "../../api/shutdown"}', "not a kernel id"),
    ("create", b'{"id": "' + b"a" * 200 + b'"}', "not a kernel id"),
    ("create", b'"k1"', "wrong shape"),
    ("create", b"\xff\xfe", "not JSON"),
    ("create", b"[" * 100_000, "not JSON"),
    ("list", b'{"id": "k1"}', "wrong shape"),
    ("list", b"[1, 2]", "wrong shape"),
    ("list", b'[{"id": ["k1"]}]', "not a kernel id"),
    ("list", b'[{"name": "python3"}]', "not a kernel id"),
    ("specs", b"[]", "wrong shape"),
    ("specs", b'{"kernelspecs": []}', "wrong shape"),
    ("specs", b'{"kernelspecs": {"python3": "spec"}}', "wrong shape"),
    ("specs", b'{"kernelspecs": {"python3": {"spec": []}}}', "wrong shape"),
    ("specs", b'{"kernelspecs": {"python3": {"spec": {"language": 3}}}}', "wrong shape"),
])
def test_unexpected_rest_bodies_are_channel_errors(call, body, words):
    gateway, _ = gateway_with(FakeResponse(200, body=body))
    method = {"create": gateway.create_kernel, "list": gateway.list_kernels, "specs": gateway.kernelspecs}[call]
    with pytest.raises(ChannelError, match=words) as info:
        method()
    if words == "not JSON":
        assert isinstance(info.value.__cause__, (ValueError, RecursionError))  # chained


def test_a_huge_rest_body_is_cut_off():
    gateway, session = gateway_with(FakeResponse(200, body=b"[" + b"0," * (5 << 20) + b"0]"))
    with pytest.raises(ChannelError, match="MAX_BODY_BYTES"):
        gateway.list_kernels()


def test_a_hostile_listing_is_not_adopted():
    # A listing that cannot be used is retried like a gateway still starting; then none is adopted.
    gateway, _ = gateway_with(FakeResponse(200, body=b'[{"id": {"not": "an id"}}]'))
    assert gateway.adopt_prespawned(wait=0) is None


def test_a_kernel_id_given_by_a_caller_is_checked():
    with pytest.raises(InvalidArgument, match="not a kernel id"):
        Kernel.connect("127.0.0.1", 8888, "tok", kernel_id="../x")


def test_hostile_rest_over_a_real_socket():
    """A real HTTP server answering with a body of the wrong shape, a body that never
    ends, and a gzip bomb: ChannelErrors, in bounded memory and time."""
    import gzip
    import http.server
    import threading
    import time

    bomb = gzip.compress(b" " * (64 << 20))  # 64 MB of spaces in ~64 KB

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/api/kernels":
                body = b'{"id": 5}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/api/kernelspecs":  # endless chunked body
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                except OSError:
                    pass
            else:
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                self.wfile.write(bomb)

        def do_POST(self):  # noqa: N802
            self.path = "/bomb"
            self.do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gateway = Gateway("127.0.0.1", server.server_address[1], "tok", request_timeout=10)
    try:
        with pytest.raises(ChannelError, match="wrong shape"):
            gateway.list_kernels()
        started = time.monotonic()
        with pytest.raises(ChannelError, match="MAX_BODY_BYTES"):
            gateway.kernelspecs()
        assert time.monotonic() - started < 10
        with pytest.raises(ChannelError, match="MAX_BODY_BYTES"):
            gateway.create_kernel()
    finally:
        server.shutdown()
        gateway.close()
