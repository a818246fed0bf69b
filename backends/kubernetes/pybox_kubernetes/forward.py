"""Reaching a pod's port from outside the cluster with nothing but a kubeconfig: a TCP
listener on this machine's loopback whose every accepted connection is carried to the
pod's port by its own port-forward stream through the API server (the ``kubernetes``
client's ``portforward``: a websocket to ``pods/portforward``, which the kubelet joins to
the port inside the pod's network namespace).

pybox's client connects by host and port (``Endpoint``), and speaks HTTP and websockets
(TLS inside, pinned per sandbox) to the gateway: both pass through unchanged, since
this is a byte pipe. One thread accepts; each connection gets one pumping thread
(select over both sides, bounded chunks), besides the client library's own proxy thread.
Everything is closed with the forwarder (the sandbox's removal or the backend's close).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any, Callable

log = logging.getLogger("pybox.kubernetes")

#: Bytes read from one side before they are written to the other.
CHUNK = 64 << 10


class PortForwarder:
    """Listens on 127.0.0.1:<free port>; ``open_stream()`` returns a connected socket-like
    object (the port-forward's) for each accepted connection."""

    def __init__(self, open_stream: Callable[[], Any], description: str, port: int = 0):
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
        self._streams: list[Any] = []
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
            remote = stream.socket()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _pump(client, remote, self._closed)
        finally:
            with self._lock:
                self._connections.discard(client)
                if stream is not None and stream in self._streams:
                    self._streams.remove(stream)
            _close_quietly(client)
            if stream is not None:
                _close_stream(stream)

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
            _close_stream(stream)


def _pump(client: socket.socket, remote: Any, closed: threading.Event) -> None:
    """Copy both ways until both directions ended (an end is passed on as a half-close:
    HTTP clients may wait for it); each read is at most CHUNK bytes and is written out
    before the next one (no unbounded buffer here)."""
    peers = {client.fileno(): (client, remote), remote.fileno(): (remote, client)}
    while peers and not closed.is_set():
        try:
            readable, _, _ = select.select(list(peers), [], [], 1.0)
        except (OSError, ValueError):
            return
        for fd in readable:
            source, sink = peers[fd]
            try:
                data = source.recv(CHUNK)
            except OSError:
                return
            if not data:
                del peers[fd]
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    return
                continue
            try:
                sink.sendall(data)
            except OSError:
                return


def _close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _close_stream(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001 -- closing a broken stream: nothing to report
        pass
