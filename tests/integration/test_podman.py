"""Podman-specific checks: how the container is published, what it carries, what a
dead service says, and podman's ``localhost/`` image names."""

import pytest

import pybox
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "podman", reason="podman backend only")


@pytest.fixture
def backend():
    engine = get_plugins().backend("podman")()
    yield engine
    engine.close()


def _inspect(backend, container_id):
    response = backend.api.get(f"/containers/{container_id}/json")
    response.raise_for_status()
    return response.json()


def test_gateway_port_is_published_on_loopback_only(sandbox, backend):
    info = _inspect(backend, sandbox.id)
    bindings = info["HostConfig"]["PortBindings"]["8888/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert sandbox.host == "127.0.0.1"
    assert int(bindings[0]["HostPort"]) == sandbox.port


def test_container_carries_ownership_labels(sandbox, backend):
    labels = _inspect(backend, sandbox.id)["Config"]["Labels"]
    assert labels["pybox"] == "1"
    assert {"pybox.session", "pybox.pid", "pybox.host"} <= set(labels)
    assert sandbox.id in backend.list_containers({"pybox": "1", "pybox.session": labels["pybox.session"]})
    assert sandbox.id not in backend.list_containers({"pybox.session": "no-such-session"})


def test_limits_are_applied(backend):
    limits = pybox.Limits(memory="256m", cpus=0.5, pids=64)
    with pybox.Sandbox(image=IMAGE, backend="podman", limits=limits) as sb:
        host_config = _inspect(backend, sb.id)["HostConfig"]
        assert host_config["Memory"] == 256 * 1024 * 1024
        assert host_config["PidsLimit"] == 64
        assert host_config["CpuQuota"] == 50_000 and host_config["CpuPeriod"] == 100_000
        assert sb.run("print(1 + 1)").text == "2"


def test_dead_service_raises_backend_unavailable(monkeypatch, tmp_path):
    import podman.errors

    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/no-such-podman.sock")
    with pytest.raises(pybox.BackendUnavailable) as info:
        pybox.Sandbox(backend="podman").start()
    assert "CONTAINER_HOST" in str(info.value)
    assert "podman system service" in str(info.value)
    assert isinstance(info.value.__cause__, podman.errors.APIError)


def test_image_name_without_localhost_prefix_works(backend):
    if "/" in IMAGE:
        pytest.skip(f"test image {IMAGE} names a registry")
    assert backend.image_exists(IMAGE)
    assert backend.image_exists(f"localhost/{IMAGE}")  # how podman names local builds
    with pybox.Sandbox(image=IMAGE, backend="podman") as sb:
        assert sb.run("print('short name')").text == "short name"


def test_missing_container_is_reported_removed_and_removal_is_idempotent(backend):
    assert backend.inspect("pybox-no-such-container").status == "removed"
    backend.remove("pybox-no-such-container")
    assert backend.logs("pybox-no-such-container") == ""


def test_read_only_sandbox_leaves_no_volume_behind(backend):
    def volumes():
        response = backend.api.get("/volumes/json")
        response.raise_for_status()
        return {v["Name"] for v in response.json() or []}

    before = volumes()
    with pybox.Sandbox(image=IMAGE, backend="podman", read_only=True) as sb:
        sb.run("open('/app/kept.txt', 'w').write('on the volume')")
        assert len(volumes() - before) == 1  # /app is an anonymous volume of the container's own
        labels = backend.container_labels(sb.id)
        assert labels["pybox"] == "1"
    assert volumes() - before == set()  # removed with the container
    assert backend.container_labels(sb.id) is None


def test_the_service_is_found_through_podmans_own_connection_configuration(tmp_path, monkeypatch):
    """Without CONTAINER_HOST, podman-py reads the default connection the podman CLI
    would use (`podman system connection default`), and the sandbox runs there."""
    import json
    import os

    socket_url = os.environ["CONTAINER_HOST"]
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "podman-connections.json").write_text(json.dumps(
        {"Connection": {"Default": "ci", "Connections": {"ci": {"URI": socket_url, "Identity": ""}}}}))
    monkeypatch.delenv("CONTAINER_HOST")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    engine = get_plugins().backend("podman")()
    assert engine.url == socket_url
    engine.close()
    with pybox.Sandbox(image=IMAGE, backend="podman") as sb:
        assert sb.run("print('found')").text == "found"
