"""Jupyter messages as they travel over the kernel gateway's websocket.

The gateway speaks the legacy JSON websocket protocol: each frame is one message,
a JSON object with ``header``, ``parent_header``, ``metadata``, ``content``,
``channel`` and ``buffers``. Headers come from jupyter_client so the format
(protocol version, field names) follows the reference implementation.
"""

from __future__ import annotations

import json
import struct
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


def decode(frame: str | bytes) -> Message:
    """Decode a websocket frame: JSON text, or the gateway's binary framing for
    messages with buffers (uint32 count, uint32 offsets, JSON, then raw buffers)."""
    if isinstance(frame, str):
        decoded: Message = json.loads(frame)
        return decoded
    (count,) = struct.unpack_from("!I", frame, 0)
    offsets = list(struct.unpack_from(f"!{count}I", frame, 4))
    offsets.append(len(frame))
    msg: Message = json.loads(frame[offsets[0] : offsets[1]].decode("utf-8"))
    msg["buffers"] = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count)]
    return msg


def parent_id(msg: Message) -> str | None:
    parent = msg.get("parent_header") or {}
    msg_id = parent.get("msg_id")
    return msg_id if isinstance(msg_id, str) else None


def msg_type(msg: Message) -> str:
    kind = (msg.get("header") or {}).get("msg_type") or msg.get("msg_type", "")
    return kind if isinstance(kind, str) else ""


def execution_state(msg: Message) -> str | None:
    """The kernel state a ``status`` message announces (busy, idle, restarting...),
    or None for any other message."""
    if msg_type(msg) != "status":
        return None
    return (msg.get("content") or {}).get("execution_state")


def to_output(msg: Message) -> Output | None:
    """The typed output an iopub message carries, or None for bookkeeping messages
    (status, execute_input, clear_output, comms)."""
    kind = msg_type(msg)
    content = msg.get("content") or {}
    if kind == "stream":
        text = content.get("text", "")
        return Stderr(text) if content.get("name") == "stderr" else Stdout(text)
    if kind in ("display_data", "update_display_data"):
        return DisplayData(content.get("data") or {}, content.get("metadata") or {})
    if kind == "execute_result":
        return ExecuteResult(
            content.get("data") or {}, content.get("metadata") or {}, content.get("execution_count")
        )
    if kind == "error":
        return ErrorOutput(
            ename=str(content.get("ename", "Error")),
            evalue=str(content.get("evalue", "")),
            traceback=strip_ansi("\n".join(content.get("traceback") or [])),
        )
    return None
