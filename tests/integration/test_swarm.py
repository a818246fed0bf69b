"""swarm checks: sandboxes are services scheduled over the nodes of a real swarm. Run with
PYBOX_TEST_BACKEND=swarm and the environment that `.ci/start-swarm` prints
(DOCKER_HOST=tcp://10.213.11.2:2376, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH): two nodes, each
a dockerd in a network namespace of its own (10.213.11.2 the manager, 10.213.11.3 a
worker, labelled pybox.node=1 / pybox.node=2). Every address used is in those namespaces.
"""

import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import docker
import docker.errors
import pytest

import pybox
from pybox.backend import ContainerSpec
from pybox.image_contract import TOKEN_ENV
from pybox.launch import prepare_launch
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "swarm", reason="swarm backend only")

NODE_NETNS = {1: "pybox-swarm1", 2: "pybox-swarm2"}  # .ci/start-swarm


@pytest.fixture
def swarm():
    engine = get_plugins().backend("swarm")()
    yield engine
    engine.close()


def node_numbers(engine):
    """Node id -> the number .ci/start-swarm labelled it with."""
    return {n["ID"]: int((n["Spec"].get("Labels") or {}).get("pybox.node", 0)) for n in engine.api.nodes()}


def node_of(engine, service_id):
    return node_numbers(engine)[engine._task(service_id).node_id]


def backend_plan(engine, **changes):
    plan = prepare_launch(ContainerSpec(image=IMAGE, env={TOKEN_ENV: "swarm-test"},
                                        labels={"pybox": "1", "pybox.swarm-test": "1"}, network="open"),
                          engine, get_plugins().adjust_launch_plan)
    for name, value in changes.items():
        setattr(plan, name, value)
    return plan


def wait_ended(engine, service_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = engine.inspect(service_id)
        if not state.running and state.status not in ("", "pending"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"service {service_id} still running after {timeout} s")


# -- scheduling -----------------------------------------------------------------------


def test_sixteen_sandboxes_opened_at_once_spread_over_both_nodes(swarm):
    count = int(os.environ.get("PYBOX_TEST_SWARM_SANDBOXES", "16"))
    answers, nodes, ids, errors = {}, {}, {}, []

    def work(n):
        try:
            with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="512m"),
                               startup_timeout=180) as sb:
                ids[n] = sb.id
                answers[n] = sb.run(f"print({n} * 3)", timeout=120).text
                nodes[n] = node_of(swarm, sb.id)
                # the client reaches it at its node's address, not the manager's
                assert sb.host == {1: "10.213.11.2", 2: "10.213.11.3"}[nodes[n]]
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert answers == {n: str(n * 3) for n in range(count)}
    spread = sorted(nodes.values())
    assert set(spread) == {1, 2}, f"all {count} sandboxes on one node: {spread}"
    assert [swarm.inspect(i).status for i in ids.values()] == ["removed"] * count


def test_placement_constraints_choose_the_node(swarm, monkeypatch):
    for number in (2, 1):
        monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", f"node.labels.pybox.node=={number}")
        with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
            assert node_of(swarm, sb.id) == number
            assert sb.run("print('placed')").text == "placed"


def test_constraints_no_node_satisfies_are_refused_before_anything_starts(monkeypatch):
    monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pybox.node==3")
    with pytest.raises(pybox.BackendError, match="no Ready and Active node matching PYBOX_SWARM_CONSTRAINTS"):
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pybox.node")
    with pytest.raises(pybox.InvalidArgument, match="not a placement constraint"):
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()


def test_a_reservation_no_node_can_hold_is_reported_with_the_schedulers_reason(swarm, monkeypatch):
    monkeypatch.setenv("PYBOX_SWARM_START_TIMEOUT", "4")
    before = set(swarm.list_containers({"pybox": "1"}))
    with pytest.raises(pybox.BackendError, match="insufficient resources") as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="4096g")).start()
    assert "no suitable node" in str(info.value)
    assert set(swarm.list_containers({"pybox": "1"})) <= before, "the pending service must be removed"
    # Without reservations the scheduler places it (the limit alone binds the container).
    monkeypatch.setenv("PYBOX_SWARM_RESERVATIONS", "none")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="4096g")) as sb:
        assert sb.run("print('scheduled')").text == "scheduled"


# -- a dead container is reported, never replaced ------------------------------------------


def test_a_killed_container_is_reported_dead_and_not_restarted(swarm):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        engine, container = swarm._located(sb.id, "test")
        engine.api.kill(container, "SIGKILL")
        state = wait_ended(swarm, sb.id)
        assert state.exit_code == 137 and not state.oom_killed, state
        time.sleep(3)  # a restart policy would have made a new task by now
        tasks = swarm.api.tasks(filters={"service": sb.id})
        assert len(tasks) == 1, tasks
        with pytest.raises((pybox.KernelError, pybox.BackendError)):
            sb.run("print('gone')", timeout=30)


