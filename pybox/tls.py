"""TLS for a gateway reached over a network (a remote engine): a certificate made per
sandbox, handed to its gateway through the engine, and pinned by the client.

The client trusts that one certificate and nothing else, so no name or CA is involved:
whoever answers on the gateway's port without the sandbox's private key fails the
handshake, and the token (sent only after it) never crosses the network in clear.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pybox.errors import BackendUnavailable

#: How long a sandbox's certificate is valid: longer than any sandbox lives.
VALIDITY = datetime.timedelta(days=365)

_T = TypeVar("_T")


@dataclass(frozen=True)
class GatewayCertificate:
    """A self-signed certificate and its key (PEM), made for one sandbox's gateway."""

    cert_pem: str
    key_pem: str = field(repr=False)

    @classmethod
    def generate(cls) -> GatewayCertificate:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError as exc:
            raise BackendUnavailable(
                "encrypting a remote sandbox's gateway traffic needs the 'cryptography' package, which is "
                "not installed", "Install it with `pip install 'pybox[docker]'`") from exc
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pybox gateway {secrets.token_hex(8)}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))  # the engine host's clock may lag
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pybox-gateway")]), critical=False)
            # Key identifiers: what strict X.509 checking (Python 3.13's default contexts) wants.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode("ascii"),
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (DER), hex: what the peer must present, exactly."""
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.cert_pem)).hexdigest()

    def client_context(self) -> ssl.SSLContext:
        """A new client context that trusts this certificate only (no name check, no
        other CA). New each time: HTTP libraries load CA bundles into the context they
        are given, so one must never be shared; ``check_peer`` is the second lock."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.cert_pem)
        return context

    def check_peer(self, sock: ssl.SSLSocket) -> None:
        """Raise ssl.SSLCertVerificationError unless the peer presented exactly this
        certificate (whatever the context came to trust)."""
        der = sock.getpeercert(binary_form=True)
        if der is None or hashlib.sha256(der).hexdigest() != self.fingerprint:
            error = ssl.SSLCertVerificationError("the peer's certificate is not the pinned one")
            error.verify_message = "certificate fingerprint mismatch"
            raise error


class SerializedTLSSocket:
    """A TLS socket one reader thread and one writer thread may use at once.

    OpenSSL forbids concurrent calls on one connection, so each call holds a lock; the
    socket is non-blocking, so no call holds it while waiting: waits for the network
    are ``select`` outside the lock. Timeouts (``settimeout``) raise TimeoutError as a
    plain socket's do.
    """

    def __init__(self, sock: ssl.SSLSocket):
        self._sock = sock
        self._lock = threading.Lock()
        self._timeout: float | None = sock.gettimeout()
        sock.setblocking(False)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def _call(self, operation: Callable[[], _T]) -> _T:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    return operation()
                except ssl.SSLWantReadError:
                    readable, writable = [self._sock], []
                except ssl.SSLWantWriteError:
                    readable, writable = [], [self._sock]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            select.select(readable, writable, [], remaining)

    def recv(self, size: int) -> bytes:
        try:
            return self._call(lambda: self._sock.recv(size))
        except ssl.SSLZeroReturnError:  # the peer closed the TLS session: end of stream
            return b""

    def recv_into(self, view: memoryview) -> int:
        try:
            return self._call(lambda: self._sock.recv_into(view))
        except ssl.SSLZeroReturnError:
            return 0

    def send(self, data: memoryview | bytes) -> int:
        return self._call(lambda: self._sock.send(data))

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def shutdown(self, how: int) -> None:
        # The TCP socket's, not SSLSocket.shutdown, which drops the TLS state under a
        # reader that may be inside a call.
        socket.socket.shutdown(self._sock, how)

    def close(self) -> None:
        self._sock.close()
