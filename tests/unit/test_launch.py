"""The launch plan: decided once in core, adjusted by plugins, checked against what
the backend enforces before anything starts."""

from __future__ import annotations

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
from pybox.backend import (
    ALL_FEATURES,
    BINDS,
    LIMITS,
    NETWORK_POLICY,
    READ_ONLY,
    Bind,
    ContainerSpec,
    Limits,
    PublishedPort,
)
from pybox.errors import BackendError, UnsupportedOperation
from pybox.image_contract import GATEWAY_PORT, NETWORK_ENV, NETWORK_INIT, SCRATCH_MOUNTS, WORKDIR
from pybox.launch import (
    client_host,
    labels_from_inspect,
    parse_bytes,
    plan_launch,
    prepare_launch,
    published_host_port,
    refuse_unsupported,
    state_from_inspect,
)
from pybox.plugins import Plugins


def test_the_default_plan_runs_the_image_as_it_is_with_limits_in_bytes():
    plan = plan_launch(ContainerSpec(image="img:1", env={"A": "1"}, labels={"pybox": "1"}))
    assert plan.image == "img:1" and plan.command is None and plan.user is None
    assert plan.env == {"A": "1"} and plan.labels == {"pybox": "1"}
    assert plan.ports == [PublishedPort(GATEWAY_PORT, "127.0.0.1", None)]
    assert plan.no_new_privileges and not plan.read_only and not plan.cap_add and not plan.cap_drop
    assert (plan.memory_bytes, plan.memory_swap_bytes, plan.pids, plan.cpus) == (2 << 30, 4 << 30, 1024, None)
    assert not plan.scratch and not plan.volumes and not plan.network_policed


def test_read_only_gets_the_image_contracts_scratch_mounts_and_a_volume_at_app():
    plan = plan_launch(ContainerSpec(image="i", read_only=True))
    assert plan.read_only
    assert [(s.path, s.size, s.sandbox_owned) for s in plan.scratch] == list(SCRATCH_MOUNTS)
    assert plan.volumes == [WORKDIR]


@pytest.mark.parametrize("network, value", [("none", "none"),
                                            (("10.0.0.0/8", "pypi.org"), "allow:10.0.0.0/8,pypi.org")])
def test_a_network_policy_runs_the_init_as_root_with_net_admin(network, value):
    plan = plan_launch(ContainerSpec(image="i", network=network, command=["extra"]))
    assert plan.user == "0" and plan.cap_add == ["NET_ADMIN"]
    assert plan.env[NETWORK_ENV] == value
    assert plan.command == [NETWORK_INIT, "extra"] and plan.network_policed


def test_limits_none_leave_the_engine_default():
    plan = plan_launch(ContainerSpec(image="i", limits=Limits(memory=None, cpus=0.5, pids=None)))
    assert (plan.memory_bytes, plan.memory_swap_bytes, plan.pids, plan.cpus) == (None, None, None, 0.5)