def test_a_container_killed_for_memory_is_reported_oomkilled(swarm):
    hog = "import time\nb = bytearray(1 << 30)\nb[::4096] = b'x' * len(b[::4096])\ntime.sleep(60)"
    plan = backend_plan(swarm, command=["python3", "-c", hog], memory_bytes=64 << 20,
                        memory_swap_bytes=128 << 20, user="1000", cap_add=[])
    service = swarm.start(plan)
    try:
        state = wait_ended(swarm, service)
        assert state.oom_killed, state
        assert "OOMKilled" in state.describe()
    finally:
        swarm.remove(service)


def test_no_new_privileges_is_set_before_the_command_runs(swarm):
    code = "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0], flush=True)\n" \
           "import time; time.sleep(60)"
    seen = {}
    for flag in (True, False):
        plan = backend_plan(swarm, command=["python3", "-c", code], no_new_privileges=flag)
        service = swarm.start(plan)
        try:
            for _ in range(100):
                seen[flag] = swarm.logs(service).strip()
                if seen[flag]:
                    break
                time.sleep(0.1)
        finally:
            swarm.remove(service)
    assert seen == {True: "1", False: "0"}


def test_extra_hosts_reach_the_containers_etc_hosts(swarm):
    plan = backend_plan(swarm, command=["sh", "-c", "cat /etc/hosts; sleep 60"],
                        extra_hosts=[("example.test", "203.0.113.5"), ("example.test", "2001:db8::5")])
    service = swarm.start(plan)
    try:
        for _ in range(100):
            hosts = swarm.logs(service)
            if "example.test" in hosts:
                break
            time.sleep(0.1)
    finally:
        swarm.remove(service)
    lines = [line.split() for line in hosts.splitlines()]
    assert ["203.0.113.5", "example.test"] in lines and ["2001:db8::5", "example.test"] in lines, hosts


def test_remove_takes_the_container_and_its_volume_with_it(swarm):
    plan = backend_plan(swarm, read_only=True)
    plan.volumes = ["/app"]
    service = swarm.start(plan)
    engine, container = swarm._located(service, "test")
    volumes = [m["Name"] for m in engine.api.inspect_container(container)["Mounts"] if m["Type"] == "volume"]
    assert len(volumes) == 1
    swarm.remove(service)
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(container)
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_volume(volumes[0])
    assert swarm.inspect(service).status == "removed"
    swarm.remove(service)  # idempotent


# -- what a service cannot do is refused ----------------------------------------------------


def test_binds_are_refused_naming_upload(tmp_path):
    with pytest.raises(pybox.UnsupportedOperation, match="upload"):
        pybox.Sandbox(image=IMAGE, backend=BACKEND, binds={str(tmp_path): "data"}).start()


def test_a_plan_a_service_cannot_honour_is_refused(swarm):
    for changes, words in (({"memory_swap_bytes": 3 << 30}, "swap"),
                           ({"ports": []}, "exactly one port")):
        with pytest.raises(pybox.UnsupportedOperation, match=words):
            swarm.start(backend_plan(swarm, **changes))
    assert swarm.list_containers({"pybox.swarm-test": "1"}) == []


def test_an_image_one_node_lacks_is_not_found_naming_the_node(swarm):
    only_on_1 = "pybox-swarm-test-only-on-node1:latest"
    node1 = next(e for e in (swarm._node_engine(n) for n in node_numbers(swarm)) if e.docker_host.endswith(
        "10.213.11.2:2376"))
    node1.api.tag(IMAGE, "pybox-swarm-test-only-on-node1", "latest")
    try:
        assert not swarm.image_exists(only_on_1)
        assert swarm.image_labels(only_on_1) is None
        with pytest.raises(pybox.ImageNotFound, match="10.213.11.3") as info:
            pybox.Sandbox(image=only_on_1, backend=BACKEND).start()
        assert info.value.__cause__ is not None
    finally:
        node1.api.remove_image(only_on_1)
    assert swarm.image_exists(IMAGE)


def test_build_is_refused_at_once_saying_what_to_do():
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pybox", "build", "--backend", "swarm", "--tag",
                          "pybox-swarm-test-never-built:latest"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "the swarm backend cannot build images" in out.stderr and "load" in out.stderr, out.stderr
    assert "debootstrap" not in out.stdout + out.stderr
    assert time.monotonic() - started < 60


# -- the engine and its nodes -----------------------------------------------------------------------


