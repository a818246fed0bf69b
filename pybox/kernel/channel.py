"""The kernel channel: one websocket per kernel and one reader thread.

The reader thread is the only one that reads the socket. It routes each message by
its parent ``msg_id`` to the sink that registered that id (an ``Execution``), so
any number of executions, in any number of kernels, each see exactly their own
messages. Messages with no parent that matters (kernel status changes such as
``restarting`` after a kernel died) go to ``on_unrouted``; the end of the socket
goes to ``on_closed``. Sends come from caller threads under websocket-client's
own write lock.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

import websocket

from pybox.errors import ChannelError, InvalidArgument
from pybox.kernel import messages
from pybox.kernel.messages import Message

#: tornado's default websocket_max_message_size (10 MiB), minus room for framing.
MAX_FRAME_BYTES = 10 * 1024 * 1024 - 1024


class Sink(Protocol):
    def deliver(self, msg: Message) -> None: ...


class KernelChannel:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_unrouted: Callable[[Message], None] | None = None,
        on_closed: Callable[[BaseException | None], None] | None = None,
        connect_timeout: float = 30.0,
        name: str = "pybox-kernel-channel",
    ):
        self.url = url
        self._routes: dict[str, Sink] = {}
        self._routes_lock = threading.Lock()
        self._on_unrouted = on_unrouted
        self._on_closed = on_closed
        self._closing = False
        self.closed = False
        try:
            self._ws = websocket.create_connection(
                url,
                header=[f"Authorization: token {token}"],
                timeout=connect_timeout,
                enable_multithread=True,
                skip_utf8_validation=True,
                http_no_proxy=["*"],
            )
        except (websocket.WebSocketException, OSError) as exc:
            raise ChannelError(f"could not open the kernel websocket {url}: {exc}") from exc
        self._ws.settimeout(None)  # the reader blocks; close() wakes it with a socket shutdown
        self._reader = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._reader.start()

    def register(self, msg_id: str, sink: Sink) -> None:
        """Route messages whose parent is ``msg_id`` to ``sink``. Register before sending."""
        with self._routes_lock:
            self._routes[msg_id] = sink

    def unregister(self, msg_id: str) -> None:
        with self._routes_lock:
            self._routes.pop(msg_id, None)

    def send(self, msg: Message) -> None:
        if self.closed:
            raise ChannelError(f"kernel channel {self.url} is closed")
        text = messages.encode(msg)
        size = len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_FRAME_BYTES:
            # The gateway (tornado) closes the whole websocket on a larger message.
            raise InvalidArgument(
                f"the {messages.msg_type(msg)} is {size:,} bytes encoded; the kernel gateway accepts "
                f"at most {MAX_FRAME_BYTES:,}. Move large data with Sandbox.upload instead of inlining it in code"
            )
        try:
            self._ws.send(text)
        except (websocket.WebSocketException, OSError) as exc:
            raise ChannelError(f"could not send to the kernel websocket {self.url}: {exc}") from exc

    def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                opcode, frame = self._ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT and isinstance(frame, bytes):
                    frame = frame.decode("utf-8", errors="replace")
                msg = messages.decode(frame)
                parent = messages.parent_id(msg)
                with self._routes_lock:
                    sink = self._routes.get(parent) if parent else None
                if sink is not None:
                    sink.deliver(msg)
                elif self._on_unrouted is not None:
                    self._on_unrouted(msg)
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            if not self._closing:
                error = exc
        finally:
            self.closed = True
            if self._on_closed is not None and not self._closing:
                self._on_closed(error)

    def close(self) -> None:
        """Close the socket and stop the reader; safe to call more than once."""
        if self._closing:
            return
        self._closing = True
        try:
            self._ws.send_close()
        except (websocket.WebSocketException, OSError):
            pass
        self._reader.join(timeout=1.0)
        try:
            self._ws.abort()  # type: ignore[no-untyped-call]  # wakes a reader still blocked in recv
        except (websocket.WebSocketException, OSError):
            pass
        self._reader.join(timeout=1.0)
        self._ws.shutdown()  # type: ignore[no-untyped-call]
        self.closed = True
