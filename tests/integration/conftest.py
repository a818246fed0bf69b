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
    (restart a container, exec as root). On kubernetes: `exec [-u UID] POD COMMAND...`
    and `logs POD` through the API (the pod's container runs as root; other users through
    setpriv); a test that restarts a container skips there."""
    if BACKEND == "kubernetes":
        return kubernetes_command(*args, check=check)
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


def kubernetes_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    from kubernetes import client, config
    from kubernetes.stream import stream
    from pybox_kubernetes.config import Settings

    config.load_kube_config()
    _, active = config.list_kube_config_contexts()
    namespace = Settings.from_environment().namespace or active["context"].get("namespace") or "default"
    api = client.CoreV1Api(client.ApiClient())
    words = list(args)
    if words[0] == "logs":
        text = api.read_namespaced_pod_log(words[1], namespace, container="sandbox")
        return subprocess.CompletedProcess(args, 0, stdout=text, stderr="")
    if words[0] != "exec":
        pytest.skip(f"`{' '.join(args[:1])}` has no equivalent for a pod (pods are not restarted: restartPolicy Never)")
    words = words[1:]
    user = "0"
    if words[0] == "-u":
        user, words = words[1], words[2:]
    pod, command = words[0], words[1:]
    if user != "0":
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", "--", *command]
    session = stream(api.connect_get_namespaced_pod_exec, pod, namespace, container="sandbox", command=command,
                     stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
    session.run_forever(timeout=120)
    stdout, stderr = session.read_stdout() or "", session.read_stderr() or ""
    code = session.returncode or 0
    session.close()
    if check and code:
        raise subprocess.CalledProcessError(code, args, stdout, stderr)
    return subprocess.CompletedProcess(args, code, stdout=stdout, stderr=stderr)


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
