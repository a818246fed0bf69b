"""Table of misuses: each gives a pybox exception whose message names the problem, and
none leaves a container behind."""

import os

import pytest

import pybox
from pybox.plugins import get_plugins
from pybox.sandbox import _SESSION

from .conftest import BACKEND, IMAGE


def sandbox(**kwargs):
    kwargs.setdefault("image", IMAGE)
    kwargs.setdefault("backend", BACKEND)
    return pybox.Sandbox(**kwargs)


def start(**kwargs):
    sb = sandbox(**kwargs)
    try:
        sb.start()
    finally:
        sb.stop()


# (id, call taking the shared sandbox and tmp_path, expected exception, words the message must contain)
MISUSES = [
    ("unknown-backend", lambda sb, tmp: sandbox(backend="no-such-backend"), pybox.BackendNotFound,
     ["no-such-backend", BACKEND]),
    ("empty-backend-name", lambda sb, tmp: sandbox(backend="  "), pybox.BackendNotFound, ["backend"]),
    ("image-with-spaces", lambda sb, tmp: sandbox(image="bad image"), pybox.InvalidArgument, ["image", "bad image"]),
    ("empty-image", lambda sb, tmp: sandbox(image=""), pybox.InvalidArgument, ["image"]),
    ("image-not-a-string", lambda sb, tmp: sandbox(image=42), pybox.InvalidArgument, ["image", "42"]),
    ("missing-image", lambda sb, tmp: start(image="pybox-misuse-missing:1"), pybox.ImageNotFound,
     ["pybox-misuse-missing:1", "pybox build"]),
    ("bind-host-path-missing", lambda sb, tmp: sandbox(binds={str(tmp / "nope"): "data"}), pybox.InvalidArgument,
     ["does not exist", "nope"]),
    ("bind-container-path-absolute", lambda sb, tmp: sandbox(binds={str(tmp): "/etc"}), pybox.InvalidArgument,
     ["/etc", "outside /app"]),
    ("bind-container-path-escaping", lambda sb, tmp: sandbox(binds={str(tmp): "../etc"}), pybox.InvalidArgument,
     ["../etc", "outside /app"]),
    ("binds-not-a-dict", lambda sb, tmp: sandbox(binds=[str(tmp)]), pybox.InvalidArgument, ["binds", "dict"]),
    ("env-value-not-a-string", lambda sb, tmp: sandbox(env={"N": 1}), pybox.InvalidArgument, ["env", "N"]),
    ("env-name-with-equals", lambda sb, tmp: sandbox(env={"A=B": "x"}), pybox.InvalidArgument, ["A=B"]),
    ("env-sets-the-token", lambda sb, tmp: sandbox(env={"KG_AUTH_TOKEN": "x"}), pybox.InvalidArgument,
     ["KG_AUTH_TOKEN"]),
    ("port-zero", lambda sb, tmp: sandbox(port=0), pybox.InvalidArgument, ["port", "0"]),
    ("port-too-big", lambda sb, tmp: sandbox(port=70000), pybox.InvalidArgument, ["port", "70000"]),
    ("port-a-string", lambda sb, tmp: sandbox(port="8888"), pybox.InvalidArgument, ["port"]),
    ("port-in-use", lambda sb, tmp: start(port=sb.port), pybox.BackendError, ["in use", "port"]),
    ("limits-not-limits", lambda sb, tmp: sandbox(limits={"memory": "1g"}), pybox.InvalidArgument, ["limits"]),
    ("memory-limit-garbage", lambda sb, tmp: pybox.Limits(memory="lots"), pybox.InvalidArgument, ["memory", "lots"]),
    ("cpus-negative", lambda sb, tmp: pybox.Limits(cpus=-1), pybox.InvalidArgument, ["cpus"]),
    ("pids-too-small", lambda sb, tmp: pybox.Limits(pids=1), pybox.InvalidArgument, ["pids"]),
    ("startup-timeout-negative", lambda sb, tmp: sandbox(startup_timeout=-1), pybox.InvalidArgument,
     ["startup_timeout"]),
    ("code-not-a-string", lambda sb, tmp: sb.run(123), pybox.InvalidArgument, ["code", "int"]),
    ("code-as-bytes", lambda sb, tmp: sb.run(b"print(1)"), pybox.InvalidArgument, ["code", "bytes"]),
    ("huge-code", lambda sb, tmp: sb.run("x = 1\n" + "#" * 12_000_000), pybox.InvalidArgument,
     ["bytes", "Sandbox.upload"]),
    ("negative-timeout", lambda sb, tmp: sb.run("1", timeout=-1), pybox.InvalidArgument, ["timeout", "-1"]),
    ("zero-timeout", lambda sb, tmp: sb.run("1", timeout=0), pybox.InvalidArgument, ["timeout"]),
    ("timeout-a-string", lambda sb, tmp: sb.run("1", timeout="10"), pybox.InvalidArgument, ["timeout", "10"]),
    ("upload-missing-local", lambda sb, tmp: sb.upload(tmp / "missing.txt", "x"), pybox.InvalidArgument,
     ["missing.txt", "does not exist"]),
    ("upload-outside-app", lambda sb, tmp: sb.upload(tmp, "/etc/x"), pybox.InvalidArgument, ["/etc/x", "outside"]),
    ("upload-onto-app-itself", lambda sb, tmp: sb.upload(tmp, "."), pybox.InvalidArgument, ["/app"]),
    ("download-missing-remote", lambda sb, tmp: sb.download("no-such-file.txt", tmp / "x"), pybox.BackendError,
     ["no-such-file.txt"]),
    ("download-empty-local", lambda sb, tmp: sb.download("x", ""), pybox.InvalidArgument, ["local path"]),
    ("module-sources-a-string", lambda sb, tmp: sb.module_sources("json"), pybox.InvalidArgument, ["json"]),
    ("startup-code-not-a-string", lambda sb, tmp: sandbox(startup_code=1), pybox.InvalidArgument,
     ["startup_code"]),
    ("connect-wrong-token", lambda sb, tmp: pybox.Kernel.connect(sb.host, sb.port, "wrong", timeout=30,
                                                                  certificate=sb.gateway_certificate),
     pybox.ChannelError, ["token"]),
    ("connect-bad-port", lambda sb, tmp: pybox.Kernel.connect("127.0.0.1", True, "t"), pybox.InvalidArgument,
     ["port"]),
    ("kernel-before-start", lambda sb, tmp: sandbox().kernel(), pybox.InvalidArgument, ["not started"]),
]


