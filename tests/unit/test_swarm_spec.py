"""The swarm backend's translation of a launch plan into a service, and its reading of
placement constraints (no engine needed: tests/integration/test_swarm.py runs them on a
real two-node swarm)."""

import pytest

pytest.importorskip("docker")

from pybox_docker.swarm import SETPRIV, SwarmBackend, _matches  # noqa: E402

from pybox.backend import ContainerSpec, Limits  # noqa: E402
from pybox.errors import InvalidArgument, UnsupportedOperation  # noqa: E402
from pybox.image_contract import INIT, INIT_CAPS  # noqa: E402
from pybox.launch import plan_launch  # noqa: E402


def plan(**spec):
    made = plan_launch(ContainerSpec(image="pybox:latest", labels={"pybox": "1"}, **spec))
    made.ports = [p.__class__(p.container_port, "0.0.0.0", p.host_port) for p in made.ports]  # adjust_plan's
    return made


def test_a_sandbox_is_one_replica_never_restarted_dnsrr_with_a_host_mode_port(monkeypatch):
    monkeypatch.delenv("PYBOX_SWARM_CONSTRAINTS", raising=False)
    options = SwarmBackend().service_spec(plan(), "pybox-x")
    assert options["mode"] == {"replicated": {"Replicas": 1}}  # docker-py's key; the engine reads it
    assert options["task_template"]["RestartPolicy"]["Condition"] == "none"
    assert options["endpoint_spec"] == {"Mode": "dnsrr", "Ports": [
        {"Protocol": "tcp", "TargetPort": 8888, "PublishMode": "host"}]}
    assert "Placement" not in options["task_template"]
    assert options["labels"] == {"pybox": "1"}
    container = options["task_template"]["ContainerSpec"]
    assert container["Labels"] == {"pybox": "1"}  # on the container too (pybox cleanup reads both)
    assert container["User"] == "0"
    assert container["Hostname"] == "{{.Service.ID}}"  # the sandbox's id, as Docker's hostname is its id
    assert container["Command"] == [SETPRIV, "--no-new-privs", "--", INIT]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == [*INIT_CAPS, "NET_ADMIN"]  # the default network policy


def test_a_requested_port_is_published_on_it():
    options = SwarmBackend().service_spec(plan(host_port=18999), "pybox-x")
    assert options["endpoint_spec"]["Ports"][0]["PublishedPort"] == 18999


def test_limits_are_limits_and_reservations_unless_told_otherwise(monkeypatch):
    made = plan(limits=Limits(memory="512m", cpus=1.5, pids=200))
    resources = SwarmBackend().service_spec(made, "x")["task_template"]["Resources"]
    assert resources == {"Limits": {"MemoryBytes": 512 << 20, "NanoCPUs": 1_500_000_000, "Pids": 200},
                         "Reservations": {"MemoryBytes": 512 << 20, "NanoCPUs": 1_500_000_000}}
    monkeypatch.setenv("PYBOX_SWARM_RESERVATIONS", "none")
    resources = SwarmBackend().service_spec(made, "x")["task_template"]["Resources"]
    assert "Reservations" not in resources and resources["Limits"]["Pids"] == 200


def test_read_only_root_scratch_volume_log_cap_and_hosts():
    made = plan(read_only=True, network=("example.test",))
    made.extra_hosts = [("example.test", "203.0.113.5"), ("example.test", "2001:db8::5")]
    options = SwarmBackend().service_spec(made, "x")
    container = options["task_template"]["ContainerSpec"]
    assert container["ReadOnly"] is True
    tmpfs = {m["Target"]: m["TmpfsOptions"]["SizeBytes"] for m in container["Mounts"] if m["Type"] == "tmpfs"}
    assert tmpfs == {s.path: s.size for s in made.scratch}
    assert [m["Target"] for m in container["Mounts"] if m["Type"] == "volume"] == ["/app"]
    assert all(m["Source"] is None for m in container["Mounts"])  # anonymous: removed with the container
    assert container["Hosts"] == ["203.0.113.5 example.test", "2001:db8::5 example.test"]
    assert options["task_template"]["LogDriver"] == {"Name": "json-file", "Options": {
        "max-size": str(made.log_max_bytes), "max-file": "2"}}


def test_no_new_privileges_off_runs_the_command_as_it_is():
    made = plan()
    made.no_new_privileges = False
    assert SwarmBackend().service_spec(made, "x")["task_template"]["ContainerSpec"]["Command"] == [INIT]


def test_constraints_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pool==sandbox, node.role!=manager")
    placement = SwarmBackend().service_spec(plan(), "x")["task_template"]["Placement"]
    assert placement == {"Constraints": ["node.labels.pool==sandbox", "node.role!=manager"]}
    monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pool")
    with pytest.raises(InvalidArgument, match="PYBOX_SWARM_CONSTRAINTS"):
        SwarmBackend().service_spec(plan(), "x")


@pytest.mark.parametrize("changes, words", [
    ({"memory_swap_bytes": 5 << 30}, "swap"),
    ({"ports": []}, "exactly one port"),
    ({"binds": ["x"]}, "bind-mount"),
])
def test_what_a_service_cannot_do_is_refused(changes, words):
    made = plan()
    for name, value in changes.items():
        setattr(made, name, value)
    with pytest.raises(UnsupportedOperation, match=words):
        SwarmBackend()._refuse_what_a_service_cannot_do(made)


def test_publishing_on_one_address_is_refused():
    made = plan_launch(ContainerSpec(image="pybox:latest"))  # 127.0.0.1, as core plans it
    with pytest.raises(UnsupportedOperation, match="all of its node's addresses"):
        SwarmBackend()._refuse_what_a_service_cannot_do(made)


NODE = {
    "ID": "abc123",
    "Description": {"Hostname": "worker-1", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                    "Engine": {"Labels": {"disk": "ssd"}}},
    "Spec": {"Role": "worker", "Labels": {"pool": "sandbox"}},
}


@pytest.mark.parametrize("constraint, expected", [
    ("node.labels.pool==sandbox", True),
    ("node.labels.pool==Sandbox", False),  # label values are case-sensitive
    ("node.labels.pool!=sandbox", False),
    ("node.labels.missing==x", False),
    ("node.labels.missing!=x", True),
    ("node.role==worker", True),
    ("node.role!=manager", True),
    ("node.hostname==WORKER-1", True),
    ("node.id==abc123", True),
    ("node.platform.os==linux", True),
    ("engine.labels.disk==ssd", True),
    ("node.something.else==x", True),  # unknown to pybox: the swarm judges it
])
def test_constraints_are_read_as_swarm_reads_them(constraint, expected):
    assert _matches(NODE, constraint) is expected
