"""Reaching a pod's port from outside the cluster with nothing but a kubeconfig: a TCP
listener on this machine's loopback whose every accepted connection is carried to the
pod's port by its own port-forward stream through the API server (a websocket to
``pods/portforward``, which the kubelet joins to the port inside the pod's network
namespace).

pybox's client connects by host and port (``Endpoint``), and speaks HTTP and websockets
(TLS inside, pinned per sandbox) to the gateway: both pass through unchanged, since
this is a byte pipe. One thread accepts; each connection gets two pumping threads, one
per direction, each holding at most one chunk or frame. What the pod sends is read off
the websocket only as fast as the local reader takes it, so a paused reader pushes back
to the pod as TCP would. (The kubernetes client's own ``portforward`` reads every frame
into a buffer without bound: a sandbox could fill the client's memory with it.)
Everything is closed with the forwarder (the sandbox's removal or the backend's close).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

from websocket import ABNF, WebSocket, WebSocketException

log = logging.getLogger("pybox.kubernetes")

#: Bytes read from the local connection before they are sent on.
CHUNK = 64 << 10
#: The port-forward protocol: one port, a data channel (0) and an error channel (1),
#: each opening with a frame that names the port (2 bytes, little-endian).
PROTOCOL = "v4.channel.k8s.io"
DATA_CHANNEL, ERROR_CHANNEL = 0, 1
#: What is kept of the error channel's text (the kubelet's words, for the log).
MAX_ERROR_TEXT = 2000


class PortStream:
    """One connection's port-forward: ``pump`` copies between a local socket and the
    websocket (opened by the caller, protocol PROTOCOL) until either side ends."""

    def __init__(self, websocket: WebSocket, description: str):
        self._ws = websocket
        self._description = description
        self.error = ""

    def pump(self, local: socket.socket, closed: threading.Event) -> None:
        to_local = threading.Thread(target=self._to_local, args=(local,), daemon=True,
                                    name=f"pybox-k8s-pipe-in-{self._description}")
        to_local.start()
        try:
            while not closed.is_set():
                data = local.recv(CHUNK)
                if not data:
                    break  # v4 cannot half-close: the local side's end ends the stream
                self._ws.send(bytes((DATA_CHANNEL,)) + data, ABNF.OPCODE_BINARY)
        except (OSError, WebSocketException):
            pass
        finally:
            self.close()
            to_local.join(10)

    def _to_local(self, local: socket.socket) -> None:
        opened: set[int] = set()
        try:
            while True:
                # One frame at a time, written out before the next is read.
                opcode, frame = self._ws.recv_data()
                if opcode == ABNF.OPCODE_CLOSE:
                    break
                if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not frame:
                    continue
                channel, payload = frame[0], frame[1:]
                if channel not in opened:
                    opened.add(channel)
                    payload = payload[2:]  # the port's number
                if channel == DATA_CHANNEL and payload:
                    local.sendall(payload)
                elif channel == ERROR_CHANNEL and payload and len(self.error) < MAX_ERROR_TEXT:
                    self.error += payload[:MAX_ERROR_TEXT - len(self.error)].decode("utf-8", "replace")
        except (OSError, WebSocketException, ValueError):
            pass
        finally:
            if self.error:
                log.debug("port-forward to %s: %s", self._description, self.error)
            try:
                local.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self._ws.abort()  # wakes the thread blocked reading it
        except Exception:  # noqa: BLE001 -- closing a broken websocket: nothing to report
            pass
        try:
            self._ws.shutdown()
        except Exception:  # noqa: BLE001
            pass


class PortForwarder:
    """Listens on 127.0.0.1:<free port>; ``open_stream()`` returns a PortStream for
    each accepted connection."""

    def __init__(self, open_stream: Callable[[], PortStream], description: str, port: int = 0):
        """Raises OSError (EADDRINUSE) when ``port`` is taken."""
        self._open_stream = open_stream
        self._description = description
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._streams: list[PortStream] = []
        self._thread = threading.Thread(target=self._accept, name=f"pybox-k8s-forward-{description}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), name=f"pybox-k8s-pipe-{self._description}",
                             daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            if self._closed.is_set():
                client.close()
                return
            self._connections.add(client)
        stream = None
        try:
            try:
                stream = self._open_stream()
            except Exception as exc:  # the API server refused or is gone: the client sees a reset
                log.debug("port-forward to %s failed: %s", self._description, exc)
                return
            with self._lock:
                self._streams.append(stream)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream.pump(client, self._closed)
        finally:
            with self._lock:
                self._connections.discard(client)
                if stream is not None and stream in self._streams:
                    self._streams.remove(stream)
            _close_quietly(client)
            if stream is not None:
                stream.close()

    def close(self) -> None:
        self._closed.set()
        try:  # wakes the accepting thread: a plain close() would leave the port listening under it
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        _close_quietly(self._listener)
        with self._lock:
            connections, streams = list(self._connections), list(self._streams)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for stream in streams:
            stream.close()


def _close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass
