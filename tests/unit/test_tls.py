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
                      certificate=GatewayCertificate.generate())
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


def ca_signed_certificate(tmp_path) -> tuple[GatewayCertificate, str]:
    """A leaf certificate for attacker.example signed by a CA of its own; the CA's PEM
    path (as a public CA in a bundle would be)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("Public CA")).issuer_name(name("Public CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("attacker.example")).issuer_name(name("Public CA"))
            .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("attacker.example")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    bundle = tmp_path / "public-cas.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    stranger = GatewayCertificate(
        leaf.public_bytes(serialization.Encoding.PEM).decode(),
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode())
    return stranger, str(bundle)


def test_a_certificate_from_a_ca_requests_trusts_gets_no_token(tmp_path, monkeypatch):
    # requests points every HTTPS connection at its CA bundle (certifi), which urllib3
    # loads into the context it was given: the pinned context must never see it.
    import requests.adapters
    import requests.utils

    stranger, bundle = ca_signed_certificate(tmp_path)
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", bundle)
    monkeypatch.setattr(requests.utils, "DEFAULT_CA_BUNDLE_PATH", bundle)
    for _ in range(2):  # a second request on the same session too
        server = TLSServer(stranger)
        gateway = Gateway("127.0.0.1", server.port, "the-token", certificate=GatewayCertificate.generate())
        try:
            with pytest.raises(ChannelError, match="did not present the sandbox's certificate"):
                gateway.ready(timeout=5)
        finally:
            gateway.close()
            server.close()
        assert b"the-token" not in server.received


def test_the_peer_check_refuses_any_other_certificate_whatever_the_context_trusts(tmp_path):
    stranger, bundle = ca_signed_certificate(tmp_path)
    server = TLSServer(stranger)
    context = ssl.create_default_context(cafile=bundle)  # a context that came to trust the stranger
    context.check_hostname = False
    pinned = GatewayCertificate.generate()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with context.wrap_socket(raw) as tls:
            with pytest.raises(ssl.SSLCertVerificationError):
                pinned.check_peer(tls)
            stranger.check_peer(tls)  # the right one passes
    server.close()
    assert server.received == b""