@pytest.fixture(scope="module")
def shared(sandbox_module):
    return sandbox_module


@pytest.fixture(scope="module")
def sandbox_module():
    with sandbox() as sb:
        yield sb


def own_containers():
    engine = get_plugins().backend(BACKEND)()
    try:
        return set(engine.list_containers({"pybox.session": _SESSION}))
    finally:
        engine.close()


def test_there_are_at_least_thirty():
    assert len(MISUSES) >= 30


@pytest.mark.parametrize("name,call,error,words", MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse(shared, tmp_path, name, call, error, words, monkeypatch):
    if name == "port-in-use" and BACKEND == "swarm":
        pin_to_node_of(shared, monkeypatch)  # else the scheduler picks a node where the port is free
    before = own_containers()
    with pytest.raises(error) as info:
        call(shared, tmp_path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"
    assert own_containers() <= before, f"{name} left a container behind"
    assert shared.run("print('ok')").text == "ok"  # the sandbox is unharmed


def test_closed_sandbox_and_double_close():
    sb = sandbox().start()
    sb.stop()
    sb.stop()  # double close is fine
    with pytest.raises(pybox.SandboxClosed, match="stopped"):
        sb.run("1")
    with pytest.raises(pybox.SandboxClosed):
        sb.start()


def test_closed_kernel(shared):
    kernel = shared.kernel()
    kernel.close()
    kernel.close()
    with pytest.raises(pybox.SandboxClosed, match="closed"):
        kernel.run("1")


def test_engine_down(tmp_path, monkeypatch):
    if BACKEND not in ("docker", "docker-remote", "swarm"):
        pytest.skip("DOCKER_HOST names the engine of the docker backends only")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/x" if BACKEND == "docker" else "tcp://127.0.0.1:1")
    with pytest.raises(pybox.BackendUnavailable) as info:
        sandbox().start()
    assert info.value.hint and info.value.__cause__ is not None


def test_non_utf8_and_binary_output_arrive(shared):
    result = shared.run("import os, sys\nos.write(1, b'\\xff\\xfeok\\n')\nsys.stdout.flush()\nprint(bytes(range(4)))")
    assert "ok" in result.stdout and "\ufffd" in result.stdout
    assert "b'\\x00\\x01\\x02\\x03'" in result.stdout
    assert os.environ  # (no exception reached the caller)


def pin_to_node_of(sb, monkeypatch):
    """On a swarm: the next sandboxes go to the node that runs ``sb``."""
    engine = get_plugins().backend("swarm")()
    try:
        monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", f"node.id=={engine._task(sb.id).node_id}")
    finally:
        engine.close()


def test_a_busy_port_leaves_the_sandbox_holding_it_reachable(shared, monkeypatch):
    if BACKEND == "swarm":  # else the scheduler picks a node where the port is free (and it starts)
        pin_to_node_of(shared, monkeypatch)
    # Podman 4.3 tore down the holder's port forwarding when a second start failed on it.
    with pytest.raises(pybox.BackendError, match="in use"):
        start(port=shared.port)
    with pybox.Kernel.connect(shared.host, shared.port, shared.token, timeout=30,
                              certificate=shared.gateway_certificate) as kernel:
        assert kernel.run("print('reachable')").text == "reachable"