@pytest.mark.parametrize("text, expected", [("512m", 512 << 20), ("2g", 2 << 30), ("1024", 1024), (77, 77),
                                            ("1.5k", 1536)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


class NoFeatures(FakeBackend):
    name = "bare"
    features = frozenset()
    unsupported_hints = {BINDS: "copy files with upload() instead"}


@pytest.mark.parametrize("spec, feature_words", [
    (ContainerSpec(image="i", binds=[Bind("/tmp", "/app/t")], limits=Limits(None, None, None)), "binds"),
    (ContainerSpec(image="i"), "limits"),
    (ContainerSpec(image="i", read_only=True, limits=Limits(None, None, None)), "read_only=True"),
    (ContainerSpec(image="i", network="none", limits=Limits(None, None, None)), "network policy"),
])
def test_an_option_the_backend_cannot_enforce_is_refused(spec, feature_words):
    with pytest.raises(UnsupportedOperation, match="the bare backend cannot enforce") as info:
        refuse_unsupported(plan_launch(spec), NoFeatures())
    assert feature_words in str(info.value)


def test_the_refusal_carries_the_backends_hint_or_says_how_to_go_without_limits():
    with pytest.raises(UnsupportedOperation, match="copy files with upload"):
        refuse_unsupported(plan_launch(ContainerSpec(image="i", binds=[Bind("/tmp", "/app/t")])), NoFeatures())
    with pytest.raises(UnsupportedOperation, match=r"Limits\(memory=None, cpus=None, pids=None\)"):
        refuse_unsupported(plan_launch(ContainerSpec(image="i")), NoFeatures())
    refuse_unsupported(plan_launch(ContainerSpec(image="i", limits=Limits(None, None, None))), NoFeatures())


class Harden:
    """A plugin adjusting every plan (as examples/plugin-hardened does)."""

    calls: list[str] = []

    @pybox.hookimpl
    def pybox_adjust_launch_plan(self, plan, backend):
        type(self).calls.append(backend)
        plan.read_only = True
        plan.cap_drop = ["ALL"]


def test_plugins_adjust_the_plan_and_the_adjusted_plan_is_checked():
    plugins = Plugins(load_entry_points=False)
    plugins.register(Harden(), name="harden")
    plan = prepare_launch(ContainerSpec(image="i"), FakeBackend(), plugins.adjust_launch_plan)
    assert plan.read_only and plan.cap_drop == ["ALL"] and Harden.calls[-1] == "fake"

    class NoReadOnly(FakeBackend):
        name = "no-read-only"
        features = ALL_FEATURES - {READ_ONLY}

    with pytest.raises(UnsupportedOperation, match="read_only"):
        prepare_launch(ContainerSpec(image="i"), NoReadOnly(), plugins.adjust_launch_plan)


def test_the_backend_adjusts_the_plan_after_the_plugins():
    class Remote(FakeBackend):
        name = "remote-ish"

        def adjust_plan(self, plan):
            plan.ports = [PublishedPort(p.container_port, "0.0.0.0", p.host_port) for p in plan.ports]

    plan = prepare_launch(ContainerSpec(image="i"), Remote())
    assert plan.published(GATEWAY_PORT).host_ip == "0.0.0.0"
    with pytest.raises(BackendError, match="publishes no port 1"):
        plan.published(1)


def test_a_sandbox_is_refused_before_any_container_starts(fake_plugins, tmp_path):
    fake_plugins.register(FakeBackendPlugin(NoFeatures), name="bare-plugin")
    sandbox = pybox.Sandbox(backend="bare", binds={str(tmp_path): "data"},
                            limits=pybox.Limits(memory=None, cpus=None, pids=None))
    with pytest.raises(UnsupportedOperation, match="binds"):
        sandbox.start()
    assert all(not b.plans for b in FakeBackend.instances)
    assert [c for b in FakeBackend.instances for c in b.calls if c[0] == "start"] == []


def test_inspect_data_is_read_back_without_an_sdk():
    info = {"State": {"Running": False, "Status": "exited", "ExitCode": 137, "OOMKilled": True},
            "Config": {"Labels": {"pybox": "1"}},
            "NetworkSettings": {"Ports": {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}}}
    state = state_from_inspect(info)
    assert (state.running, state.exit_code, state.oom_killed) == (False, 137, True)
    assert "OOMKilled" in state.describe()
    assert state_from_inspect(None).status == "removed"
    assert labels_from_inspect(info) == {"pybox": "1"} and labels_from_inspect(None) is None
    assert published_host_port(info, 8888, "c" * 64) == 49153
    with pytest.raises(BackendError, match="publishes no port"):
        published_host_port({"NetworkSettings": {"Ports": {"8888/tcp": None}}}, 8888, "c" * 64)
    assert state_from_inspect({"State": {"ExitCode": "junk"}}).exit_code is None
    assert client_host("0.0.0.0") == "127.0.0.1" and client_host("::") == "::1"
    assert client_host("10.0.0.1") == "10.0.0.1"


def test_first_party_backends_declare_what_they_enforce():
    from pybox.plugins import get_plugins

    backends = get_plugins().backends()
    assert backends["docker"].cls.features == ALL_FEATURES
    assert backends["podman"].cls.features == ALL_FEATURES
    remote = backends["docker-remote"].cls
    assert BINDS not in remote.features and {LIMITS, READ_ONLY, NETWORK_POLICY} <= remote.features
    assert "upload" in remote.unsupported_hints[BINDS]
