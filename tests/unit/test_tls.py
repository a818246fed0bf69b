"""pybox.tls on real sockets (loopback): the per-sandbox certificate is trusted alone,
a stranger's certificate gets neither the handshake nor the token, and the TLS socket
wrapper carries one reader and one writer thread at once without mixing bytes."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tempfile
import threading

import pytest

from pybox.errors import ChannelError
from pybox.kernel.gateway import Gateway
from pybox.tls import GatewayCertificate, SerializedTLSSocket


def server_context(certificate: GatewayCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
        with open(cert, "w") as f:
            f.write(certificate.cert_pem)
        with open(key, "w") as f:
            f.write(certificate.key_pem)
        context.load_cert_chain(cert, key)
    return context


class TLSServer:
    """Accepts one TLS connection on loopback and hands it to ``serve``; records every
    byte of application data it received."""

    def __init__(self, certificate: GatewayCertificate, serve=None):
        self.context = server_context(certificate)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.handshake_error: BaseException | None = None
        self.serve = serve or self.record
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        raw, _ = self.listener.accept()
        raw.settimeout(10)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_error = exc
            raw.close()
            return
        with tls:
            self.serve(tls)

    def record(self, tls: ssl.SSLSocket) -> None:
        while data := tls.recv(65536):
            self.received += data

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_a_certificate_is_trusted_alone_and_its_key_stays_out_of_repr():
    certificate = GatewayCertificate.generate()
    assert "PRIVATE KEY" in certificate.key_pem and "PRIVATE KEY" not in repr(certificate)
    server = TLSServer(certificate)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with certificate.client_context().wrap_socket(raw) as tls:
            tls.sendall(b"hello")
            assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(certificate.cert_pem)
    server.close()
    assert server.received == b"hello"


def test_a_strangers_certificate_fails_the_handshake():
    server = TLSServer(GatewayCertificate.generate())
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            GatewayCertificate.generate().client_context().wrap_socket(raw)
    server.close()
    assert server.received == b""


def test_the_gateway_client_never_sends_the_token_to_a_stranger():
    server = TLSServer(GatewayCertificate.generate())
    gateway = Gateway("127.0.0.1", server.port, "the-token",
                      ssl_context=GatewayCertificate.generate().client_context())
    assert gateway.base_url.startswith("https://") and gateway.ws_url("k").startswith("wss://")
    try:
        with pytest.raises(ChannelError, match="did not present the sandbox's certificate.*token was not sent"):
            gateway.ready(timeout=5)
    finally:
        gateway.close()
        server.close()
    assert b"the-token" not in server.received


def test_one_reader_and_one_writer_thread_share_a_tls_socket():
    certificate = GatewayCertificate.generate()
    size = 4 << 20

    def echo(tls: ssl.SSLSocket) -> None:
        while data := tls.recv(65536):
            tls.sendall(data)

    server = TLSServer(certificate, serve=echo)
    payload = os.urandom(size)
    raw = socket.create_connection(("127.0.0.1", server.port))
    sock = SerializedTLSSocket(certificate.client_context().wrap_socket(raw))
    sock.settimeout(0.05)  # short ticks, as the channel's reader uses: TimeoutError between them
    received = bytearray()
    ticks = 0

    def read() -> None:
        nonlocal ticks
        while len(received) < size:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                ticks += 1
                continue
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    view = memoryview(payload)
    while view:  # small pieces, so writes and reads interleave
        try:
            view = view[sock.send(view[:1500]):]
        except TimeoutError:
            continue
    reader.join(60)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    server.close()
    assert len(received) == size
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("name", ["PYBOX_TLS_CERT", "PYBOX_TLS_KEY", "KG_AUTH_TOKEN"])
def test_env_may_not_set_the_gateways_token_or_certificate(name):
    import pybox

    with pytest.raises(pybox.InvalidArgument, match=f"env may not set {name}"):
        pybox.Sandbox(env={name: "x"})
