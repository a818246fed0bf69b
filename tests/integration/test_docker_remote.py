"""docker-remote checks: the engine is elsewhere, shares no filesystem with this host,
and speaks TLS. Run with PYBOX_TEST_BACKEND=docker-remote and the environment that
`.ci/start-remote-dockerd` prints (DOCKER_HOST=tcp://10.213.7.2:2376, DOCKER_TLS_VERIFY,
DOCKER_CERT_PATH): there the engine lives in its own network namespace, so anything
that assumes 'localhost' fails.
"""

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

import pybox
from pybox.kernel.gateway import Gateway
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "docker-remote", reason="docker-remote backend only")

LOCAL_SOCKET = "/var/run/docker.sock"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@pytest.fixture
def remote_engine():
    engine = get_plugins().backend("docker-remote")()
    yield engine
    engine.close()


def docker_host() -> str:
    return urlparse(os.environ["DOCKER_HOST"]).hostname or ""


# -- where things run -----------------------------------------------------------------


def test_endpoint_host_is_the_docker_host_address(sandbox):
    assert sandbox.host == docker_host()
    assert sandbox.host not in LOOPBACK
    assert sandbox.run("print('remote')").text == "remote"


def test_gateway_is_not_on_this_hosts_loopback(sandbox):
    """The published port lives on the remote host: 127.0.0.1 here has no such gateway."""
    gateway = Gateway("127.0.0.1", sandbox.port, sandbox.token)
    try:
        assert not gateway.ready(timeout=1)
    finally:
        gateway.close()


def test_gateway_port_is_published_on_the_remote_hosts_interfaces(sandbox, remote_engine):
    info = remote_engine.api.inspect_container(sandbox.id)
    bindings = info["HostConfig"]["PortBindings"]["8888/tcp"]
    expected = os.environ.get("PYBOX_REMOTE_PUBLISH_IP") or "0.0.0.0"
    assert [b["HostIp"] for b in bindings] == [expected]


def test_container_runs_on_the_remote_engine_not_the_local_one(sandbox, remote_engine):
    assert remote_engine.inspect(sandbox.id).running
    if not os.path.exists(LOCAL_SOCKET):
        pytest.skip(f"no local engine at {LOCAL_SOCKET} to compare with")
    import docker
    import docker.errors

    local = docker.APIClient(base_url=f"unix://{LOCAL_SOCKET}", timeout=30)
    try:
        with pytest.raises(docker.errors.NotFound):
            local.inspect_container(sandbox.id)
    finally:
        local.close()


def test_files_move_through_the_archive_api(sandbox, tmp_path):
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "blob.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    sandbox.upload(tmp_path / "up", "remote-check/up")
    assert sandbox.run("import os\nprint(os.path.getsize('remote-check/up/blob.bin'))").text == str(256 * 4096)
    sandbox.download("remote-check/up", tmp_path / "down")
    assert (tmp_path / "down" / "blob.bin").read_bytes() == (tmp_path / "up" / "blob.bin").read_bytes()


# -- refused ----------------------------------------------------------------------------


def test_host_path_binds_are_refused(tmp_path, remote_engine):
    from pybox.sandbox import _SESSION

    before = set(remote_engine.list_containers({"pybox.session": _SESSION}))
    sandbox = pybox.Sandbox(image=IMAGE, backend=BACKEND, binds={str(tmp_path): "data"})
    with pytest.raises(pybox.UnsupportedOperation) as info:
        sandbox.start()
    message = str(info.value)
    assert str(tmp_path) in message and "upload" in message and "download" in message
    assert set(remote_engine.list_containers({"pybox.session": _SESSION})) == before  # nothing created


def test_ssh_without_a_reachable_gateway_is_refused(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"ssh://nobody@{docker_host()}")
    monkeypatch.delenv("PYBOX_REMOTE_GATEWAY_HOST", raising=False)
    with pytest.raises(pybox.UnsupportedOperation) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "PYBOX_REMOTE_GATEWAY_HOST" in str(info.value)


