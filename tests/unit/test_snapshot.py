"""Snapshots without an engine: the tag check, the configuration a snapshot is committed
with (nothing of the container's: no token, no env, no owner labels), the leak check,
Podman's changes, and Sandbox.snapshot's refusals with a fake backend."""

from __future__ import annotations

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
from pybox import BackendError, InvalidArgument, SandboxClosed, UnsupportedOperation
from pybox.kernel.gateway import Gateway
from pybox.plugins import Plugins
from pybox.snapshot import (
    SNAPSHOT_CREATED_LABEL,
    SNAPSHOT_LABEL,
    check_tag,
    leaked_config,
    podman_changes,
    snapshot_config,
    snapshot_labels,
    split_tag,
)

BASE = {
    "Env": ["PATH=/opt/pybox/bin:/usr/bin", "PYTHONDONTWRITEBYTECODE=1"],
    "Cmd": ["/usr/local/sbin/pybox-init"],
    "Entrypoint": None,
    "User": "root",
    "WorkingDir": "/app",
    "ExposedPorts": {"8888/tcp": {}},
    "Labels": {"org.pybox.protocol": "3", "org.pybox.version": "0.2.0"},
}
CONTAINER = {
    "Env": ["KG_AUTH_TOKEN=the-token", "PYBOX_TLS_KEY=-----BEGIN PRIVATE KEY-----", "MYKEY=secret",
            "PATH=/evil:/usr/bin", "PYTHONDONTWRITEBYTECODE=1", "TERM=xterm"],
    "Cmd": ["/usr/local/sbin/pybox-init", "something"],
    "Entrypoint": ["/bin/sh"],
    "User": "0",
    "Labels": {"org.pybox.protocol": "3", "org.pybox.version": "0.2.0", "pybox": "1", "pybox.pid": "42",
               "pybox.session": "abc"},
}


@pytest.mark.parametrize("tag", ["my-env:v1", "my-env", "team/env:2", "registry.example:5000/team/env:2.0-rc_1",
                                 "localhost/env:latest", "a" * 200 + ":" + "t" * 128])
def test_valid_tags(tag):
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag, why", [
    ("", "empty"), ("My-Env:v1", "lowercase"), ("env:v1@sha256:" + "0" * 64, "digest"), ("env:", "lowercase"),
    ("env:-x", "lowercase"), ("env v1", "lowercase"), ("../env", "lowercase"), ("env:" + "t" * 129, "lowercase"),
    ("a" * 256, "longer than 255"), ("env//x", "lowercase"), ("-env", "lowercase"),
])
def test_invalid_tags_are_refused_naming_the_tag(tag, why):
    with pytest.raises(InvalidArgument, match=why) as caught:
        check_tag(tag)
    assert repr(tag) in str(caught.value)


def test_a_tag_must_be_a_string():
    with pytest.raises(InvalidArgument, match="image name"):
        check_tag(None)


@pytest.mark.parametrize("tag, split", [("env", ("env", "latest")), ("env:v1", ("env", "v1")),
                                        ("host:5000/env", ("host:5000/env", "latest")),
                                        ("host:5000/team/env:2", ("host:5000/team/env", "2"))])
def test_split_tag(tag, split):
    assert split_tag(tag) == split


def test_the_config_is_the_base_images_with_the_containers_own_entries_empty():
    config = snapshot_config(BASE, CONTAINER, {SNAPSHOT_LABEL: "pybox:latest"})
    env = config["Env"]
    # The base's values, the base's order; PATH keeps the base's value, not the container's.
    assert env[:2] == BASE["Env"]
    assert set(env[2:]) == {"KG_AUTH_TOKEN=", "PYBOX_TLS_KEY=", "MYKEY=", "TERM="}
    assert not any("the-token" in e or "secret" in e or "PRIVATE" in e or "/evil" in e for e in env)
    assert config["Labels"] == {"org.pybox.protocol": "3", "org.pybox.version": "0.2.0", "pybox": "",
                                "pybox.pid": "", "pybox.session": "", SNAPSHOT_LABEL: "pybox:latest"}
    assert config["Cmd"] == BASE["Cmd"]
    # Unset in the base: present and empty, so that an engine does not fill them from the container.
    assert config["Entrypoint"] == [] and config["Volumes"] == {}
    assert (config["User"], config["WorkingDir"], config["ExposedPorts"]) == ("root", "/app", {"8888/tcp": {}})
    assert leaked_config(config, BASE) == []