def test_plain_tcp_is_refused_without_the_opt_in(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    with pytest.raises(pybox.BackendUnavailable, match="PYBOX_ALLOW_INSECURE_ENGINE"):
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()


@pytest.mark.parametrize("variable, value, error, words", [
    ("DOCKER_HOST", "ssh://someone@10.213.11.2", pybox.BackendUnavailable, "tcp://MANAGER:2376"),
    ("PYBOX_SWARM_NODE_HOSTS", "pybox-swarm2", pybox.InvalidArgument, "is not NODE=HOST"),
    ("PYBOX_SWARM_NODE_PORT", "http", pybox.InvalidArgument, "is not a port number"),
    ("PYBOX_SWARM_START_TIMEOUT", "soon", pybox.InvalidArgument, "is not a number of seconds"),
])
def test_settings_that_cannot_work_are_named(monkeypatch, variable, value, error, words, swarm):
    before = set(swarm.list_containers({"pybox": "1"}))
    monkeypatch.setenv(variable, value)
    with pytest.raises(error, match=words) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert variable in str(info.value)
    assert set(swarm.list_containers({"pybox": "1"})) <= before


def test_an_engine_that_is_no_manager_is_refused(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.213.11.3:2376")  # node 2, a worker
    engine = get_plugins().backend("swarm")()
    try:
        with pytest.raises(pybox.BackendUnavailable, match="not a swarm manager"):
            engine.ping()
        with pytest.raises(pybox.BackendUnavailable, match="not a swarm manager"):
            pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    finally:
        engine.close()


def test_an_unreachable_node_engine_is_named_with_a_hint(monkeypatch):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        monkeypatch.setenv("PYBOX_SWARM_NODE_PORT", "1")
        engine = get_plugins().backend("swarm")()
        try:
            with pytest.raises(pybox.BackendUnavailable) as info:
                list(engine.get_archive(sb.id, "/app"))
        finally:
            engine.close()
    assert "tcp://10.213.11." in str(info.value) and ":1:" in str(info.value)
    assert "PYBOX_SWARM_NODE_HOSTS" in info.value.hint
    assert info.value.__cause__ is not None


# -- the default network policy keeps code off every node ---------------------------------------------

#: Outside every range the default policy blocks anyway: only knowing it is a node's blocks it.
NODE2_EXTRA = "198.18.11.3"
PORT = 18951


@pytest.fixture
def node2_listener():
    """A listener on NODE2_EXTRA, an address of node 2 (added to its interface in its
    namespace), routed from node 1's namespace; all removed afterwards."""
    netns1, netns2 = NODE_NETNS[1], NODE_NETNS[2]

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)

    ip("-n", netns2, "addr", "replace", f"{NODE2_EXTRA}/32", "dev", "pbsw2-n")
    ip("-n", netns1, "route", "replace", f"{NODE2_EXTRA}/32", "via", "10.213.11.3")
    code = f"import socket\ns = socket.create_server(({NODE2_EXTRA!r}, {PORT}))\nwhile True:\n    s.accept()[0].close()"
    server = subprocess.Popen(["ip", "netns", "exec", netns2, sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        yield
    finally:
        server.kill()
        server.wait()
        ip("-n", netns1, "route", "del", f"{NODE2_EXTRA}/32", check=False)
        ip("-n", netns2, "addr", "del", f"{NODE2_EXTRA}/32", "dev", "pbsw2-n", check=False)


REACH = f"""
import socket
try:
    socket.create_connection(({NODE2_EXTRA!r}, {PORT}), timeout=3).close()
    print('reached')
except OSError:
    print('blocked')
"""


def test_default_policy_blocks_the_addresses_of_every_node(swarm, node2_listener, monkeypatch):
    node2 = next(n for n, number in node_numbers(swarm).items() if number == 2)
    monkeypatch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pybox.node==1")  # code on node 1
    seen = {}
    for known in (False, True):
        if known:  # the swarm says node 2 is (also) at NODE2_EXTRA
            monkeypatch.setenv("PYBOX_SWARM_NODE_HOSTS", f"{node2}={NODE2_EXTRA}")
        with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
            seen[known] = sb.run(REACH, timeout=60).text
            policy = sb.run("import os; print(os.environ.get('PYBOX_NETWORK', 'hidden'))").text
    assert seen == {False: "reached", True: "blocked"}, seen
    assert policy == "hidden" or NODE2_EXTRA in policy


def test_endpoint_is_the_nodes_address_and_the_manager_is_not_localhost(sandbox, swarm):
    assert sandbox.host in ("10.213.11.2", "10.213.11.3")
    assert urlparse(os.environ["DOCKER_HOST"]).hostname == "10.213.11.2"
    assert swarm.inspect(sandbox.id).running


def test_gateway_traffic_is_tls_with_the_sandboxs_pinned_certificate(sandbox):
    import socket
    import ssl

    from pybox.kernel.gateway import Gateway
    from pybox.tls import GatewayCertificate

    pem = sandbox.gateway_certificate
    assert pem is not None
    with socket.create_connection((sandbox.host, sandbox.port), timeout=10) as raw:
        with GatewayCertificate(pem, "").client_context().wrap_socket(raw) as tls:
            assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(pem)
    plain = Gateway(sandbox.host, sandbox.port, sandbox.token)  # plain HTTP gets no answer
    try:
        assert not plain.ready(timeout=3)
    finally:
        plain.close()
