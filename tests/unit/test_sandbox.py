"""Sandbox argument validation and lifecycle with a fake backend: no engine needed."""

from __future__ import annotations

import os

import pytest
from fakes import FakeBackend

import pybox
from pybox import BackendNotFound, ContainerState, InvalidArgument, Limits, SandboxClosed, StartupTimeout
from pybox.backend import PublishedPort
from pybox.kernel.gateway import Gateway
from pybox.sandbox import DEFAULT_IMAGE, PRESPAWN_ENV, TOKEN_ENV, container_path


@pytest.fixture
def make_sandbox(fake_plugins):
    made = []

    def make(**kwargs):
        kwargs.setdefault("backend", "fake")
        sandbox = pybox.Sandbox(**kwargs)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.stop()


# -- construction validates, and starts nothing -------------------------------------------


def test_valid_sandbox_starts_nothing(make_sandbox, tmp_path):
    sb = make_sandbox(binds={str(tmp_path): "data"}, env={"A": "1"}, port=8080, limits=Limits(memory="1g"))
    assert sb.image == DEFAULT_IMAGE
    assert sb.backend_name == "fake"
    assert sb.id is None
    assert FakeBackend.instances == []  # no backend object, no container yet
    assert "not started" in repr(sb)
    assert sb.env == {"A": "1"}
    assert sb.port_requested == 8080
    with pytest.raises(InvalidArgument, match="not started"):
        _ = sb.host


@pytest.mark.parametrize("image", ["", "   ", "pybox latest", "pybox:latest\n", 42, b"pybox"])
def test_bad_image_name(make_sandbox, image):
    with pytest.raises(InvalidArgument, match="image") as info:
        make_sandbox(image=image)
    assert repr(image) in str(info.value)


def test_unknown_backend_names_it_and_lists_the_available(make_sandbox):
    with pytest.raises(BackendNotFound) as info:
        make_sandbox(backend="podmann")
    assert "'podmann'" in str(info.value)
    assert "fake" in str(info.value)


def test_pybox_backend_env_selects_the_backend(fake_plugins, monkeypatch):
    monkeypatch.setenv("PYBOX_BACKEND", "nosuch")
    with pytest.raises(BackendNotFound, match="nosuch"):
        pybox.Sandbox()
    monkeypatch.setenv("PYBOX_BACKEND", "fake")
    assert pybox.Sandbox().backend_name == "fake"


def test_bind_host_path_must_exist(make_sandbox, tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(InvalidArgument, match="does not exist") as info:
        make_sandbox(binds={str(missing): "data"})
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("target", ["../etc", "/etc", "/app/../etc", "data/../../etc", "/application", "/"])
def test_bind_container_path_may_not_leave_app(make_sandbox, tmp_path, target):
    with pytest.raises(InvalidArgument) as info:
        make_sandbox(binds={str(tmp_path): target})
    assert repr(target) in str(info.value)
    assert "/app" in str(info.value)


@pytest.mark.parametrize("target", ["", "  ", None, 5])
def test_bind_container_path_must_be_a_path(make_sandbox, tmp_path, target):
    with pytest.raises(InvalidArgument, match="bind container path"):
        make_sandbox(binds={str(tmp_path): target})


def test_bind_paths_are_resolved(make_sandbox, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    sb = make_sandbox(binds={"sub": "data/in", str(tmp_path): "/app/out/../results", "./sub/": "."})
    assert [(b.host, b.container, b.read_only) for b in sb.binds] == [
        (str(tmp_path / "sub"), "/app/data/in", False),
        (str(tmp_path), "/app/results", False),
        (str(tmp_path / "sub"), "/app", False),
    ]


def test_binds_must_be_a_dict(make_sandbox, tmp_path):
    with pytest.raises(InvalidArgument, match="binds must be a dict"):
        make_sandbox(binds=[(str(tmp_path), "data")])


@pytest.mark.parametrize("path, resolved", [
    ("x.txt", "/app/x.txt"),
    ("./a/b/../c", "/app/a/c"),
    ("/app", "/app"),
    ("/app/", "/app"),
    ("/app/deep/file", "/app/deep/file"),
    (".", "/app"),
])
def test_container_path_resolves_under_app(path, resolved):
    assert container_path(path) == resolved


@pytest.mark.parametrize("path, message", [
    ("../etc/passwd", "outside /app"),
    ("/etc/passwd", "outside /app"),
    ("/app2/x", "outside /app"),
    ("../../..", "leaves /"),
    ("", "non-empty"),
])
def test_container_path_refuses_escapes(path, message):
    with pytest.raises(InvalidArgument, match=message):
        container_path(path, "file path")


@pytest.mark.parametrize("env, named", [
    ({"A": 1}, "A"),
    ({"OK": "1", "PORT": 8080}, "PORT"),
    ({"X": None}, "X"),
    ({"B": b"bytes"}, "B"),
])
def test_env_values_must_be_str(make_sandbox, env, named):
    with pytest.raises(InvalidArgument, match="must be a str") as info:
        make_sandbox(env=env)
    assert f"env variable {named} " in str(info.value)
    assert type(env[named]).__name__ in str(info.value)


@pytest.mark.parametrize("key", ["", "A=B", 3, "NUL\0"])
def test_env_names_must_be_valid(make_sandbox, key):
    with pytest.raises(InvalidArgument, match="env variable name") as info:
        make_sandbox(env={key: "v"})
    assert repr(key) in str(info.value)


def test_env_may_not_set_the_token(make_sandbox):
    with pytest.raises(InvalidArgument, match=TOKEN_ENV):
        make_sandbox(env={TOKEN_ENV: "guessable"})


@pytest.mark.parametrize("port", [0, -1, 65536, 100000, True, "8080", 80.0])
def test_port_out_of_range(make_sandbox, port):
    with pytest.raises(InvalidArgument, match="port") as info:
        make_sandbox(port=port)
    assert repr(port) in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"limits": {"memory": "1g"}}, "limits must be a pybox.Limits"),
    ({"startup_timeout": 0}, "startup_timeout"),
    ({"startup_timeout": -3}, "startup_timeout"),
])
def test_other_bad_arguments(make_sandbox, kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        make_sandbox(**kwargs)


def test_invalid_argument_is_value_and_type_error(make_sandbox):
    with pytest.raises(ValueError):
        make_sandbox(port=0)
    with pytest.raises(TypeError):
        make_sandbox(env={"A": 1})


# -- lifecycle with the fake backend --------------------------------------------------------


def test_start_passes_a_launch_plan_and_close_removes_the_container(make_sandbox, tmp_path, monkeypatch):
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    sb = make_sandbox(image="custom:1", binds={str(tmp_path): "data"}, env={"A": "1"}, port=8123,
                      limits=Limits(cpus=0.5))
    with sb:
        # (another instance may exist: the background reaper of orphaned containers)
        (backend,) = [b for b in FakeBackend.instances if b.plans]
        (plan,) = backend.plans
        assert plan.image == "custom:1"
        assert plan.env["A"] == "1"
        assert plan.env[TOKEN_ENV] == sb.token and len(sb.token) >= 32
        assert plan.env[PRESPAWN_ENV] == "1"
        assert plan.binds == sb.binds and plan.binds[0].container == "/app/data"
        assert (plan.cpus, plan.memory_bytes, plan.pids) == (0.5, 2 << 30, 1024)
        assert plan.ports == [PublishedPort(8888, "127.0.0.1", 8123)]
        assert plan.labels["pybox"] == "1" and plan.labels["pybox.pid"] == str(os.getpid())
        assert plan.labels["pybox.started"] and plan.labels["pybox.session"] and plan.labels["pybox.host"]
        assert (sb.host, sb.port) == ("127.0.0.1", 49999)
        assert sb.start() is sb  # idempotent: no second container
        assert len(backend.plans) == 1
        assert "running" in repr(sb)
    assert sb.closed
    assert backend.calls[-2:] == [("remove", "c0ffee" * 10), ("close",)]
    with pytest.raises(SandboxClosed):
        sb.start()
    with pytest.raises(SandboxClosed):
        sb.run("1")
    with pytest.raises(SandboxClosed):
        _ = sb.host
    sb.stop()  # the old name; twice is fine
    sb.close()
    assert sum(1 for c in backend.calls if c[0] == "remove") == 1


def test_container_that_exits_at_startup_is_reported_with_its_logs(make_sandbox, monkeypatch):
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: False)
    monkeypatch.setattr(FakeBackend, "state", ContainerState(running=False, status="exited", exit_code=3))
    sb = make_sandbox(startup_timeout=30)
    with pytest.raises(StartupTimeout) as info:
        sb.start()
    assert "exit code 3" in str(info.value)
    assert info.value.logs == "gateway: boom\n"
    assert "gateway: boom" in str(info.value)
    (backend,) = FakeBackend.instances
    assert ("remove", "c0ffee" * 10) in backend.calls  # nothing left behind
    assert backend.calls[-1] == ("close",)


