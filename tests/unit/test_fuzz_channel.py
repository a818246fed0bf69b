"""Property-based: whatever frames a hostile gateway sends (text or binary, JSON of any
shape, garbage bytes, broken binary framings), the real channel's handling code raises
nothing, routes nothing where it does not belong, the execution's Result can always be
read, and the channel keeps working."""

from __future__ import annotations

import base64
import json
import struct
import threading

import pytest
from fakes import binary_frame, png_base64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsserver import WsServer

from pybox.kernel import messages
from pybox.kernel.channel import OP_BINARY, OP_TEXT, KernelChannel
from pybox.kernel.execution import Execution


class StubOwner:
    """The kernel side an Execution talks to; does nothing."""

    id = "fuzz-kernel"

    def arm(self, execution, deadline, timeout):
        pass

    def cancel_execution(self, execution):
        pass

    def interrupt_for(self, execution):
        pass

    def execution_settled(self, execution):
        pass

    def execution_finished(self, execution):
        pass


class Marker:
    def __init__(self):
        self.got = threading.Event()

    def deliver(self, message):
        self.got.set()


json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
             | st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda children: st.lists(children, max_size=4)
                          | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
image_payload = st.sampled_from([
    png_base64((3, 2)),
    base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 99_999, 99_999)).decode(),
    "not base64 !!", "", "é",
])
bundle = st.dictionaries(
    st.sampled_from(["text/plain", "image/png", "image/jpeg", "image/gif", "image/webp", "text/html"]),
    st.text(max_size=20) | image_payload | json_value, max_size=3)
KNOWN_TYPES = ["stream", "display_data", "update_display_data", "execute_result", "error", "status",
               "execute_input", "execute_reply", "clear_output", "comm_msg", ""]
msg_type = st.one_of(st.sampled_from(KNOWN_TYPES), st.sampled_from(KNOWN_TYPES), st.text(max_size=8))
fields = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["stdout", "stderr"]) | json_value,
    "text": st.text(max_size=30) | json_value,
    "data": bundle | json_value,
    "metadata": st.dictionaries(st.text(max_size=5), json_value, max_size=2) | json_value,
    "execution_state": st.sampled_from(["busy", "idle", "restarting", "dead", "starting"]) | json_value,
    "execution_count": st.integers() | json_value,
    "ename": st.text(max_size=10) | json_value,
    "evalue": st.text(max_size=10) | json_value,
    "traceback": st.lists(st.text(max_size=10) | json_value, max_size=3) | json_value,
    "status": st.sampled_from(["ok", "error", "aborted", "abort"]) | json_value,
    "payload": st.lists(st.fixed_dictionaries({"source": st.just("page") | json_value,
                                               "data": bundle | json_value}), max_size=2) | json_value,
})
content = st.one_of(fields, fields, fields, json_value)
parent = st.one_of(st.just("target"), st.just("target"), st.just("someone-else"), json_value)
# Mostly well-formed envelopes (so the execution's handling is reached), some broken ones.
envelope = st.fixed_dictionaries({
    "header": st.fixed_dictionaries({"msg_type": msg_type}, optional={"msg_id": st.text(max_size=5)}),
    "parent_header": st.fixed_dictionaries({"msg_id": parent}),
    "content": content,
}, optional={"metadata": json_value, "channel": st.sampled_from(["iopub", "shell"]) | json_value})
broken = st.fixed_dictionaries({}, optional={
    "header": st.fixed_dictionaries({"msg_type": msg_type}) | json_value,
    "parent_header": st.fixed_dictionaries({}, optional={"msg_id": parent}) | json_value,
    "content": content,
    "metadata": json_value,
    "channel": json_value,
    "msg_type": msg_type,
})
message = st.one_of(envelope, envelope, envelope, broken, json_value)


def _framing(count: int, offsets: list[int], tail: bytes) -> bytes:
    return struct.pack(f"!I{len(offsets)}I", count, *offsets) + tail


text_frames = (message.map(lambda m: json.dumps(m).encode()) | st.binary(max_size=300)
               | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
binary_frames = (st.binary(max_size=300)
                 | st.builds(_framing, st.integers(0, 2**32 - 1) | st.integers(0, 6),
                             st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 200), max_size=6),
                             st.binary(max_size=100))
                 | st.builds(lambda m, bufs: binary_frame(m, bufs), message.filter(lambda m: isinstance(m, dict)),
                             st.lists(st.binary(max_size=20), max_size=3)))
frames = st.lists(st.tuples(st.just(OP_TEXT), text_frames) | st.tuples(st.just(OP_BINARY), binary_frames),
                  min_size=1, max_size=8)


@pytest.fixture(scope="module")
def live_channel():
    server = WsServer()
    unrouted: list = []
    channel = KernelChannel(server.url(), "tok", on_unrouted=unrouted.append)
    conn = server.next_conn()
    yield channel, conn, unrouted
    channel.close()
    server.close()


def check_still_works(channel, conn):
    marker = Marker()
    channel.register("marker", marker)
    conn.send_msg({"header": {"msg_type": "stream"}, "parent_header": {"msg_id": "marker"},
                   "content": {"name": "stdout", "text": "alive"}})
    assert marker.got.wait(5), "the channel stopped working"
    channel.unregister("marker")
    assert not channel.closed


def read_everything(execution: Execution) -> None:
    result = execution._result
    seen = [result.text, result.stdout, result.stderr, result.data, result.outputs, result.truncated,
            result.images, repr(result), repr(execution)]
    assert all(value is not None for value in seen)
    for output in result.outputs:
        getattr(output, "image", None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames)
def test_handling_arbitrary_frames_never_raises(live_channel, batch):
    channel, conn, unrouted = live_channel
    execution = Execution(StubOwner(), messages.execute_request("fuzz", "s"), "fuzz", max_output=1000)
    channel.register("target", execution)
    try:
        for opcode, payload in batch:
            channel._handle(opcode, payload)  # the reader thread's handling of one message
        read_everything(execution)
        for msg in unrouted:  # what went unrouted is still a checked message
            assert isinstance(msg.get("header"), dict) and isinstance(msg.get("content"), dict)
        unrouted.clear()
    finally:
        channel.unregister("target")
    assert not channel.closed
    assert channel.handler_errors == 0  # nothing raised out of routing and the execution's handling


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames)
def test_arbitrary_frames_through_the_socket_leave_the_channel_working(live_channel, batch):
    channel, conn, unrouted = live_channel
    execution = Execution(StubOwner(), messages.execute_request("fuzz", "s"), "fuzz")
    channel.register("target", execution)
    try:
        for opcode, payload in batch:
            conn.frame(opcode, payload)
        check_still_works(channel, conn)
        read_everything(execution)
        assert channel.handler_errors == 0
    finally:
        channel.unregister("target")
        unrouted.clear()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200))
def test_decode_raises_only_bad_message(frame):
    try:
        decoded = messages.decode(frame)
    except messages.BadMessage:
        return
    assert isinstance(decoded["header"], dict) and isinstance(decoded["content"], dict)
    parent = messages.parent_id(decoded)
    assert parent is None or isinstance(parent, str)
    try:
        messages.to_output(decoded)
    except messages.BadMessage:
        pass
