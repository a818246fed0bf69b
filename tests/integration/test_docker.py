"""Docker-specific checks: how the container is published and what a dead engine says."""

import docker
import pytest

import pybox

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "docker", reason="docker backend only")


def test_gateway_port_is_published_on_loopback_only(sandbox):
    info = docker.from_env().api.inspect_container(sandbox.id)
    bindings = info["HostConfig"]["PortBindings"]["8888/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]


def test_container_carries_ownership_labels(sandbox):
    labels = docker.from_env().api.inspect_container(sandbox.id)["Config"]["Labels"]
    assert labels["pybox"] == "1"
    assert {"pybox.session", "pybox.pid", "pybox.host"} <= set(labels)


def test_dead_engine_raises_backend_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(backend="docker").start()
    assert "DOCKER_HOST" in str(info.value)
    assert info.value.__cause__ is not None


def test_the_engine_is_found_through_the_current_docker_context(tmp_path, monkeypatch):
    """Without DOCKER_HOST, docker-py (>= 7.2) follows the docker CLI's current context."""
    import hashlib
    import json

    from pybox.plugins import get_plugins

    name = "pybox-ci-context"
    socket = tmp_path / "elsewhere.sock"  # the context's own address, not the default socket
    socket.symlink_to("/var/run/docker.sock")
    meta = tmp_path / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {},
                                                "Endpoints": {"docker": {"Host": f"unix://{socket}",
                                                                         "SkipTLSVerify": False}}}))
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": name}))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    engine = get_plugins().backend("docker")()
    try:
        engine.ping()
        assert engine.api._custom_adapter.socket_path == str(socket)
    finally:
        engine.close()
    with pybox.Sandbox(image=IMAGE, backend="docker") as sb:
        assert sb.run("print('context')").text == "context"
    socket.unlink()  # the context is what the backend follows: without its socket, no engine
    engine = get_plugins().backend("docker")()
    with pytest.raises(pybox.BackendUnavailable):
        engine.ping()
    engine.close()
