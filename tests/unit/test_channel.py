"""The real KernelChannel (routing reader thread) over a fake websocket object."""

from __future__ import annotations

import queue
import threading

import pytest
import websocket
from fakes import binary_frame, idle, stdout

from pybox import ChannelError
from pybox.kernel import messages
from pybox.kernel.channel import KernelChannel

TEXT, BINARY, CLOSE = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CLOSE


class FakeWebSocket:
    """What KernelChannel uses of websocket-client's WebSocket; the server side is
    ``push()`` (a frame, or an exception recv_data raises)."""

    def __init__(self):
        self._frames: queue.SimpleQueue = queue.SimpleQueue()
        self.sent: list[str] = []
        self.send_error: BaseException | None = None
        self.shut_down = False

    def push(self, item, opcode=TEXT):
        self._frames.put(item if isinstance(item, BaseException) else (opcode, item))

    def recv_data(self, control_frame=False):
        item = self._frames.get(timeout=10)
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, payload):
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(payload)

    def send_close(self):
        self.push(b"", CLOSE)  # the server answers the close handshake

    def abort(self):
        self.push(websocket.WebSocketConnectionClosedException("aborted"))

    def settimeout(self, timeout):
        pass

    def shutdown(self):
        self.shut_down = True


class Recorder:
    """A sink (and on_unrouted / on_closed callback) that records what it gets."""

    def __init__(self):
        self.messages: list[dict] = []
        self.closed_with: list[BaseException | None] = []
        self.got = threading.Event()
        self.closed = threading.Event()

    def deliver(self, msg):
        self.messages.append(msg)
        self.got.set()

    def on_closed(self, error):
        self.closed_with.append(error)
        self.closed.set()


@pytest.fixture
def ws(monkeypatch):
    fake = FakeWebSocket()
    opened = {}

    def create_connection(url, **kwargs):
        opened.update(url=url, **kwargs)
        return fake

    monkeypatch.setattr(websocket, "create_connection", create_connection)
    fake.opened = opened
    return fake


@pytest.fixture
def channel_parts(ws):
    unrouted, ended = Recorder(), Recorder()
    channel = KernelChannel("ws://gw/api/kernels/k1/channels", "tok",
                            on_unrouted=unrouted.deliver, on_closed=ended.on_closed, name="test-reader")
    yield channel, unrouted, ended
    channel.close()


def test_connects_with_the_token(channel_parts, ws):
    assert ws.opened["url"] == "ws://gw/api/kernels/k1/channels"
    assert "Authorization: token tok" in ws.opened["header"]


def test_routes_by_parent_id(channel_parts, ws):
    channel, unrouted, _ = channel_parts
    a, b = Recorder(), Recorder()
    channel.register("id-a", a)
    channel.register("id-b", b)

    ws.push(messages.encode(stdout("to a", parent="id-a")))
    ws.push(messages.encode(stdout("to b", parent="id-b")).encode(), TEXT)  # text frame as bytes
    ws.push(binary_frame(stdout("to a, binary", parent="id-a"), [b"buf"]), BINARY)
    ws.push(messages.encode(stdout("stranger", parent="id-zzz")))
    ws.push(messages.encode(idle(parent=None)))
    ws.push(messages.encode(stdout("marker", parent="id-end")))
    end = Recorder()
    channel.register("id-end", end)
    assert end.got.wait(5)

    assert [m["content"]["text"] for m in a.messages] == ["to a", "to a, binary"]
    assert a.messages[1]["buffers"] == [b"buf"]
    assert [m["content"]["text"] for m in b.messages] == ["to b"]
    assert [messages.parent_id(m) for m in unrouted.messages] == ["id-zzz", None]


def test_unregistered_sink_gets_nothing_more(channel_parts, ws):
    channel, unrouted, _ = channel_parts
    sink = Recorder()
    channel.register("id", sink)
    ws.push(messages.encode(stdout("1", parent="id")))
    assert sink.got.wait(5)
    channel.unregister("id")
    channel.unregister("id")  # twice is fine
    ws.push(messages.encode(stdout("2", parent="id")))
    unrouted.got.clear()
    assert unrouted.got.wait(5)
    assert [m["content"]["text"] for m in sink.messages] == ["1"]
    assert unrouted.messages[-1]["content"]["text"] == "2"


def test_send_encodes_json(channel_parts, ws):
    channel, _, _ = channel_parts
    request = messages.execute_request("print('é')", "s")
    channel.send(request)
    assert messages.decode(ws.sent[0]) == request


def test_send_failure_is_a_channel_error(channel_parts, ws):
    channel, _, _ = channel_parts
    ws.send_error = websocket.WebSocketConnectionClosedException("socket is already closed")
    with pytest.raises(ChannelError, match="could not send") as info:
        channel.send(messages.execute_request("x", "s"))
    assert isinstance(info.value.__cause__, websocket.WebSocketException)


def test_connection_refused_is_a_channel_error(monkeypatch):
    def refuse(url, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(websocket, "create_connection", refuse)
    with pytest.raises(ChannelError, match="ws://gw/x") as info:
        KernelChannel("ws://gw/x", "tok")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_socket_error_reaches_on_closed(channel_parts, ws):
    channel, _, ended = channel_parts
    lost = websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
    ws.push(lost)
    assert ended.closed.wait(5)
    assert ended.closed_with == [lost]
    assert channel.closed
    with pytest.raises(ChannelError, match="closed"):
        channel.send(messages.execute_request("x", "s"))


def test_server_close_reaches_on_closed_without_error(channel_parts, ws):
    channel, _, ended = channel_parts
    ws.push(b"\x03\xe8", CLOSE)
    assert ended.closed.wait(5)
    assert ended.closed_with == [None]
    assert channel.closed


def test_undecodable_frame_closes_the_channel(channel_parts, ws):
    _, _, ended = channel_parts
    ws.push("{not json")
    assert ended.closed.wait(5)
    assert isinstance(ended.closed_with[0], ValueError)


def test_close_by_client_does_not_call_on_closed_and_is_idempotent(channel_parts, ws):
    channel, _, ended = channel_parts
    channel.close()
    channel.close()
    assert channel.closed
    assert ws.shut_down
    assert ended.closed_with == []
