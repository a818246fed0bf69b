"""A real Kernel, its real KernelChannel, and a hostile gateway: a websocket server on
127.0.0.1 (wsserver.py) playing a kernel that sends whatever the test wants. Every
attack is followed by a normal run: the kernel must stay usable, the caller untouched."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fakes import FakeGateway
from wsserver import TEXT, PausableProxy, ScriptedKernel, WsServer, frame_bytes, kmsg, normal_run

import pybox
from pybox import ChannelError, ErrorOutput, KernelError, Stdout
from pybox.kernel import Kernel
from pybox.kernel import channel as channel_module


class ServerGateway(FakeGateway):
    """The REST side of a gateway (recorded, faked); the websocket goes to ``port``."""

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    def ws_url(self, kernel_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels"


@pytest.fixture
def hostile():
    """(kernel, its scripted kernel, the server); the kernel is closed at the end."""
    script = ScriptedKernel()
    gone: set[str] = set()

    def handshake(headers, path):
        return b"HTTP/1.1 404 Not Found\r\n\r\n" if path.split("/")[3] in gone else None

    server = WsServer(on_message=script, handshake=handshake)
    gateway = ServerGateway(server.port)
    kernel = Kernel(gateway, "k1", interrupt_grace=0.3)
    server.gone = gone
    yield kernel, script, server
    kernel.close()
    server.close()


def attack(*frames: bytes):
    """A reaction: busy, the attack frames, then a normal end printing 'survived'."""

    def react(conn, parent):
        conn.send_msg(kmsg("status", {"execution_state": "busy"}, parent))
        for frame in frames:
            conn.raw(frame_bytes(TEXT, frame) if frame[:1] not in (b"\x81", b"\x82") else frame)
        for message in normal_run(parent, "survived")[1:]:
            conn.send_msg(message)

    return react


def hostile_messages(parent: str) -> list[bytes]:
    """Messages routed to the running execution whose content a protocol-abiding kernel
    would never send: each must be dropped (or made text), never raised."""
    bad = [
        kmsg("stream", {"name": "stdout", "text": 12345}, parent),
        kmsg("stream", {"name": ["stdout"], "text": "named oddly\n"}, parent),
        kmsg("display_data", {"data": ["not", "a", "bundle"], "metadata": {}}, parent),
        kmsg("display_data", {"data": {"image/png": "!!!not base64!!!", "text/plain": "img"}}, parent),
        kmsg("display_data", {"data": {"image/png": 42}}, parent),
        kmsg("execute_result", {"data": {"text/plain": {"nested": [1, 2]}}, "execution_count": "one"}, parent),
        kmsg("error", {"ename": ["List"], "evalue": {"a": 1}, "traceback": [1, None, {"x": "y"}]}, parent),
        kmsg("error", {"ename": "E", "evalue": "v", "traceback": "not a list"}, parent),
        kmsg("execute_input", {"execution_count": [1]}, parent),
        kmsg("status", {"execution_state": 7}, parent),
        kmsg("status", {"execution_state": {"idle": True}}, parent),
        kmsg("clear_output", {"wait": "maybe"}, parent),
        kmsg("no_such_message", {"x": 1}, parent),
    ]
    raw = [json.dumps(m).encode() for m in bad]
    raw.append(json.dumps({"header": {"msg_type": "stream"}, "parent_header": {"msg_id": [parent]},
                           "content": {"text": "x"}}).encode())
    raw.append(json.dumps({"header": [], "parent_header": {"msg_id": parent}}).encode())
    raw.append(json.dumps({"header": {"msg_type": "stream"}, "parent_header": {"msg_id": parent},
                           "content": "text"}).encode())
    raw.append(b"\xff\xfe not utf-8")
    raw.append(b"[1, 2, 3]")
    raw.append(frame_bytes(0x2, b"\x00\x00\x00\x09\x00"))  # binary framing, count past the frame
    return raw


def test_every_hostile_message_inside_a_run_is_dropped_and_the_kernel_stays_usable(hostile):
    kernel, script, _ = hostile

    def react(conn, parent):
        attack(*hostile_messages(parent))(conn, parent)

    script.queue(react)
    result = kernel.run("attack", timeout=10, check=False)
    assert result.stdout.endswith("survived")
    errors = [o for o in result.outputs if isinstance(o, ErrorOutput)]
    assert [e.ename for e in errors] == ["['List']", "E"]  # fields made text
    assert errors[0].traceback == "1\nNone\n{'x': 'y'}" and errors[1].traceback == ""
    repr(result)
    assert result.images == []  # the undecodable image is refused, not raised
    assert {"image/png": "!!!not base64!!!", "text/plain": "img"} in result.data
    assert kernel.run("print('next')", timeout=10).stdout == "print('next')"
    assert not kernel.closed


def test_an_oversized_message_fails_the_run_with_the_cap_named_and_the_next_run_reconnects(hostile, monkeypatch):
    kernel, script, server = hostile
    cap = kernel._channel.max_message_bytes
    script.queue(lambda conn, parent: conn.raw(frame_bytes(TEXT, b"", length=300 << 20)))
    started = time.monotonic()
    with pytest.raises(ChannelError) as info:
        kernel.run("flood", timeout=None)
    assert time.monotonic() - started < 5
    assert f"{cap:,}" in str(info.value) and "MAX_MESSAGE_BYTES" in str(info.value)
    assert kernel.run("print('after')", timeout=10).stdout == "print('after')"
    assert len(server.conns) == 2  # a new websocket to the same kernel


def test_a_dropped_connection_fails_the_run_and_the_next_run_reconnects_with_state(hostile):
    kernel, script, server = hostile
    script.queue(lambda conn, parent: (conn.send_msg(kmsg("status", {"execution_state": "busy"}, parent)),
                                       conn.drop()))
    with pytest.raises(ChannelError, match="closed"):
        kernel.run("crash the socket", timeout=10)
    assert kernel.run("again", timeout=10).stdout == "again"


def test_a_kernel_the_gateway_no_longer_has_is_closed_with_a_kernel_error(hostile):
    kernel, _, server = hostile
    server.gone.add("k1")
    server.next_conn().drop()
    assert _wait(lambda: kernel._channel.closed)
    with pytest.raises(KernelError, match="is gone") as info:
        kernel.run("x", timeout=10)
    assert not isinstance(info.value, ChannelError)
    assert kernel.closed


def test_keepalive_ends_a_run_without_timeout_on_a_half_open_connection(monkeypatch):
    """A TCP proxy between kernel and gateway stops forwarding (and closes nothing):
    run(timeout=None) must still end, with ChannelError, and the next run reconnects."""
    monkeypatch.setattr(channel_module, "PING_INTERVAL", 0.3)
    monkeypatch.setattr(channel_module, "PONG_TIMEOUT", 0.4)
    script = ScriptedKernel()
    server = WsServer(on_message=script)
    proxy = PausableProxy("127.0.0.1", server.port)
    kernel = Kernel(ServerGateway(proxy.port), "k1")
    try:
        assert kernel.run("before", timeout=10).stdout == "before"
        hang = threading.Event()
        script.queue(lambda conn, parent: (conn.send_msg(kmsg("status", {"execution_state": "busy"}, parent)),
                                           hang.wait(30)))
        execution = kernel.submit("runs long")
        time.sleep(0.2)
        proxy.pause()
        started = time.monotonic()
        with pytest.raises(ChannelError, match="sent nothing for"):
            execution.result(timeout=None)
        assert time.monotonic() - started < 0.3 + 0.4 + 1.5
        proxy.resume()
        assert kernel.run("after", timeout=10).stdout == "after"
        hang.set()
    finally:
        kernel.close()
        proxy.close()
        server.close()


def test_a_consumer_that_never_reads_does_not_block_other_kernels(monkeypatch):
    """One kernel floods an execution whose consumer stopped reading: its reader waits
    (backpressure), then leaves the consumer behind; another kernel runs meanwhile."""
    from pybox.kernel import execution as execution_module

    monkeypatch.setattr(execution_module, "LIVE_BUFFER_LIMIT", 50_000)
    monkeypatch.setattr(execution_module, "LIVE_STALL_SECONDS", 0.5)
    script = ScriptedKernel()
    server = WsServer(on_message=script)
    flooding = Kernel(ServerGateway(server.port), "k1")
    other = Kernel(ServerGateway(server.port), "k2")

    def flood(conn, parent):
        conn.send_msg(kmsg("status", {"execution_state": "busy"}, parent))
        for i in range(2000):
            conn.send_msg(kmsg("stream", {"name": "stdout", "text": f"{i:05d}\n"}, parent))
        for message in normal_run(parent, "end")[1:]:
            conn.send_msg(message)

    try:
        script.queue(flood)
        execution = flooding.submit("flood", max_output=None)
        events = execution.events(timeout=30)
        assert next(events) == Stdout("00000\n")  # then stop reading
        assert other.run("meanwhile", timeout=5).stdout == "meanwhile"
        result = execution.result(timeout=30)  # finished although nobody read the stream
        assert result.stdout.startswith("00000\n00001\n") and result.stdout.endswith("01999\nend")
        rest = "".join(o.text for o in events)  # the consumer comes back: nothing lost (max_output=None)
        assert rest == result.stdout[len("00000\n"):]
    finally:
        flooding.close()
        other.close()
        server.close()


def test_sandbox_run_opens_a_new_default_kernel_after_its_kernel_is_gone(fake_plugins, monkeypatch):
    from pybox.kernel.gateway import Gateway

    script = ScriptedKernel()
    gone: set[str] = set()
    server = WsServer(on_message=script,
                      handshake=lambda headers, path: b"HTTP/1.1 404 Not Found\r\n\r\n"
                      if path.split("/")[3] in gone else None)
    created = iter(["k2", "k3"])
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    monkeypatch.setattr(Gateway, "adopt_prespawned", lambda self, wait=5.0: "k1")
    monkeypatch.setattr(Gateway, "create_kernel", lambda self, name=None, env=None: next(created))
    monkeypatch.setattr(Gateway, "ws_url", lambda self, kid: f"ws://127.0.0.1:{server.port}/api/kernels/{kid}/channels")
    monkeypatch.setattr(Gateway, "delete_kernel", lambda self, kid: None)
    try:
        with pybox.Sandbox(backend="fake") as sb:
            assert sb.run("one", timeout=10).stdout == "one"
            first = sb.default_kernel
            gone.add("k1")
            server.conns[0].drop()  # the gateway shut the kernel down behind pybox's back
            assert _wait(lambda: first._channel.closed)
            with pytest.raises(KernelError, match="is gone"):
                sb.run("two", timeout=10)
            assert first.closed
            assert sb.run("three", timeout=10).stdout == "three"  # a fresh default kernel
            assert sb.default_kernel is not first and sb.default_kernel.id == "k2"
    finally:
        server.close()


def _wait(condition, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