def test_engine_defaults_are_left_when_unchanged():
    config = snapshot_config(BASE, CONTAINER, {}, engine_env={"TERM": "xterm"})
    assert "TERM=" not in config["Env"] and not any(e.startswith("TERM") for e in config["Env"])
    changed = snapshot_config(BASE, {"Env": ["TERM=secret"]}, {}, engine_env={"TERM": "xterm"})
    assert "TERM=" in changed["Env"]


def test_missing_configs_give_an_empty_one():
    config = snapshot_config(None, None, {"x": "1"})
    assert config["Env"] == [] and config["Labels"] == {"x": "1"} and config["Cmd"] == []


def test_the_leak_check_finds_what_a_naive_commit_keeps():
    # A commit given the container's configuration (what `docker commit` does by default).
    naive = {**CONTAINER, "Labels": {**CONTAINER["Labels"], SNAPSHOT_LABEL: "pybox:latest"}}
    leaked = leaked_config(naive, BASE, engine_env={"TERM": "xterm"})
    assert "environment variable KG_AUTH_TOKEN" in leaked and "environment variable MYKEY" in leaked
    assert "environment variable PYBOX_TLS_KEY" in leaked and "environment variable PATH" in leaked
    assert "environment variable TERM" not in leaked
    assert "label pybox.pid" in leaked and "command" in leaked and "entry point" in leaked
    assert not any(SNAPSHOT_LABEL in item for item in leaked)


def test_podman_changes_set_every_field():
    config = snapshot_config(BASE, CONTAINER, {SNAPSHOT_LABEL: "pybox:latest"})
    changes = podman_changes(config)
    assert "ENV PATH=/opt/pybox/bin:/usr/bin" in changes and "ENV KG_AUTH_TOKEN=" in changes
    assert 'LABEL pybox.pid=""' in changes and 'LABEL org.pybox.snapshot.of="pybox:latest"' in changes
    assert 'CMD ["/usr/local/sbin/pybox-init"]' in changes and "ENTRYPOINT []" in changes
    assert "USER root" in changes and "WORKDIR /app" in changes
    assert not any("the-token" in c or "secret" in c for c in changes)


def test_snapshot_labels():
    labels = snapshot_labels("pybox:latest", "sha256:abc", now=1234.5)
    assert labels == {SNAPSHOT_LABEL: "pybox:latest", SNAPSHOT_CREATED_LABEL: "1234",
                      "org.pybox.snapshot.base-id": "sha256:abc"}


# -- Sandbox.snapshot with a fake backend ------------------------------------------------------


class CommittingBackend(FakeBackend):
    name = "fake"
    committed: list[tuple] = []

    def commit(self, container_id, tag, labels):
        type(self).committed.append((container_id, tag, dict(labels)))
        return "sha256:" + "1" * 64


@pytest.fixture
def started(fake_plugins, monkeypatch):
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    made = []

    def make(backend_cls=FakeBackend, **kwargs):
        plugins = Plugins(load_entry_points=False)
        plugins.register(FakeBackendPlugin(backend_cls), name="fake-plugin")
        monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
        sandbox = pybox.Sandbox(image="base:1", backend="fake", **kwargs)
        made.append(sandbox)
        return sandbox.start()

    yield make
    for sandbox in made:
        sandbox.close()


def test_snapshot_commits_with_the_snapshot_labels_and_returns_the_image_id(started):
    CommittingBackend.committed.clear()
    sb = started(CommittingBackend)
    assert sb.snapshot("my-env:v1") == "sha256:" + "1" * 64
    ((container, tag, labels),) = CommittingBackend.committed
    assert (container, tag) == (sb.id, "my-env:v1")
    assert labels[SNAPSHOT_LABEL] == "base:1" and labels[SNAPSHOT_CREATED_LABEL].isdigit()


def test_a_backend_without_snapshots_says_which(started):
    sb = started(FakeBackend)
    with pytest.raises(UnsupportedOperation, match="the fake backend cannot save a sandbox as an image"):
        sb.snapshot("my-env:v1")


def test_a_bad_tag_is_refused_before_the_backend_is_asked(started):
    CommittingBackend.committed.clear()
    sb = started(CommittingBackend)
    with pytest.raises(InvalidArgument, match="'Bad Tag'"):
        sb.snapshot("Bad Tag")
    assert CommittingBackend.committed == []


def test_a_read_only_sandbox_is_refused(started):
    sb = started(CommittingBackend, read_only=True)
    with pytest.raises(UnsupportedOperation, match="read-only sandbox as 'my-env:v1'.*read_only=False"):
        sb.snapshot("my-env:v1")


