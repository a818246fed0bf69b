"""A hostile kernel gateway for tests: a websocket server on 127.0.0.1 that sends
exactly the bytes a test (or an attacker) chooses, and a TCP proxy that can be paused.

Real sockets, real threads, no websocket library on the server side: frames are
built by hand so that broken ones can be built too. ``benchmarks/hostile_memory.py``
uses it as well.

* :class:`WsServer` accepts connections and does the upgrade (or answers with what
  ``handshake`` returns); each connection is a :class:`Conn`.
* :class:`Conn` parses the client's (masked) frames in a thread: text frames are put
  on ``received`` as JSON, pings answered unless ``pause()``-d; ``on_message`` is
  called for each client message (a scripted kernel reacts to execute_requests),
  ``on_binary`` for each binary frame.
  ``frame()`` / ``raw()`` send anything.
* :class:`ScriptedKernel` is an ``on_message`` that answers each execute_request
  with the messages of a normal run, or those a test queued.
* :class:`PausableProxy` forwards TCP both ways until ``pause()``: then it forwards
  nothing and answers nothing, keeping both connections open (a half-open peer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import socket
import struct
import threading
import uuid
from typing import Any, Callable

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame_bytes(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = False,
                length: int | None = None) -> bytes:
    """One websocket frame as a server sends it (``length`` overrides the length field)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if size < 126:
        head = struct.pack("!BB", first, (0x80 if masked else 0) | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, size)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, size)
    if masked:
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def accept_header(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


class Conn:
    """One client connection, server side."""

    def __init__(self, sock: socket.socket, headers: dict[str, str], path: str,
                 on_message: Callable[[Conn, Any], None] | None,
                 on_binary: Callable[[Conn, bytes], None] | None = None):
        self.sock = sock
        self.headers = headers
        self.path = path
        self.on_message = on_message
        self.on_binary = on_binary
        self.received: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pings = 0
        self.closed = threading.Event()
        self.paused = threading.Event()
        self._write = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True, name="wsserver-conn")
        self._thread.start()

    # -- sending --

    def raw(self, data: bytes) -> None:
        with self._write:
            self.sock.sendall(data)

    def frame(self, opcode: int, payload: bytes | str, **kw: Any) -> None:
        self.raw(frame_bytes(opcode, payload.encode() if isinstance(payload, str) else payload, **kw))

    def send_msg(self, message: Any) -> None:
        self.frame(TEXT, json.dumps(message))

    def send_text(self, text: bytes | str) -> None:
        self.frame(TEXT, text)

    def send_binary(self, data: bytes) -> None:
        self.frame(BINARY, data)

    def close_frame(self) -> None:
        self.frame(CLOSE, struct.pack("!H", 1000))

    def drop(self) -> None:
        """End the TCP connection without a close frame."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def pause(self) -> None:
        """Stop reading and answering: the client sees a silent, open connection."""
        self.paused.set()

    # -- reading the client's frames --

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _read(self) -> None:
        try:
            while True:
                if self.paused.is_set():
                    self.paused.wait()
                    threading.Event().wait()  # paused for ever: read nothing more
                b1, b2 = self._recv_exact(2)
                opcode, length = b1 & 0x0F, b2 & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", self._recv_exact(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", self._recv_exact(8))
                key = self._recv_exact(4) if b2 & 0x80 else b"\0\0\0\0"
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(self._recv_exact(length))) \
                    if length < 65536 else _unmask(self._recv_exact(length), key)
                if self.paused.is_set():
                    continue
                if opcode == PING:
                    self.pings += 1
                    self.frame(PONG, payload)
                elif opcode == CLOSE:
                    try:
                        self.frame(CLOSE, payload[:2])
                    except OSError:
                        pass
                    return
                elif opcode == TEXT:
                    message = json.loads(payload)
                    self.received.put(message)
                    if self.on_message is not None:
                        self.on_message(self, message)
                elif opcode == BINARY and self.on_binary is not None:
                    self.on_binary(self, payload)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.closed.set()


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


class WsServer:
    """Accepts websocket clients on 127.0.0.1. ``handshake(headers, path)`` may return
    the raw bytes to answer the upgrade with instead of a proper 101 (or None)."""

    def __init__(self, on_message: Callable[[Conn, Any], None] | None = None,
                 handshake: Callable[[dict[str, str], str], bytes | None] | None = None,
                 on_binary: Callable[[Conn, bytes], None] | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.on_message = on_message
        self.on_binary = on_binary
        self.handshake = handshake
        self.conns: list[Conn] = []
        self._accepted: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="wsserver-accept").start()

    def url(self, kernel_id: str = "k1") -> str:
        return f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels"

    def next_conn(self, timeout: float = 5.0) -> Conn:
        return self._accepted.get(timeout=timeout)

    def close(self) -> None:
        self._stopped = True
        self.listener.close()
        for conn in self.conns:
            conn.drop()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._upgrade, args=(sock,), daemon=True).start()

    def _upgrade(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            answer = self.handshake(headers, path) if self.handshake else None
            if answer is not None:
                sock.sendall(answer)
                if not answer.startswith(b"HTTP/1.1 101"):
                    return
            else:
                sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept_header(headers['sec-websocket-key'])}\r\n\r\n").encode())
            conn = Conn(sock, headers, path, self.on_message, self.on_binary)
            self.conns.append(conn)
            self._accepted.put(conn)
        except OSError:
            pass


# -- a scripted kernel on the server side ------------------------------------------------


def kmsg(msg_type: str, content: Any, parent: Any, channel: str = "iopub") -> dict[str, Any]:
    return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "k", "username": "k",
                       "version": "5.3", "date": "2024-01-01T00:00:00Z"},
            "parent_header": {"msg_id": parent, "msg_type": "execute_request"} if parent is not None else {},
            "metadata": {}, "content": content, "channel": channel, "buffers": []}


def normal_run(parent: str, text: str, count: int = 1) -> list[dict[str, Any]]:
    """What ipykernel sends for ``print(text, end='')``: busy, stream, reply, idle."""
    return [kmsg("status", {"execution_state": "busy"}, parent),
            kmsg("stream", {"name": "stdout", "text": text}, parent),
            kmsg("execute_reply", {"status": "ok", "execution_count": count}, parent, "shell"),
            kmsg("status", {"execution_state": "idle"}, parent)]


class ScriptedKernel:
    """``on_message`` for a WsServer: each execute_request gets the next queued reaction
    (a callable taking the connection and the request's msg_id), or by default a normal
    run printing the request's code. kernel_info_requests get an iopub status."""

    def __init__(self) -> None:
        self.reactions: queue.SimpleQueue[Callable[[Conn, str], None]] = queue.SimpleQueue()
        self.requests: list[dict[str, Any]] = []

    def queue(self, reaction: Callable[[Conn, str], None]) -> None:
        self.reactions.put(reaction)

    def __call__(self, conn: Conn, message: Any) -> None:
        kind = message["header"]["msg_type"]
        parent = message["header"]["msg_id"]
        if kind == "kernel_info_request":
            conn.send_msg(kmsg("status", {"execution_state": "idle"}, parent))
            return
        if kind != "execute_request":
            return
        self.requests.append(message)
        try:
            reaction = self.reactions.get_nowait()
        except queue.Empty:
            reaction = None
        if reaction is not None:
            threading.Thread(target=reaction, args=(conn, parent), daemon=True).start()
        else:
            for m in normal_run(parent, message["content"]["code"]):
                conn.send_msg(m)


# -- a TCP proxy that can be paused ----------------------------------------------------


class PausableProxy:
    """Forwards 127.0.0.1:port to ``target`` until ``pause()``: then nothing moves either
    way and no connection is closed (the client sees a dead, half-open peer)."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paused = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        """Forward again, for connections made from now on (the paused ones stay dead)."""
        self.paused.clear()

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            dead = threading.Event()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, dead), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, dead: threading.Event) -> None:
        try:
            while True:
                if self.paused.is_set() or dead.is_set():
                    dead.set()
                    threading.Event().wait()  # hold the connection open, forward nothing
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self.paused.is_set():
                    dead.set()
                    continue
                dst.sendall(data)
        except OSError:
            return
