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
    PIDS_LIMIT,
    READ_ONLY,
    Bind,
    ContainerSpec,
    Limits,
    PublishedPort,
)
from pybox.errors import BackendError, UnsupportedOperation
from pybox.image_contract import GATEWAY_HOME, GATEWAY_PORT, INIT, INIT_CAPS, NETWORK_ENV, SCRATCH_MOUNTS, WORKDIR
from pybox.launch import (
    client_host,
    host_addresses,
    labels_from_inspect,
    local_addresses,
    plan_launch,
    prepare_launch,
    published_host_port,
    refuse_unsupported,
    state_from_inspect,
)
from pybox.plugins import Plugins
from pybox.spec import memory_bytes


def test_the_open_plan_runs_the_init_as_root_with_its_capabilities_only_and_limits_in_bytes():
    plan = plan_launch(ContainerSpec(image="img:1", env={"A": "1"}, labels={"pybox": "1"}, network="open"))
    assert plan.image == "img:1" and plan.command == [INIT] and plan.user == "0"
    assert plan.env == {"A": "1"} and plan.labels == {"pybox": "1"}
    assert plan.ports == [PublishedPort(GATEWAY_PORT, "127.0.0.1", None)]
    assert plan.no_new_privileges and not plan.read_only
    assert plan.cap_drop == ["ALL"] and plan.cap_add == list(INIT_CAPS)
    assert (plan.memory_bytes, plan.memory_swap_bytes, plan.pids, plan.cpus) == (2 << 30, 4 << 30, 1024, None)
    assert not plan.volumes and not plan.network_policed
    # Only the gateway's runtime directory (its keys: never on the container's disk, nor in a snapshot).
    assert [s.path for s in plan.scratch] == [GATEWAY_HOME] and not plan.scratch[0].sandbox_owned


def test_read_only_gets_the_image_contracts_scratch_mounts_and_a_volume_at_app():
    plan = plan_launch(ContainerSpec(image="i", read_only=True))
    assert plan.read_only
    assert [(s.path, s.size, s.sandbox_owned) for s in plan.scratch] == list(SCRATCH_MOUNTS)
    assert plan.volumes == [WORKDIR]


def test_the_default_spec_gets_the_default_network_policy():
    plan = plan_launch(ContainerSpec(image="i"))
    assert plan.network_policed and plan.user == "0" and plan.cap_add == [*INIT_CAPS, "NET_ADMIN"]
    assert plan.env[NETWORK_ENV] == "default" and plan.command == [INIT]


@pytest.mark.parametrize("network, value", [("none", "none"), ("default", "default"),
                                            (("10.0.0.0/8", "pypi.org"), "allow:10.0.0.0/8,pypi.org")])
def test_a_network_policy_runs_the_init_as_root_with_net_admin(network, value):
    plan = plan_launch(ContainerSpec(image="i", network=network, command=["extra"]))
    assert plan.user == "0" and plan.cap_add == [*INIT_CAPS, "NET_ADMIN"] and plan.cap_drop == ["ALL"]
    assert plan.env[NETWORK_ENV] == value
    assert plan.command == [INIT, "extra"] and plan.network_policed


def test_limits_none_leave_the_engine_default():
    plan = plan_launch(ContainerSpec(image="i", limits=Limits(memory=None, cpus=0.5, pids=None)))
    assert (plan.memory_bytes, plan.memory_swap_bytes, plan.pids, plan.cpus) == (None, None, None, 0.5)


@pytest.mark.parametrize("text, expected", [("512m", 512 << 20), ("2g", 2 << 30), ("1024", 1024), (77, 77),
                                            ("1.5k", 1536)])
def test_memory_bytes(text, expected):
    assert memory_bytes(text) == expected


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
    with pytest.raises(UnsupportedOperation, match="network='open' needs none"):
        refuse_unsupported(plan_launch(ContainerSpec(image="i", limits=Limits(None, None, None))), NoFeatures())
    refuse_unsupported(plan_launch(ContainerSpec(image="i", limits=Limits(None, None, None), network="open")),
                       NoFeatures())


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
    if "kubernetes" in backends:  # its client installed (pybox[kubernetes])
        kubernetes = backends["kubernetes"].cls
        assert kubernetes.features == ALL_FEATURES - {BINDS, PIDS_LIMIT} and kubernetes.gateway_tls
        assert "upload" in kubernetes.unsupported_hints[BINDS]


def test_a_process_limit_is_refused_by_a_backend_without_one():
    class NoProcessLimit(NoFeatures):
        name = "nopids"
        features = ALL_FEATURES - {PIDS_LIMIT}

    refuse_unsupported(plan_launch(ContainerSpec(image="i", limits=Limits(pids=None))), NoProcessLimit())
    with pytest.raises(UnsupportedOperation, match=r"process limit.*Limits\(pids=None\)"):
        refuse_unsupported(plan_launch(ContainerSpec(image="i")), NoProcessLimit())


