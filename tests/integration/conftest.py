"""Integration tests run against a real engine and the built sandbox image.

The backend is PYBOX_TEST_BACKEND (default: docker); the image pybox.DEFAULT_IMAGE
or PYBOX_TEST_IMAGE. `.ci/run` starts the engine and builds the image first.
"""

import os
import re
import subprocess

import pytest

import pybox

BACKEND = os.environ.get("PYBOX_TEST_BACKEND", "docker")
IMAGE = os.environ.get("PYBOX_TEST_IMAGE", pybox.DEFAULT_IMAGE)


def engine_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The engine's own CLI (docker, or podman --remote), for what pybox does not do
    (restart a container, exec as root)."""
    cli = ["podman", "--remote"] if BACKEND == "podman" else ["docker"]
    env = None
    if BACKEND == "swarm":
        args, env = swarm_container_args(args)
    return subprocess.run([*cli, *args], capture_output=True, text=True, check=check, timeout=120, env=env)


def swarm_container_args(args):
    """On a swarm a sandbox's id is its service's: the docker CLI reaches the service's
    container on the engine of the node that runs it (same TLS settings)."""
    from pybox.plugins import get_plugins

    engine = get_plugins().backend("swarm")()
    try:
        found, env = list(args), None
        for index, arg in enumerate(args):
            task = engine._task(arg) if re.fullmatch(r"[a-z0-9]{25}", arg) else None
            if task is not None and task.container_id:
                found[index] = task.container_id
                env = {**os.environ, "DOCKER_HOST": engine._node_engine(task.node_id).docker_host}
        return found, env
    finally:
        engine.close()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "engine_restart: stops and restarts the container engine; runs at the end of the session"
    )
    config.pluginmanager.register(EngineRestartLast(), "pybox-engine-restart-last")


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


class EngineRestartLast:
    """Tests marked engine_restart stop the container engine: any sandbox open at that
    moment (another module's module-scoped `sandbox`, say) dies, and every later test
    depends on the restart having worked. So they run after all other tests of the
    session, by this marker and not by file name."""

    @pytest.hookimpl(trylast=True)  # after plugins that reorder (randomize) items and after -m/-k
    def pytest_collection_modifyitems(self, items):
        items.sort(key=lambda item: item.get_closest_marker("engine_restart") is not None)  # stable


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox shared by a module's tests (each test leaves it usable)."""
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        yield sb


@pytest.fixture
def fresh_sandbox():
    """A sandbox of its own, for tests that break or restart kernels."""
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        yield sb