def test_a_closed_or_unstarted_sandbox_is_refused(fake_plugins, started):
    sb = started(CommittingBackend)
    sb.close()
    with pytest.raises(SandboxClosed):
        sb.snapshot("my-env:v1")
    fresh = pybox.Sandbox(image="base:1", backend="fake")
    with pytest.raises(InvalidArgument, match="not started"):
        fresh.snapshot("my-env:v1")


def test_engine_errors_pass_as_backend_errors(started):
    class Failing(FakeBackend):
        name = "fake"

        def commit(self, container_id, tag, labels):
            raise BackendError(f"Docker refused to save the sandbox as image {tag!r}: boom")

    sb = started(Failing)
    with pytest.raises(BackendError, match="'my-env:v1': boom"):
        sb.snapshot("my-env:v1")


def test_a_read_only_plan_from_a_snapshot_keeps_the_images_home_directories():
    from pybox.backend import ContainerSpec
    from pybox.image_contract import GATEWAY_HOME, SANDBOX_HOME, WORKDIR
    from pybox.launch import keep_image_content, plan_launch

    plan = plan_launch(ContainerSpec(image="snap:1", read_only=True))
    keep_image_content(plan)
    assert plan.volumes == [WORKDIR, f"{SANDBOX_HOME}/.local", f"{SANDBOX_HOME}/.config", f"{SANDBOX_HOME}/.jupyter"]
    assert [s.path for s in plan.scratch] == ["/tmp", GATEWAY_HOME]  # still tmpfs, capped
    open_plan = plan_launch(ContainerSpec(image="snap:1"))
    keep_image_content(open_plan)  # nothing hidden without a read-only root
    assert open_plan.volumes == [] and [s.path for s in open_plan.scratch] == [GATEWAY_HOME]


def test_sandbox_start_keeps_the_content_of_a_snapshot_only(started, monkeypatch):
    labels = {"org.pybox.protocol": "3"}

    class Labelled(FakeBackend):
        name = "fake"

        def image_labels(self, image):
            return labels

    sb = started(Labelled, read_only=True)
    assert not [b for b in Labelled.instances if b.plans][-1].plans[-1].volumes[1:]
    labels[SNAPSHOT_LABEL] = "pybox:latest"
    sb = started(Labelled, read_only=True)
    plan = [b for b in Labelled.instances if b.plans][-1].plans[-1]
    assert "/home/sandbox/.local" in plan.volumes and sb.id


# -- the first-party backends' commit, against a scripted SDK ----------------------------------


class ScriptedDockerAPI:
    """The part of docker-py's APIClient that DockerBackend.commit uses."""

    def __init__(self, *, commit_error=None, committed_config=None, container=CONTAINER, running=True,
                 container_config=None):
        self.container_config = container_config
        self.timeout = 60
        self.calls: list[tuple] = []
        self.commit_error = commit_error
        self.committed_config = committed_config
        self.container = container
        self.running = running

    def inspect_container(self, container_id):
        import docker.errors

        if self.container is None:
            raise docker.errors.NotFound("no such container")
        return {"Image": "sha256:base", "Config": self.container, "State": {"Running": self.running,
                                                                             "Status": "running" if self.running
                                                                             else "exited", "ExitCode": 0}}

    def inspect_image(self, image):
        if image == "sha256:base":
            return {"Config": BASE}
        config = self.committed_config if self.committed_config is not None else self.conf
        return {"Config": config, "ContainerConfig": self.container_config or config}

    def commit(self, container, repository=None, tag=None, conf=None, pause=True, **_):
        self.calls.append(("commit", container, repository, tag, pause, self.timeout))
        self.conf = conf
        if self.commit_error is not None:
            raise self.commit_error
        return {"Id": "sha256:new" if repository else "sha256:layer"}

    def create_host_config(self, **_):
        return {}

    def create_container(self, image, host_config=None, **kwargs):
        self.calls.append(("create_container", image, kwargs))
        return {"Id": "helper"}

    def remove_container(self, container, force=False, v=False):
        self.calls.append(("remove_container", container))

    def remove_image(self, image, force=False):
        self.calls.append(("remove_image", image))

    def close(self):
        pass


def docker_backend(api):
    pytest.importorskip("docker")
    from pybox_docker.backend import DockerBackend

    backend = DockerBackend()
    backend._api = api
    return backend