def test_gateway_that_never_answers_times_out(make_sandbox, monkeypatch):
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: False)
    sb = make_sandbox(startup_timeout=0.1)
    with pytest.raises(StartupTimeout, match="did not answer within 0.1 s"):
        sb.start()
    assert ("remove", "c0ffee" * 10) in FakeBackend.instances[0].calls


def test_explain_death_asks_the_backend(make_sandbox, monkeypatch):
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    sb = make_sandbox().start()
    assert sb._explain_death() is None  # still running
    monkeypatch.setattr(FakeBackend, "state", ContainerState(running=False, status="exited", exit_code=137,
                                                             oom_killed=True))
    assert "OOMKilled" in sb._explain_death()


@pytest.mark.parametrize("state, expected", [
    (ContainerState(running=True, status="running"), "running"),
    (ContainerState(running=False, status="exited", exit_code=1), "exited, exit code 1"),
    (ContainerState(running=False, exit_code=0, error="no space left"), "stopped, exit code 0, no space left"),
    (ContainerState(running=False, status="exited", exit_code=137, oom_killed=True),
     "OOMKilled (the container ran out of memory; exit code 137)"),
])
def test_container_state_describe(state, expected):
    assert state.describe() == expected


@pytest.mark.parametrize("network,expected", [
    ("default", "default"),
    ("open", "open"),
    ("none", "none"),
    (["10.0.0.1", "10.1.0.0/16", "2001:db8::1", "Example.COM"], ("10.0.0.1", "10.1.0.0/16", "2001:db8::1",
                                                                  "example.com")),
    (("10.1.2.3/8",), ("10.0.0.0/8",)),
])
def test_network_policies(network, expected):
    from pybox.sandbox import check_network

    assert check_network(network) == expected


@pytest.mark.parametrize("network", ["closed", "", "Default", ["10.0.0.300"], ["bad domain"], [None], 5, ["-x.com"],
                                     ["1.2"]])
def test_bad_network_policies(network):
    from pybox.sandbox import check_network

    with pytest.raises(InvalidArgument, match="network"):
        check_network(network)


def test_the_default_network_policy_is_the_default(fake_plugins):
    from pybox.options import SandboxOptions

    assert SandboxOptions().network == "default"
    assert pybox.Sandbox(backend="fake").network == "default"
    with pytest.raises(InvalidArgument, match="'default', 'open', 'none'"):
        SandboxOptions(network="closed")
