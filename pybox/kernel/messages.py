"""Jupyter messages as they travel over the kernel gateway's websocket.

The gateway speaks the legacy JSON websocket protocol: each frame is one message,
a JSON object with ``header``, ``parent_header``, ``metadata``, ``content``,
``channel`` and ``buffers``. Headers come from jupyter_client so the format
(protocol version, field names) follows the reference implementation.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import uuid
from typing import Any

from jupyter_client.session import msg_header

from pybox.errors import strip_ansi
from pybox.outputs import DisplayData, ErrorOutput, ExecuteResult, Output, Stderr, Stdout

Message = dict[str, Any]


def new_message(msg_type: str, content: dict[str, Any], session: str, channel: str = "shell") -> Message:
    header = msg_header(uuid.uuid4().hex, msg_type, "pybox", session)
    header["date"] = header["date"].isoformat()
    return {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


def execute_request(code: str, session: str, *, silent: bool = False, store_history: bool = True) -> Message:
    return new_message(
        "execute_request",
        {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        session,
    )


def encode(msg: Message) -> str:
    return json.dumps(msg, ensure_ascii=False)


def encode_bytes(msg: Message) -> bytes:
    """``msg`` as the UTF-8 of a text frame. Text that UTF-8 cannot carry (lone
    surrogates, e.g. in code) travels as JSON escapes instead."""
    text = encode(msg)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(msg, ensure_ascii=True).encode("ascii")


class BadMessage(ValueError):
    """A frame or message pybox cannot use (not JSON, not UTF-8, a broken binary framing,
    fields of the wrong type...). The channel drops it and logs why; it never ends the
    channel or reaches the caller raw."""


#: Frames larger than this are checked for how much their JSON would expand when
#: parsed, before parsing (smaller ones cannot expand to more than ~100 MB).
EXPANSION_CHECK_FROM = 2 * 1024 * 1024
#: Bytes of Python objects counted per JSON token (``,`` ``:`` ``[`` ``{``) by that
#: check: an empty list costs 56 bytes and a pointer; short strings and floats less.
BYTES_PER_TOKEN = 64
#: Default budget, in bytes of Python objects, for one decoded message.
MAX_DECODED_BYTES = 64 * 1024 * 1024


def decode(frame: str | bytes | bytearray, *, text: bool | None = None,
           max_decoded: int = MAX_DECODED_BYTES) -> Message:
    """Decode one websocket message into a checked Jupyter message, or raise BadMessage.

    A ``str`` (or ``text=True`` bytes, which must be UTF-8) is JSON; other bytes are
    the gateway's binary framing for messages with buffers (uint32 count, uint32
    offsets, JSON, then raw buffers). Every offset is checked against the frame.
    ``max_decoded`` bounds the Python objects the JSON may expand to (estimated from
    its token count before parsing)."""
    if text is None:
        text = isinstance(frame, str)
    if isinstance(frame, str):
        return _loads(frame, len(frame), max_decoded)
    if text:
        return _loads(_utf8(frame), len(frame), max_decoded)
    size = len(frame)
    if size < 8:
        raise BadMessage(f"binary frame of {size} bytes is too short for the gateway's framing")
    (count,) = struct.unpack_from("!I", frame, 0)
    if count < 1 or 4 + 4 * count > size:
        raise BadMessage(f"binary frame of {size} bytes announces {count} parts")
    offsets = list(struct.unpack_from(f"!{count}I", frame, 4))
    offsets.append(size)
    if offsets[0] < 4 + 4 * count or any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise BadMessage(f"binary frame of {size} bytes has offsets out of order or out of range")
    msg = _loads(_utf8(frame[offsets[0]:offsets[1]]), offsets[1] - offsets[0], max_decoded)
    msg["buffers"] = [bytes(frame[offsets[i]:offsets[i + 1]]) for i in range(1, count)]
    return msg


def _utf8(data: bytes | bytearray) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(f"not UTF-8: {exc}") from None


def _loads(text: str, size: int, max_decoded: int) -> Message:
    if size > EXPANSION_CHECK_FROM:
        tokens = sum(text.count(c) for c in ",:[{")
        if tokens * BYTES_PER_TOKEN > max_decoded:
            raise BadMessage(f"a {size:,}-byte message of {tokens:,} JSON tokens would expand to more than "
                             f"{max_decoded:,} bytes when parsed")
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {str(exc)[:200]}") from None
    return check_envelope(decoded)


def check_envelope(msg: object) -> Message:
    """``msg`` if it is a Jupyter message whose fields pybox reads have their types
    (header and parent_header objects, a str msg_type, a str parent msg_id or none,
    content and metadata objects); missing optional fields are filled in. BadMessage
    otherwise."""
    if not isinstance(msg, dict):
        raise BadMessage(f"a JSON {type(msg).__name__}, not an object")
    header = msg.get("header")
    if not isinstance(header, dict):
        raise BadMessage(f"header is a {type(header).__name__}, not an object")
    kind = header.get("msg_type", msg.get("msg_type"))
    if not isinstance(kind, str):
        raise BadMessage(f"msg_type is a {type(kind).__name__}, not a string")
    for name in ("parent_header", "content", "metadata"):
        value = msg.get(name)
        if value is None:
            msg[name] = {}
        elif not isinstance(value, dict):
            raise BadMessage(f"{kind or 'message'} {name} is a {type(value).__name__}, not an object")
    parent = msg["parent_header"].get("msg_id")
    if parent is not None and not isinstance(parent, str):
        raise BadMessage(f"{kind or 'message'} parent msg_id is a {type(parent).__name__}, not a string")
    channel = msg.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise BadMessage(f"{kind or 'message'} channel is a {type(channel).__name__}, not a string")
    return msg


class DropLog:
    """Logs dropped messages without letting a flood fill the log: the first ``first``
    with their reason, then one line each time the count reaches a power of ten."""

    def __init__(self, logger: logging.Logger, what: str, first: int = 10):
        self._log = logger
        self._what = what
        self._first = first
        self._lock = threading.Lock()
        self.count = 0

    def drop(self, reason: str) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count <= self._first:
            self._log.warning("%s: dropped a message pybox cannot use (%s)%s", self._what, reason,
                              "; further drops are counted, not logged" if count == self._first else "")
        elif count >= 100 and _power_of_ten(count):
            self._log.warning("%s: %d messages dropped so far (latest: %s)", self._what, count, reason)


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n > 1:
        n //= 10
    return n == 1


def parent_id(msg: Message) -> str | None:
    parent = msg.get("parent_header")
    msg_id = parent.get("msg_id") if isinstance(parent, dict) else None
    return msg_id if isinstance(msg_id, str) else None


def msg_type(msg: Message) -> str:
    header = msg.get("header")
    kind = (header.get("msg_type") if isinstance(header, dict) else None) or msg.get("msg_type", "")
    return kind if isinstance(kind, str) else ""


def execution_state(msg: Message) -> str | None:
    """The kernel state a ``status`` message announces (busy, idle, restarting...),
    or None for any other message (or a state that is not a string)."""
    if msg_type(msg) != "status":
        return None
    content = msg.get("content")
    state = content.get("execution_state") if isinstance(content, dict) else None
    return state if isinstance(state, str) else None


def to_output(msg: Message) -> Output | None:
    """The typed output an iopub message carries, or None for bookkeeping messages
    (status, execute_input, clear_output, comms). BadMessage when an output message's
    content does not have the types the protocol gives it (a stream whose text is not
    a string, a bundle that is not an object); fields that can be shown as text
    (an error's name and value, traceback lines) are made text."""
    kind = msg_type(msg)
    content = msg.get("content")
    if not isinstance(content, dict):
        content = {}
    if kind == "stream":
        text = content.get("text", "")
        if not isinstance(text, str):
            raise BadMessage(f"stream text is a {type(text).__name__}, not a string")
        return Stderr(text) if content.get("name") == "stderr" else Stdout(text)
    if kind in ("display_data", "update_display_data", "execute_result"):
        data = content.get("data") or {}
        metadata = content.get("metadata") or {}
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise BadMessage(f"{kind} data or metadata is not an object")
        if kind == "execute_result":
            count = content.get("execution_count")
            return ExecuteResult(data, metadata, count if isinstance(count, int) else None)
        return DisplayData(data, metadata)
    if kind == "error":
        return ErrorOutput(
            ename=_text(content.get("ename", "Error")),
            evalue=_text(content.get("evalue", "")),
            traceback=strip_ansi(traceback_text(content.get("traceback"))),
        )
    return None


def traceback_text(frames: object) -> str:
    """A traceback list from the kernel as one string (anything else: empty)."""
    if not isinstance(frames, list):
        return ""
    return "\n".join(frame if isinstance(frame, str) else _text(frame) for frame in frames)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    text = repr(value)  # JSON values only: bounded by the message
    return text if len(text) <= 10_000 else text[:10_000] + "..."
