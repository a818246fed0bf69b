"""The real KernelChannel against a real websocket server on 127.0.0.1 (wsserver.py)
that sends exactly the bytes each test chooses: routing, sending, the end of the
connection, and every kind of frame a hostile gateway can send."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time

import pytest
from fakes import binary_frame, idle, msg, stdout
from wsserver import BINARY, CLOSE, PING, PONG, TEXT, WsServer, accept_header, frame_bytes

from pybox import ChannelError, InvalidArgument, KernelError
from pybox.kernel import channel as channel_module
from pybox.kernel import messages
from pybox.kernel.channel import KernelChannel


class Recorder:
    """A sink (and on_unrouted / on_closed callback) that records what it gets."""

    def __init__(self):
        self.messages: list[dict] = []
        self.closed_with: list[BaseException | None] = []
        self.got = threading.Event()
        self.closed = threading.Event()

    def deliver(self, message):
        self.messages.append(message)
        self.got.set()

    def on_closed(self, error):
        self.closed_with.append(error)
        self.closed.set()


@pytest.fixture
def server():
    srv = WsServer()
    yield srv
    srv.close()


@pytest.fixture
def parts(server):
    """(channel, server-side connection, unrouted recorder, closed recorder)."""
    unrouted, ended = Recorder(), Recorder()
    channel = KernelChannel(server.url(), "tok", on_unrouted=unrouted.deliver, on_closed=ended.on_closed,
                            name="test-reader")
    conn = server.next_conn()
    yield channel, conn, unrouted, ended
    channel.close()


def marker_routed(channel, conn) -> Recorder:
    """Send a good message to a fresh route and wait for it: everything sent before
    it has been handled, and the channel still works."""
    sink = Recorder()
    channel.register("id-marker", sink)
    conn.send_msg(stdout("marker", parent="id-marker"))
    assert sink.got.wait(5), "the channel stopped routing"
    channel.unregister("id-marker")
    return sink


# -- the basics -------------------------------------------------------------------------


def test_connects_with_the_token(parts):
    _, conn, _, _ = parts
    assert conn.headers["authorization"] == "token tok"
    assert conn.path == "/api/kernels/k1/channels"
    assert conn.headers["sec-websocket-version"] == "13"


def test_routes_by_parent_id(parts):
    channel, conn, unrouted, _ = parts
    a, b = Recorder(), Recorder()
    channel.register("id-a", a)
    channel.register("id-b", b)

    conn.send_msg(stdout("to a", parent="id-a"))
    conn.send_msg(stdout("to b", parent="id-b"))
    conn.send_binary(binary_frame(stdout("to a, binary", parent="id-a"), [b"buf"]))
    conn.send_msg(stdout("stranger", parent="id-zzz"))
    conn.send_msg(idle(parent=None))
    marker_routed(channel, conn)

    assert [m["content"]["text"] for m in a.messages] == ["to a", "to a, binary"]
    assert a.messages[1]["buffers"] == [b"buf"]
    assert [m["content"]["text"] for m in b.messages] == ["to b"]
    assert [messages.parent_id(m) for m in unrouted.messages] == ["id-zzz", None]


def test_fragmented_and_large_messages_are_assembled(parts):
    channel, conn, _, _ = parts
    sink = Recorder()
    channel.register("id", sink)
    text = json.dumps(stdout("x" * 300_000, parent="id")).encode()
    conn.raw(frame_bytes(TEXT, text[:1000], fin=False) + frame_bytes(PING, b"hi")
             + frame_bytes(0x0, text[1000:200_000], fin=False) + frame_bytes(0x0, text[200_000:]))
    assert sink.got.wait(5)
    assert sink.messages[0]["content"]["text"] == "x" * 300_000


def test_unregistered_sink_gets_nothing_more(parts):
    channel, conn, unrouted, _ = parts
    sink = Recorder()
    channel.register("id", sink)
    conn.send_msg(stdout("1", parent="id"))
    assert sink.got.wait(5)
    channel.unregister("id")
    channel.unregister("id")  # twice is fine
    conn.send_msg(stdout("2", parent="id"))
    marker_routed(channel, conn)
    assert [m["content"]["text"] for m in sink.messages] == ["1"]
    assert unrouted.messages[-1]["content"]["text"] == "2"


def test_send_encodes_json_in_a_masked_text_frame(parts):
    channel, conn, _, _ = parts
    request = messages.execute_request("print('é')", "s")
    channel.send(request)
    assert conn.received.get(timeout=5) == request


def test_code_with_lone_surrogates_is_sent_escaped(parts):
    channel, conn, _, _ = parts
    request = messages.execute_request("print('\ud800')", "s")
    channel.send(request)
    assert conn.received.get(timeout=5)["content"]["code"] == "print('\ud800')"


def test_too_large_a_request_is_refused_before_sending(parts):
    channel, _, _, _ = parts
    with pytest.raises(InvalidArgument, match="Sandbox.upload"):
        channel.send(messages.execute_request("x" * (11 << 20), "s"))


def test_connection_refused_is_a_channel_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ChannelError, match=f"127.0.0.1:{port}") as info:
        KernelChannel(f"ws://127.0.0.1:{port}/api/kernels/k/channels", "tok", connect_timeout=5)
    assert isinstance(info.value.__cause__, OSError)


def test_send_on_a_dead_socket_is_a_channel_error(parts):
    channel, conn, _, ended = parts
    conn.drop()
    assert ended.closed.wait(5)
    with pytest.raises(ChannelError, match="closed"):
        channel.send(messages.execute_request("x", "s"))


def test_the_end_of_the_socket_reaches_on_closed(parts):
    channel, conn, _, ended = parts
    conn.drop()
    assert ended.closed.wait(5)
    assert isinstance(ended.closed_with[0], ChannelError)
    assert "closed the connection" in str(ended.closed_with[0])
    assert channel.closed


def test_server_close_frame_reaches_on_closed_without_error(parts):
    channel, conn, _, ended = parts
    conn.close_frame()
    assert ended.closed.wait(5)
    assert ended.closed_with == [None]
    assert channel.closed


def test_close_by_client_does_not_call_on_closed_and_is_idempotent(parts):
    channel, conn, _, ended = parts
    channel.close()
    channel.close()
    assert channel.closed
    assert conn.closed.wait(5)  # the server got our close frame (or the end of the socket)
    assert ended.closed_with == []


def test_server_pings_are_answered(parts):
    channel, conn, _, _ = parts
    conn.frame(PING, b"are you there")
    marker_routed(channel, conn)
    # the client's pong is read by the server's reader; nothing else broke
    assert not channel.closed


# -- hostile frames: dropped, logged, the channel goes on --------------------------------

GOOD_HEADER = {"msg_id": "m", "msg_type": "stream"}
HOSTILE_TEXT_FRAMES = {
    "not JSON": b"{not json",
    "a JSON list": b"[1, 2, 3]",
    "a JSON string": b'"hello"',
    "JSON null": b"null",
    "header a list": json.dumps({"header": [1], "parent_header": {"msg_id": "id"}, "content": {}}).encode(),
    "no header": json.dumps({"parent_header": {"msg_id": "id"}, "content": {}}).encode(),
    "msg_type an int": json.dumps({"header": {"msg_type": 5}, "parent_header": {"msg_id": "id"}}).encode(),
    "parent msg_id a list": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": ["id"]}}).encode(),
    "parent msg_id a dict": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": {"a": 1}}}).encode(),
    "parent msg_id an int": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": 7}}).encode(),
    "parent_header a string": json.dumps({"header": GOOD_HEADER, "parent_header": "id"}).encode(),
    "content a list": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": "id"},
                                  "content": ["text"]}).encode(),
    "metadata a string": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": "id"},
                                     "metadata": "x"}).encode(),
    "channel a number": json.dumps({"header": GOOD_HEADER, "parent_header": {"msg_id": "id"},
                                    "channel": 3}).encode(),
    "invalid UTF-8": b'{"header": {"msg_type": "stream"}, "content": {"text": "\xff\xfe"}}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "a 100,000-digit number": b"1" * 100_000,
    "empty": b"",
}
HOSTILE_BINARY_FRAMES = {
    "too short": b"\x00\x00",
    "count zero": struct.pack("!II", 0, 8),
    "count past the frame": struct.pack("!II", 1_000_000, 8),
    "offset past the frame": struct.pack("!II", 1, 10_000) + b"{}",
    "offset inside the header": struct.pack("!III", 2, 0, 12) + b"{}",
    "offsets out of order": struct.pack("!III", 2, 14, 12) + b"{}{}",
    "JSON part not UTF-8": struct.pack("!II", 1, 8) + b"\xff",
    "JSON part not an object": struct.pack("!II", 1, 8) + b"[]",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXT_FRAMES))
def test_hostile_text_frame_is_dropped_and_the_channel_goes_on(parts, name, caplog):
    channel, conn, unrouted, ended = parts
    sink = Recorder()
    channel.register("id", sink)
    with caplog.at_level(logging.WARNING, logger="pybox.kernel.channel"):
        conn.send_text(HOSTILE_TEXT_FRAMES[name])
        marker_routed(channel, conn)
    assert sink.messages == [] and unrouted.messages == []
    assert not channel.closed and ended.closed_with == []
    assert channel.dropped == 1
    assert "dropped a message pybox cannot use" in caplog.text


@pytest.mark.parametrize("name", sorted(HOSTILE_BINARY_FRAMES))
def test_hostile_binary_frame_is_dropped_and_the_channel_goes_on(parts, name):
    channel, conn, unrouted, ended = parts
    sink = Recorder()
    channel.register("id", sink)
    conn.send_binary(HOSTILE_BINARY_FRAMES[name])
    marker_routed(channel, conn)
    assert sink.messages == [] and unrouted.messages == []
    assert not channel.closed and channel.dropped == 1


def test_unknown_message_types_are_routed_as_data(parts):
    channel, conn, _, _ = parts
    sink = Recorder()
    channel.register("id", sink)
    conn.send_msg(msg("no_such_type_ever", {"x": 1}, parent="id"))
    assert sink.got.wait(5)
    assert messages.msg_type(sink.messages[0]) == "no_such_type_ever"


def test_json_that_would_expand_past_the_cap_is_dropped_unparsed(server):
    channel = KernelChannel(server.url(), "tok", max_message_bytes=8 << 20)
    conn = server.next_conn()
    try:
        bomb = b"[" + b"[]," * 1_000_000 + b"[]]"  # 3 MB of JSON, ~70 MB of Python lists
        conn.send_text(bomb)
        marker_routed(channel, conn)
        assert channel.dropped == 1 and not channel.closed
    finally:
        channel.close()


def test_a_flood_of_bad_frames_logs_a_bounded_number_of_lines(parts, caplog):
    channel, conn, _, _ = parts
    with caplog.at_level(logging.WARNING, logger="pybox.kernel.channel"):
        conn.raw(frame_bytes(TEXT, b"garbage") * 5000)
        marker_routed(channel, conn)
    assert channel.dropped == 5000
    lines = [r for r in caplog.records if r.name == "pybox.kernel.channel"]
    assert 10 <= len(lines) <= 14  # the first ten, then one at 100, 1000
    assert "5000" not in caplog.text and "1000 messages dropped" in caplog.text


# -- hostile frames that end the connection -----------------------------------------------


def test_an_oversized_message_closes_the_channel_without_being_read(server):
    ended = Recorder()
    channel = KernelChannel(server.url(), "tok", on_closed=ended.on_closed, max_message_bytes=1 << 20)
    conn = server.next_conn()
    # Only the header is sent: announcing 300 MB must be enough to be refused.
    conn.raw(frame_bytes(TEXT, b"", length=300 << 20))
    assert ended.closed.wait(5)
    error = ended.closed_with[0]
    assert isinstance(error, ChannelError)
    assert "314,572,800 bytes" in str(error) and "1,048,576" in str(error) and "MAX_MESSAGE_BYTES" in str(error)
    assert channel.closed


def test_a_fragmented_message_past_the_cap_closes_the_channel(server):
    ended = Recorder()
    channel = KernelChannel(server.url(), "tok", on_closed=ended.on_closed, max_message_bytes=100_000)
    conn = server.next_conn()
    assert not channel.closed
    conn.raw(frame_bytes(TEXT, b"x" * 60_000, fin=False) + frame_bytes(0x0, b"x" * 60_000, fin=False))
    assert ended.closed.wait(5)
    assert "at least 120,000 bytes" in str(ended.closed_with[0])


PROTOCOL_BREACHES = {
    "masked": frame_bytes(TEXT, b"{}", masked=True),
    "reserved bits": frame_bytes(TEXT, b"{}", rsv=4),
    "reserved opcode": frame_bytes(0x3, b"{}"),
    "reserved control opcode": frame_bytes(0xB, b""),
    "continuation first": frame_bytes(0x0, b"{}"),
    "new message inside a fragmented one": frame_bytes(TEXT, b"{", fin=False) + frame_bytes(TEXT, b"}"),
    "long control frame": frame_bytes(PING, b"x" * 126),
    "fragmented control frame": frame_bytes(PONG, b"x", fin=False),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_BREACHES))
def test_a_breach_of_the_websocket_protocol_closes_the_channel(server, name):
    ended = Recorder()
    channel = KernelChannel(server.url(), "tok", on_closed=ended.on_closed)
    conn = server.next_conn()
    conn.raw(PROTOCOL_BREACHES[name])
    assert ended.closed.wait(5)
    assert "broke the websocket protocol" in str(ended.closed_with[0])
    assert channel.closed


# -- the handshake -----------------------------------------------------------------------


def answering(answer: bytes):
    return WsServer(handshake=lambda headers, path: answer)


@pytest.mark.parametrize("answer, error, words", [
    (b"HTTP/1.1 404 Not Found\r\n\r\n", KernelError, "does not exist"),
    (b"HTTP/1.1 403 Forbidden\r\n\r\n", ChannelError, "refused the token"),
    (b"HTTP/1.1 500 Oops\r\n\r\n", ChannelError, "refused the websocket upgrade"),
    (b"garbage\r\n\r\n", ChannelError, "refused the websocket upgrade"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
     ChannelError, "not a websocket handshake"),
])
def test_a_bad_answer_to_the_upgrade_is_refused(answer, error, words):
    server = answering(answer)
    try:
        with pytest.raises(error, match=words):
            KernelChannel(server.url(), "tok", connect_timeout=5)
    finally:
        server.close()


def test_an_extension_pybox_did_not_offer_is_refused():
    def answer(headers, path):
        return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: "
                f"permessage-deflate\r\nSec-WebSocket-Accept: {accept_header(headers['sec-websocket-key'])}"
                "\r\n\r\n").encode()

    server = WsServer(handshake=answer)
    try:
        with pytest.raises(ChannelError, match="extensions"):
            KernelChannel(server.url(), "tok", connect_timeout=5)
    finally:
        server.close()


def test_endless_upgrade_headers_are_cut_off():
    server = answering(b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"a" * (1 << 20))
    try:
        with pytest.raises(ChannelError, match="more than 65,536 bytes of headers"):
            KernelChannel(server.url(), "tok", connect_timeout=5)
    finally:
        server.close()


def test_a_silent_upgrade_times_out():
    server = answering(b"HTTP/1.1 101 Switching")  # and then nothing
    try:
        started = time.monotonic()
        with pytest.raises(ChannelError, match="did not answer the websocket upgrade"):
            KernelChannel(server.url(), "tok", connect_timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        server.close()


def test_frames_sent_right_after_the_upgrade_are_kept():
    def answer(headers, path):
        return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_header(headers['sec-websocket-key'])}\r\n\r\n").encode() \
            + frame_bytes(TEXT, json.dumps(stdout("early", parent=None)).encode())

    server = WsServer(handshake=answer)
    unrouted = Recorder()
    channel = KernelChannel(server.url(), "tok", on_unrouted=unrouted.deliver)
    try:
        assert unrouted.got.wait(5)
        assert unrouted.messages[0]["content"]["text"] == "early"
    finally:
        channel.close()
        server.close()


# -- keepalive and stuck peers -------------------------------------------------------------


def test_keepalive_finds_a_silent_peer_dead(server):
    ended = Recorder()
    channel = KernelChannel(server.url(), "tok", on_closed=ended.on_closed, ping_interval=0.2, pong_timeout=0.3)
    conn = server.next_conn()
    time.sleep(0.8)
    assert not channel.closed and conn.pings >= 1  # pings answered: alive
    conn.pause()  # open, but answering nothing
    started = time.monotonic()
    assert ended.closed.wait(5)
    assert time.monotonic() - started < 0.2 + 0.3 + 0.5
    assert "sent nothing for" in str(ended.closed_with[0])


def test_a_peer_that_stops_reading_fails_the_send(server):
    ended = Recorder()
    channel = KernelChannel(server.url(), "tok", on_closed=ended.on_closed, send_timeout=0.5,
                            ping_interval=60)
    conn = server.next_conn()
    conn.pause()
    started = time.monotonic()
    with pytest.raises(ChannelError, match="read nothing"):
        for _ in range(100):  # fill the socket buffers, then block
            channel.send(messages.execute_request("x" * (8 << 20), "s"))
    assert time.monotonic() - started < 10
    assert ended.closed.wait(5)
    assert channel.closed


def test_default_limits_are_the_module_constants(monkeypatch, server):
    monkeypatch.setattr(channel_module, "PING_INTERVAL", 1.5)
    monkeypatch.setattr(channel_module, "MAX_MESSAGE_BYTES", 12345)
    channel = KernelChannel(server.url(), "tok")
    try:
        assert channel.ping_interval == 1.5 and channel.max_message_bytes == 12345
    finally:
        channel.close()


def test_close_while_the_reader_waits_returns_quickly(server):
    channel = KernelChannel(server.url(), "tok")
    server.next_conn()
    started = time.monotonic()
    channel.close()
    assert time.monotonic() - started < 1.5


def test_binary_opcode_and_close_frame_constants_are_the_rfcs():
    assert (TEXT, BINARY, CLOSE) == (channel_module.OP_TEXT, channel_module.OP_BINARY, channel_module.OP_CLOSE)