def test_a_local_docker_host_is_refused_with_a_hint(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{LOCAL_SOCKET}")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "tcp://" in str(info.value) and "DOCKER_CERT_PATH" in str(info.value)
    monkeypatch.delenv("DOCKER_HOST")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "DOCKER_HOST is not set" in str(info.value)


# -- TLS --------------------------------------------------------------------------------


def test_missing_cert_path_is_a_pybox_error_naming_it(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-certs"
    monkeypatch.setenv("DOCKER_CERT_PATH", str(missing))
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert f"DOCKER_CERT_PATH={missing}" in str(info.value)
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, pybox.PyboxError)


def test_cert_path_missing_the_client_key_is_named(monkeypatch, tmp_path):
    certs = Path(os.environ["DOCKER_CERT_PATH"])
    for name in ("ca.pem", "cert.pem"):
        shutil.copy(certs / name, tmp_path / name)
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "key.pem" in str(info.value)
    assert info.value.__cause__ is not None


def test_wrong_ca_fails_the_handshake_as_a_pybox_error(monkeypatch, tmp_path):
    """Certificates that exist but were not issued for this engine: TLS verification fails."""
    certs = Path(os.environ["DOCKER_CERT_PATH"])
    for name in ("cert.pem", "key.pem"):
        shutil.copy(certs / name, tmp_path / name)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no system CA bundle to use as the wrong CA")
    shutil.copy(bundle, tmp_path / "ca.pem")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "TLS" in str(info.value)
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, pybox.PyboxError)


def test_an_engine_url_without_tls_is_refused_unless_opted_into(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    monkeypatch.delenv("PYBOX_ALLOW_INSECURE_ENGINE", raising=False)
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "in clear (plain HTTP)" in str(info.value) and "PYBOX_ALLOW_INSECURE_ENGINE=1" in str(info.value)
    # Opted into: pybox speaks plain HTTP, which this engine's TLS port refuses.
    monkeypatch.setenv("PYBOX_ALLOW_INSECURE_ENGINE", "1")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "TLS" in str(info.value) and "DOCKER_TLS_VERIFY" in str(info.value)
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, pybox.PyboxError)


def test_engine_tls_that_does_not_verify_the_engine_is_refused_unless_opted_into(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)  # DOCKER_CERT_PATH stays: TLS, any server cert
    monkeypatch.delenv("PYBOX_ALLOW_INSECURE_ENGINE", raising=False)
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "without verifying the engine's certificate" in str(info.value)
    monkeypatch.setenv("PYBOX_ALLOW_INSECURE_ENGINE", "1")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.run("print('opted in')").text == "opted in"


# -- the gateway's traffic: TLS with the sandbox's own certificate -------------------------


def test_gateway_traffic_is_tls_with_the_sandboxs_pinned_certificate(sandbox):
    import ssl

    from pybox.tls import GatewayCertificate

    pem = sandbox.gateway_certificate
    assert pem is not None and "BEGIN CERTIFICATE" in pem
    context = GatewayCertificate(pem, "").client_context()
    with socket.create_connection((sandbox.host, sandbox.port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(pem)
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # Plain HTTP, with the token, gets no answer from the gateway: it speaks TLS only.
    plain = Gateway(sandbox.host, sandbox.port, sandbox.token)
    try:
        assert not plain.ready(timeout=3)
    finally:
        plain.close()
    # Another certificate (someone else answering on the port): refused before the token goes.
    stranger = Gateway(sandbox.host, sandbox.port, sandbox.token,
                       certificate=GatewayCertificate.generate())
    try:
        with pytest.raises(pybox.ChannelError, match="did not present the sandbox's certificate"):
            stranger.ready(timeout=3)
    finally:
        stranger.close()


def test_another_process_attaches_with_the_certificate(sandbox):
    kernel = pybox.Kernel.connect(sandbox.host, sandbox.port, sandbox.token, certificate=sandbox.gateway_certificate)
    try:
        assert kernel.run("print('attached over TLS')").text == "attached over TLS"
    finally:
        kernel.close()
    with pytest.raises(pybox.InvalidArgument, match="certificate"):
        pybox.Kernel.connect(sandbox.host, sandbox.port, sandbox.token, certificate="not a certificate")


def test_kernel_code_cannot_read_the_gateways_key(sandbox):
    code = ("import os\nfor p in ('/var/lib/pybox/tls/gateway.key', '/var/lib/pybox/tls'):\n"
            "    try:\n        open(p).read() if p.endswith('key') else os.listdir(p)\n        print('read')\n"
            "    except OSError as e:\n        print(type(e).__name__)\n"
            "print(any(k.startswith('PYBOX_TLS') for k in os.environ))")
    assert sandbox.run(code).text.split() == ["PermissionError", "PermissionError", "False"]


def test_unreachable_remote_is_backend_unavailable(monkeypatch):
    """A port on the remote host where nothing listens: refused, reported as unavailable."""
    with socket.socket() as probe:  # a port that is closed on the remote host (nothing of ours listens)
        probe.settimeout(2)
        if probe.connect_ex((docker_host(), 1)) == 0:
            pytest.skip("port 1 answers on the remote host")
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{docker_host()}:1")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert info.value.__cause__ is not None