def test_docker_commit_sends_the_clean_configuration_paused_with_a_long_timeout():
    api = ScriptedDockerAPI()
    assert docker_backend(api).commit("c1", "reg.example:5000/env:v1", {SNAPSHOT_LABEL: "base:1"}) == "sha256:new"
    # The sandbox's container is committed untagged, paused; a container made from that (never
    # started: its configuration is the clean one) is committed as the snapshot, then removed.
    first, create, second, remove = api.calls
    assert first[:5] == ("commit", "c1", None, None, True) and first[5] >= 600
    assert create == ("create_container", "sha256:layer", {})
    assert second[:5] == ("commit", "helper", "reg.example:5000/env", "v1", False)
    assert remove == ("remove_container", "helper")
    assert api.timeout == 60  # restored
    assert "KG_AUTH_TOKEN=" in api.conf["Env"] and not any("the-token" in e for e in api.conf["Env"])
    assert api.conf["Labels"]["org.pybox.snapshot.base-id"] == "sha256:base"


def test_docker_commit_removes_an_image_that_leaks():
    api = ScriptedDockerAPI(committed_config=CONTAINER)  # an engine that ignored the configuration
    with pytest.raises(BackendError, match="kept the container's environment variable KG_AUTH_TOKEN.*removed"):
        docker_backend(api).commit("c1", "env:v1", {})
    assert api.calls[-1] == ("remove_image", "sha256:new")


def test_docker_commit_removes_an_image_whose_container_config_leaks():
    # Docker up to 24 records the committed container's configuration in the image.
    api = ScriptedDockerAPI(container_config=CONTAINER)
    with pytest.raises(BackendError, match="KG_AUTH_TOKEN \\(in ContainerConfig\\)"):
        docker_backend(api).commit("c1", "env:v1", {})
    assert api.calls[-1] == ("remove_image", "sha256:new")


def test_docker_commit_errors_name_the_tag_and_chain_the_sdk_error():
    import docker.errors

    refused = docker.errors.APIError("500", explanation="invalid reference format")
    with pytest.raises(BackendError, match="'env:v1': invalid reference format") as caught:
        docker_backend(ScriptedDockerAPI(commit_error=refused)).commit("c1", "env:v1", {})
    assert caught.value.__cause__ is refused
    with pytest.raises(BackendError, match="as image env:v1: it is not running"):
        docker_backend(ScriptedDockerAPI(container=None)).commit("c1", "env:v1", {})
    with pytest.raises(BackendError, match="it is not running .*exited"):
        docker_backend(ScriptedDockerAPI(running=False)).commit("c1", "env:v1", {})
    import requests

    with pytest.raises(pybox.BackendUnavailable):
        docker_backend(ScriptedDockerAPI(commit_error=requests.ConnectionError("down"))).commit("c1", "env:v1", {})
    with pytest.raises(BackendError, match="did not finish") as caught:
        docker_backend(ScriptedDockerAPI(commit_error=requests.ReadTimeout("slow"))).commit("c1", "env:v1", {})
    assert isinstance(caught.value.__cause__, requests.ReadTimeout)


def test_a_pool_starts_its_sandboxes_from_a_snapshot_tag(fake_plugins, monkeypatch):
    import time

    class Labelled(FakeBackend):
        name = "fake"

        def image_labels(self, image):
            return {"org.pybox.protocol": "3", SNAPSHOT_LABEL: "pybox:latest"}

    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(Labelled), name="fake-plugin")
    monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
    monkeypatch.setenv("PYBOX_NO_PROCESS_HOOKS", "1")
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: False)  # never ready: starts only
    with pybox.Pool(size=1, image="my-env:v1", backend="fake", read_only=True, startup_timeout=1) as pool:
        assert pool.options.image == "my-env:v1"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [b for b in Labelled.instances if b.plans]:
            time.sleep(0.02)
    (plan, *_) = [b for b in Labelled.instances if b.plans][0].plans
    assert plan.image == "my-env:v1" and "/home/sandbox/.local" in plan.volumes and plan.read_only


def test_a_sandbox_a_plugin_made_read_only_is_refused(fake_plugins, monkeypatch):
    from pybox.hookspecs import hookimpl

    class Hardening:
        @hookimpl
        def pybox_adjust_launch_plan(self, plan, backend):
            plan.read_only = True

    CommittingBackend.committed.clear()
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(CommittingBackend), name="fake-plugin")
    plugins.register(Hardening(), name="hardening")
    monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    with pybox.Sandbox(image="base:1", backend="fake") as sb:
        with pytest.raises(UnsupportedOperation, match="made read-only by a plugin"):
            sb.snapshot("my-env:v1")
    assert CommittingBackend.committed == []
