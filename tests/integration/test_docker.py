"""Docker-specific checks: how the container is published and what a dead engine says."""

import docker
import pytest

import pybox

from .conftest import BACKEND

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
