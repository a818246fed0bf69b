"""The Jupyter message format: framing, headers, typed outputs, ANSI stripping."""

from __future__ import annotations

import json

import pytest
from fakes import binary_frame, display, error, execute_result, msg, png_base64, status, stderr, stdout

from pybox import DisplayData, ErrorOutput, ExecuteResult, ExecutionError, Result, Stderr, Stdout
from pybox.errors import strip_ansi
from pybox.kernel import messages


def test_decode_binary_frame_with_buffers():
    message = {"header": {"msg_id": "m1", "msg_type": "comm_msg"}, "parent_header": {"msg_id": "p1"},
               "content": {"data": {"é": "ü"}}, "channel": "iopub"}
    frame = binary_frame(message, [b"\x00\x01\x02\xff", b"", b"tail bytes"])

    decoded = messages.decode(frame)
    assert decoded["header"] == message["header"]
    assert decoded["content"] == {"data": {"é": "ü"}}
    assert decoded["buffers"] == [b"\x00\x01\x02\xff", b"", b"tail bytes"]
    assert messages.parent_id(decoded) == "p1"
    assert messages.msg_type(decoded) == "comm_msg"


def test_decode_binary_frame_without_buffers():
    message = {"header": {"msg_id": "m2", "msg_type": "status"}, "content": {"execution_state": "idle"}}
    decoded = messages.decode(binary_frame(message, []))
    assert decoded["content"] == {"execution_state": "idle"}
    assert decoded["buffers"] == []


def test_decode_text_frame_and_encode_round_trip():
    message = stdout("héllo\n", parent="abc")
    text = messages.encode(message)
    assert isinstance(text, str)
    assert "héllo" in text  # not \u-escaped
    assert messages.decode(text) == message


def test_decode_garbage_is_a_value_error():
    # the channel's reader treats ValueError as a broken socket
    with pytest.raises(ValueError):
        messages.decode("{not json")


def test_execute_request_shape():
    request = messages.execute_request("print(1)", "session-1")
    header = request["header"]
    assert header["msg_type"] == "execute_request"
    assert header["session"] == "session-1"
    assert header["msg_id"] and isinstance(header["date"], str)
    assert request["parent_header"] == {}
    assert request["channel"] == "shell"
    assert request["content"]["code"] == "print(1)"
    assert request["content"]["allow_stdin"] is False
    json.dumps(request)  # must be serialisable as is
    assert messages.execute_request("x", "s")["header"]["msg_id"] != header["msg_id"]


def test_parent_id_and_msg_type_tolerate_missing_fields():
    assert messages.parent_id({}) is None
    assert messages.parent_id({"parent_header": None}) is None
    assert messages.parent_id({"parent_header": {}}) is None
    assert messages.msg_type({}) == ""
    assert messages.msg_type({"msg_type": "stream"}) == "stream"  # flat form


def test_to_output_maps_every_output_type():
    png = png_base64()
    assert messages.to_output(stdout("o")) == Stdout("o")
    assert messages.to_output(stderr("e")) == Stderr("e")
    shown = messages.to_output(display({"image/png": png}, {"image/png": {"width": 7}}))
    assert type(shown) is DisplayData and shown.has_image and shown.metadata == {"image/png": {"width": 7}}
    value = messages.to_output(execute_result({"text/plain": "3"}, 12))
    assert type(value) is ExecuteResult and value.text == "3" and value.execution_count == 12
    err = messages.to_output(error("E", "v", ["\x1b[31mline1\x1b[0m", "line2"]))
    assert err == ErrorOutput("E", "v", "line1\nline2")
    assert messages.to_output(msg("update_display_data", {"data": {"text/plain": "u"}})).text == "u"
    for bookkeeping in (status("idle"), msg("execute_input", {"code": "x"}), msg("clear_output"),
                        msg("comm_open")):
        assert messages.to_output(bookkeeping) is None


@pytest.mark.parametrize(
    "coloured, plain",
    [
        ("\x1b[0;31mValueError\x1b[0m: bad", "ValueError: bad"),
        ("\x1b[38;5;124m'str'\x1b[39m", "'str'"),
        ("\x1b[1;32m----> 1\x1b[0m x", "----> 1 x"),
        ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),
        ("\x1b[2K\x1b[1Aprogress", "progress"),
        ("no codes [0;31m here", "no codes [0;31m here"),
        ("", ""),
    ],
)
def test_strip_ansi(coloured, plain):
    assert strip_ansi(coloured) == plain


def test_execution_error_from_reply_content_strips_ansi():
    err = ExecutionError.from_content({"ename": "KeyError", "evalue": "'x'",
                                       "traceback": ["\x1b[0;31mKeyError\x1b[0m", "'x'"]})
    assert (err.ename, err.evalue, err.traceback) == ("KeyError", "'x'", "KeyError\n'x'")
    assert str(err) == "KeyError: 'x'"
    assert str(ExecutionError.from_content({})) == "Error"


def test_result_aggregation_by_hand():
    result = Result()
    result.add(Stdout("a"))
    result.add(Stderr("careful\n"))
    result.add(ExecuteResult({"text/plain": "1"}, execution_count=1))
    result.add(DisplayData({"image/png": png_base64((4, 4)), "text/plain": "<Figure>"}))
    result.add(DisplayData({"text/html": "<p>html only</p>"}))
    assert result.stdout == "a"
    assert result.stderr == "careful\n"
    assert result.text == "a\n1"
    assert [img.size for img in result.images] == [(4, 4)]
    assert len(result.data) == 3
    assert Result().text == "" and Result().images == []