# -- the default network policy and pinned domains -------------------------------------------


def test_host_addresses_leave_out_what_the_default_policy_blocks_anyway(monkeypatch):
    import pybox.launch

    monkeypatch.setattr(pybox.launch, "local_addresses", lambda: [
        "127.0.0.1", "10.1.2.3", "172.17.0.1", "192.168.1.5", "169.254.1.1", "100.64.0.1", "192.0.2.2",
        "203.0.113.7", "::1", "fe80::1%eth0", "fd00::2", "2001:db8::5", "not an address", "203.0.113.7"])
    assert host_addresses(None) == ("192.0.2.2", "203.0.113.7", "2001:db8::5")
    assert host_addresses("198.51.100.4") == ("198.51.100.4",)
    assert host_addresses("[2001:db8::9]") == ("2001:db8::9",)
    assert host_addresses("10.213.7.2") == ()  # private: blocked by the ranges already
    assert host_addresses("localhost") == ()
    assert host_addresses("no-such-host.pybox-test.invalid") == ()


def test_local_addresses_are_this_machines():
    import ipaddress

    found = local_addresses()
    assert "127.0.0.1" in found
    assert all(ipaddress.ip_address(a) for a in found)


class EngineElsewhere(FakeBackend):
    name = "elsewhere"

    def engine_host(self):
        return "198.51.100.4"


def test_the_default_policy_names_the_engines_host(monkeypatch):
    import pybox.launch

    monkeypatch.setattr(pybox.launch, "local_addresses", lambda: ["127.0.0.1", "192.0.2.2", "2001:db8::5"])
    local = prepare_launch(ContainerSpec(image="i"), FakeBackend())
    assert local.env[NETWORK_ENV] == "default:192.0.2.2,2001:db8::5"
    remote = prepare_launch(ContainerSpec(image="i"), EngineElsewhere())
    assert remote.env[NETWORK_ENV] == "default:198.51.100.4"
    monkeypatch.setattr(pybox.launch, "local_addresses", lambda: ["127.0.0.1"])
    assert prepare_launch(ContainerSpec(image="i"), FakeBackend()).env[NETWORK_ENV] == "default"
    for network in ("open", "none", ("10.0.0.1",)):
        plan = prepare_launch(ContainerSpec(image="i", network=network), FakeBackend())
        assert plan.env.get(NETWORK_ENV, "").startswith("default") is False


def test_a_read_only_allowlist_has_its_domains_pinned_by_the_engine(monkeypatch):
    import socket

    import pybox.launch

    def getaddrinfo(name, port):
        if name == "example.test":
            return [(socket.AF_INET, 0, 0, "", ("203.0.113.5", 0)),
                    (socket.AF_INET6, 0, 0, "", ("2001:db8::5", 0, 0, 0)),
                    (socket.AF_INET, 0, 0, "", ("203.0.113.5", 0))]
        raise socket.gaierror("no such name")

    monkeypatch.setattr(pybox.launch.socket, "getaddrinfo", getaddrinfo)
    network = ("10.0.0.0/8", "2001:db8::1", "example.test", "unknown.test")
    plan = prepare_launch(ContainerSpec(image="i", network=network, read_only=True), FakeBackend())
    # unknown.test is left to the init, which fails the start naming it.
    assert plan.extra_hosts == [("example.test", "2001:db8::5"), ("example.test", "203.0.113.5")]
    assert prepare_launch(ContainerSpec(image="i", network=network), FakeBackend()).extra_hosts == []

    plugins = Plugins(load_entry_points=False)
    plugins.register(Harden(), name="harden")  # read-only set by a plugin: pinned too
    hardened = prepare_launch(ContainerSpec(image="i", network=network), FakeBackend(), plugins.adjust_launch_plan)
    assert hardened.extra_hosts == plan.extra_hosts


def test_backends_translate_extra_hosts():
    from pybox_docker.backend import DockerBackend
    from pybox_podman.backend import PodmanBackend

    plan = plan_launch(ContainerSpec(image="i", network=("example.test",), read_only=True))
    plan.extra_hosts = [("example.test", "203.0.113.5"), ("example.test", "2001:db8::5")]
    assert DockerBackend().host_config_options(plan)["extra_hosts"] == ["example.test:203.0.113.5",
                                                                          "example.test:2001:db8::5"]
    assert PodmanBackend().create_options(plan)["hostadd"] == ["example.test:203.0.113.5", "example.test:2001:db8::5"]
    plan.extra_hosts = []
    assert DockerBackend().host_config_options(plan)["extra_hosts"] is None
    assert "hostadd" not in PodmanBackend().create_options(plan)
