"""The kernel channel: one websocket per kernel and one reader thread.

The reader thread is the only one that reads the socket. It routes each message by
its parent ``msg_id`` to the sink that registered that id (an ``Execution``), so
any number of executions, in any number of kernels, each see exactly their own
messages. Messages with no parent that matters (kernel status changes such as
``restarting`` after a kernel died) go to ``on_unrouted``; the end of the socket
goes to ``on_closed``. Sends come from caller threads (and from the reader, which
sends the next queued execution) under one write lock.

Every byte read here is written by the sandbox: its code can replace the gateway.
So the websocket is spoken here, on a plain socket, with bounds websocket-client
does not have:

* the upgrade's HTTP answer is read up to ``MAX_HANDSHAKE_BYTES`` and a deadline;
* a frame's length is read before its payload: a message (all its fragments) larger
  than ``MAX_MESSAGE_BYTES`` closes the connection without being read, and the
  pending executions fail with a ChannelError naming the cap;
* a message that cannot be used (not UTF-8, not JSON, a broken binary framing,
  fields of the wrong type, JSON that would expand past the cap) is dropped and
  logged (``messages.DropLog``: the first few, then a count), and the channel goes on;
* a breach of the websocket protocol itself (masked or reserved-bit frames, bad
  opcodes, oversized control frames) closes the connection: there is no resyncing;
* keepalive: after ``PING_INTERVAL`` seconds without a byte from the gateway a ping
  is sent; with no byte for ``PONG_TIMEOUT`` more seconds the connection is dead
  (a half-open TCP connection, a paused peer), so nothing waits for ever on it;
* a send that makes no progress for ``SEND_TIMEOUT`` seconds (a peer that stopped
  reading) gives the connection up.

Client frames are built (and masked) by websocket-client's ``ABNF``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
from typing import Callable, Protocol
from urllib.parse import urlsplit

import websocket

from pybox.errors import ChannelError, InvalidArgument, KernelError
from pybox.kernel import messages
from pybox.kernel.messages import Message
from pybox.tls import GatewayCertificate, SerializedTLSSocket

log = logging.getLogger(__name__)

#: tornado's default websocket_max_message_size (10 MiB), minus room for framing.
MAX_FRAME_BYTES = 10 * 1024 * 1024 - 1024
#: The largest websocket message (all its fragments together) accepted from the
#: gateway. pybox's image sends output in pieces of about 1 MiB; a larger message is
#: a display (an image, a big HTML table) or an attack. Past it the connection closes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds without a byte from the gateway before a ping is sent.
PING_INTERVAL = 10.0
#: Seconds after that without a byte (no pong) before the connection is declared dead.
PONG_TIMEOUT = 10.0
#: Seconds a send may make no progress (the gateway not reading) before the connection
#: is given up.
SEND_TIMEOUT = 30.0
#: The most bytes of HTTP the gateway may answer the websocket upgrade with.
MAX_HANDSHAKE_BYTES = 64 * 1024

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Sink(Protocol):
    def deliver(self, msg: Message) -> None: ...


class _Stopped(Exception):
    """The client closed the channel: the reader ends quietly."""


class KernelChannel:
    """The websocket to one kernel at ``url`` (``ws://host:port/api/kernels/<id>/channels``).

    ``max_message_bytes``, ``ping_interval``, ``pong_timeout`` and ``send_timeout``
    default to the module's constants (read when the channel opens)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_unrouted: Callable[[Message], None] | None = None,
        on_closed: Callable[[BaseException | None], None] | None = None,
        connect_timeout: float = 30.0,
        name: str = "pybox-kernel-channel",
        max_message_bytes: int | None = None,
        ping_interval: float | None = None,
        pong_timeout: float | None = None,
        send_timeout: float | None = None,
        certificate: GatewayCertificate | None = None,
    ):
        self.url = url
        self.max_message_bytes = MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
        self.ping_interval = PING_INTERVAL if ping_interval is None else ping_interval
        self.pong_timeout = PONG_TIMEOUT if pong_timeout is None else pong_timeout
        self.send_timeout = SEND_TIMEOUT if send_timeout is None else send_timeout
        self._routes: dict[str, Sink] = {}
        self._routes_lock = threading.Lock()
        self._on_unrouted = on_unrouted
        self._on_closed = on_closed
        self._closing = False
        self._close_lock = threading.Lock()
        self.closed = False
        self._drops = messages.DropLog(log, f"kernel websocket {url}")
        self.handler_errors = 0  # exceptions out of a sink (bugs): the channel goes on
        self._sock, leftover = _open_websocket(url, token, connect_timeout, certificate)
        self._rbuf = bytearray(leftover)
        # The socket's timeout is the reader's tick: it wakes that often to keep the
        # connection alive (and the senders retry through it, see _send_frame).
        self._sock.settimeout(max(0.01, min(1.0, self.ping_interval / 4, self.pong_timeout / 4)))
        self._send_lock = threading.Lock()
        self._last_heard = time.monotonic()
        self._last_ping = 0.0
        self._reader = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._reader.start()

    def register(self, msg_id: str, sink: Sink) -> None:
        """Route messages whose parent is ``msg_id`` to ``sink``. Register before sending."""
        with self._routes_lock:
            self._routes[msg_id] = sink

    def unregister(self, msg_id: str) -> None:
        with self._routes_lock:
            self._routes.pop(msg_id, None)

    @property
    def dropped(self) -> int:
        """Messages dropped so far because pybox could not use them."""
        return self._drops.count

    def send(self, msg: Message) -> None:
        if self.closed:
            raise ChannelError(f"kernel channel {self.url} is closed")
        data = messages.encode_bytes(msg)
        if len(data) > MAX_FRAME_BYTES:
            # The gateway (tornado) closes the whole websocket on a larger message.
            raise InvalidArgument(
                f"the {messages.msg_type(msg)} is {len(data):,} bytes encoded; the kernel gateway accepts "
                f"at most {MAX_FRAME_BYTES:,}. Move large data with Sandbox.upload instead of inlining it in code"
            )
        try:
            self._send_frame(OP_TEXT, data)
        except OSError as exc:
            raise ChannelError(f"could not send to the kernel websocket {self.url}: {exc}") from exc

    def close(self) -> None:
        """Close the socket and stop the reader; safe to call more than once, from any thread."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        if not self.closed:
            try:
                self._send_frame(OP_CLOSE, struct.pack("!H", 1000), lock_timeout=0.5, timeout=1.0)
            except (OSError, ChannelError):
                pass
        self._shutdown()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=2.0)
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    # -- the reader thread ---------------------------------------------------------

    def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                message = self._read_message()
                if message is None:
                    break
                opcode, payload = message
                del message
                if opcode == OP_TEXT:  # decoded here so that the frame's bytes go before JSON parsing
                    try:
                        text: str | bytes | bytearray = payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._drops.drop(f"not UTF-8: {exc}")
                        continue
                    finally:
                        del payload
                else:
                    text = payload
                    del payload
                self._handle(opcode, text)
                del text
        except _Stopped:
            pass
        except (ChannelError, OSError) as exc:
            if not self._closing:
                error = exc
        except Exception as exc:  # a bug here must still end the channel properly
            log.exception("kernel websocket %s: the reader failed", self.url)
            error = exc
        finally:
            self.closed = True
            if not self._closing:
                self._shutdown()
                if self._on_closed is not None:
                    self._on_closed(error)

    def _handle(self, opcode: int, payload: str | bytes | bytearray) -> None:
        """Decode and route one message (a text frame's payload may already be a str);
        never raises: what cannot be used is dropped."""
        try:
            msg = messages.decode(payload, text=opcode == OP_TEXT, max_decoded=self.max_message_bytes)
        except messages.BadMessage as exc:
            self._drops.drop(str(exc))
            return
        del payload
        parent = messages.parent_id(msg)
        with self._routes_lock:
            sink = self._routes.get(parent) if parent else None
        try:
            if sink is not None:
                sink.deliver(msg)  # may wait while a consumer catches up (Execution's backpressure)
            elif self._on_unrouted is not None:
                self._on_unrouted(msg)
        except Exception:  # a bug, not the gateway's doing: logged whole, counted
            self.handler_errors += 1
            log.error("kernel websocket %s: handling a %s failed", self.url, messages.msg_type(msg), exc_info=True)
        self._last_heard = time.monotonic()  # the wait above was ours, not the gateway's silence

    def _read_message(self) -> tuple[int, bytes | bytearray] | None:
        """The next data message (opcode, payload), answering pings on the way; None
        at a close frame. ChannelError on a breach of the protocol or the size cap."""
        opcode: int | None = None
        parts: bytearray | None = None
        total = 0
        while True:
            head = self._recv_exact(2)
            fin, op, length = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x7F
            if head[0] & 0x70:
                raise self._protocol_error("a frame with reserved bits set (no extension was negotiated)")
            if head[1] & 0x80:
                raise self._protocol_error("a masked frame (a server's frames are never masked)")
            if length == 126:
                (length,) = struct.unpack("!H", self._recv_exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._recv_exact(8))
            if op >= 0x8:
                if not fin or length > 125:
                    raise self._protocol_error(f"a control frame of {length} bytes{'' if fin else ', fragmented'}")
                data = self._recv_exact(length)
                if op == OP_CLOSE:
                    return None
                if op == OP_PING:
                    self._send_frame(OP_PONG, bytes(data), lock_timeout=self.send_timeout)
                elif op != OP_PONG:
                    raise self._protocol_error(f"a frame of unknown control opcode {op:#x}")
                continue
            if op == OP_CONTINUATION:
                if opcode is None:
                    raise self._protocol_error("a continuation frame outside a fragmented message")
            elif op in (OP_TEXT, OP_BINARY):
                if opcode is not None:
                    raise self._protocol_error("a new message inside a fragmented one")
                opcode = op
            else:
                raise self._protocol_error(f"a frame of reserved opcode {op:#x}")
            total += length
            if total > self.max_message_bytes:
                raise ChannelError(
                    f"the kernel gateway sent a websocket message of {'at least ' if parts or not fin else ''}"
                    f"{total:,} bytes; pybox accepts at most {self.max_message_bytes:,} "
                    f"(pybox.kernel.channel.MAX_MESSAGE_BYTES), so the connection was closed without reading it")
            data = self._recv_exact(length)
            if fin and parts is None:
                return opcode, data
            if parts is None:
                parts = bytearray(data)
            else:
                parts += data
            if fin:
                return opcode, parts

    def _protocol_error(self, what: str) -> ChannelError:
        return ChannelError(f"the kernel gateway broke the websocket protocol: {what}")

    def _recv_exact(self, n: int) -> bytes | bytearray:
        buf = self._rbuf
        if len(buf) < n and n <= 65536:
            while len(buf) < n:
                buf += self._recv_some()
        if len(buf) >= n:
            out = bytes(buf[:n])
            del buf[:n]
            return out
        out_array = bytearray(n)  # large payloads go straight into their own buffer
        view = memoryview(out_array)
        got = len(buf)
        view[:got] = buf
        buf.clear()
        while got < n:
            got += self._recv_into(view[got:])
        return out_array

    def _recv_some(self) -> bytes:
        while True:
            self._check_stopped()
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                self._keepalive()
                continue
            except InterruptedError:
                continue
            self._got(len(data))
            return data

    def _recv_into(self, view: memoryview) -> int:
        while True:
            self._check_stopped()
            try:
                count = self._sock.recv_into(view)
            except TimeoutError:
                self._keepalive()
                continue
            except InterruptedError:
                continue
            self._got(count)
            return count

    def _check_stopped(self) -> None:
        if self._closing:
            raise _Stopped()

    def _got(self, count: int) -> None:
        self._check_stopped()
        if not count:
            raise ChannelError("the kernel gateway closed the connection (no websocket close frame)")
        self._last_heard = time.monotonic()

    def _keepalive(self) -> None:
        now = time.monotonic()
        quiet = now - self._last_heard
        if quiet >= self.ping_interval + self.pong_timeout:
            raise ChannelError(
                f"the kernel gateway sent nothing for {quiet:.1f} s, not even an answer to a ping (sent after "
                f"{self.ping_interval:g} s of silence, to be answered within {self.pong_timeout:g} s): the "
                f"connection is dead")
        if quiet >= self.ping_interval and now - self._last_ping >= self.ping_interval:
            self._last_ping = now
            # Not waiting for the write lock: a send in progress has its own timeout.
            self._send_frame(OP_PING, b"pybox", lock_timeout=0)

    # -- sending -------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes, *, lock_timeout: float | None = None,
                    timeout: float | None = None) -> bool:
        """Send one frame; False if the write lock was not free within ``lock_timeout``
        (0: do not wait). A send that cannot finish within ``timeout`` seconds of no
        progress (default ``send_timeout``) breaks the connection: a partial frame
        cannot be taken back."""
        limit = self.send_timeout if timeout is None else timeout
        frame = websocket.ABNF.create_frame(payload, opcode).format()
        wait = limit if lock_timeout is None else lock_timeout
        acquired = self._send_lock.acquire(timeout=wait) if wait > 0 else self._send_lock.acquire(blocking=False)
        if not acquired:
            if lock_timeout is not None:
                return False
            raise ChannelError(f"could not send to the kernel websocket {self.url}: another send has been stuck "
                               f"for {limit:g} s")
        try:
            view = memoryview(frame)
            progress = time.monotonic()
            while view:
                try:
                    sent = self._sock.send(view)
                except TimeoutError:
                    if time.monotonic() - progress >= limit:
                        raise ChannelError(f"the kernel gateway at {self.url} read nothing of what pybox sent for "
                                           f"{limit:g} s: the connection was given up") from None
                    continue
                except InterruptedError:
                    continue
                view = view[sent:]
                progress = time.monotonic()
        except (OSError, ChannelError):
            self._shutdown()
            raise
        finally:
            self._send_lock.release()
        return True

    def _shutdown(self) -> None:
        """Wake the reader (and any sender) with the end of the socket; the reader or
        close() closes it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _open_websocket(url: str, token: str, timeout: float,
                    certificate: GatewayCertificate | None = None) -> tuple[socket.socket | SerializedTLSSocket, bytes]:
    """Connect and upgrade to a websocket (RFC 6455) with the token; the socket and any
    bytes the gateway sent after its answer. The answer is bounded in size and time.
    ``wss://`` URLs go through TLS trusting ``certificate`` alone (a sandbox's own,
    checked by fingerprint too) before anything is sent; the socket is then a
    SerializedTLSSocket."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise InvalidArgument(f"the kernel websocket URL must be ws://host:port/... or wss://..., got {url!r}")
    secure = parts.scheme == "wss"
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ChannelError(f"could not open the kernel websocket {url}: {exc}") from exc
    sock: socket.socket = raw
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            try:
                if certificate is None:
                    sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                else:
                    sock = certificate.client_context().wrap_socket(raw, server_hostname=host)
                    certificate.check_peer(sock)
            except ssl.SSLCertVerificationError as exc:
                raise ChannelError(f"the kernel gateway at {url} did not present the sandbox's certificate "
                                   f"(pinned by pybox): {exc.verify_message or exc}; nothing was sent") from exc
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Authorization: token {token}\r\n\r\n").encode("latin-1"))
        answer = bytearray()
        while (end := answer.find(b"\r\n\r\n")) < 0:
            if len(answer) > MAX_HANDSHAKE_BYTES:
                raise ChannelError(f"the kernel gateway answered the websocket upgrade of {url} with more than "
                                   f"{MAX_HANDSHAKE_BYTES:,} bytes of headers")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError(f"the kernel gateway did not answer the websocket upgrade of {url} within "
                                   f"{timeout:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue  # the deadline above says so
            if not chunk:
                raise ChannelError(f"the kernel gateway closed the connection during the websocket upgrade of {url}")
            answer += chunk
        if end > MAX_HANDSHAKE_BYTES:
            raise ChannelError(f"the kernel gateway answered the websocket upgrade of {url} with more than "
                               f"{MAX_HANDSHAKE_BYTES:,} bytes of headers")
        lines = answer[:end].decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        code = status[1] if len(status) >= 2 and status[0].startswith("HTTP/") else ""
        if code != "101":
            shown = lines[0][:200]
            if code == "404":
                raise KernelError(f"the kernel of {url} does not exist on the gateway ({shown})")
            if code in ("401", "403"):
                raise ChannelError(f"the kernel gateway refused the token for {url} ({shown})")
            raise ChannelError(f"the kernel gateway refused the websocket upgrade of {url}: {shown!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode("ascii")).digest()).decode("ascii")
        if headers.get("sec-websocket-accept") != accept or headers.get("upgrade", "").lower() != "websocket":
            raise ChannelError(f"the kernel gateway's answer to the websocket upgrade of {url} is not a websocket "
                               "handshake (Upgrade / Sec-WebSocket-Accept)")
        if headers.get("sec-websocket-extensions"):
            raise ChannelError(f"the kernel gateway chose websocket extensions pybox did not offer: "
                               f"{headers['sec-websocket-extensions'][:200]!r}")
        rest = bytes(answer[end + 4:])
        return (SerializedTLSSocket(sock) if isinstance(sock, ssl.SSLSocket) else sock), rest
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise ChannelError(f"could not open the kernel websocket {url}: {exc}") from exc
        raise
