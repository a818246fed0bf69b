"""kubernetes checks, against the real cluster .ci/start-kubernetes starts (nodes in
network namespaces, their own dockerd each; API server at 10.213.20.2): what the pod is
made of, how the gateway is reached (through the API server, or at the pod's IP), what is
refused, and that every object goes with the sandbox. Run with PYBOX_TEST_BACKEND=kubernetes
and KUBECONFIG=/tmp/pybox-ci/kubeconfig (tox -e integration-kubernetes)."""

from __future__ import annotations

import os
import statistics
import threading
import time

import pytest

import pybox
from pybox.image_contract import TOKEN_ENV
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "kubernetes", reason="kubernetes backend only")

LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture
def cluster():
    engine = get_plugins().backend("kubernetes")()
    yield engine
    engine.close()


def read_pod(engine, name):
    return engine.core.read_namespaced_pod(name, engine.namespace)


# -- the pod ------------------------------------------------------------------------------------


def test_the_pod_is_guaranteed_unprivileged_and_holds_no_secret_in_its_spec(cluster):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="512m", cpus=0.5)) as sb:
        pod = read_pod(cluster, sb.id)
        assert pod.status.qos_class == "Guaranteed"
        (container,) = pod.spec.containers
        security = container.security_context
        assert security.capabilities.drop == ["ALL"] and "NET_ADMIN" in security.capabilities.add
        assert security.allow_privilege_escalation is False and not security.privileged
        assert pod.spec.automount_service_account_token is False
        spec_text = str(pod.to_dict())
        assert sb.token not in spec_text and "PRIVATE KEY" not in spec_text
        # and none of the API's credentials inside: no service account token mounted
        assert sb.run("import os; print(os.path.exists('/var/run/secrets/kubernetes.io'))").text == "False"
        # the gateway's token is not in the environment of the sandbox's code either
        assert sb.run(f"import os; print(os.environ.get({TOKEN_ENV!r}))").text == "None"
        assert sb.run("print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())").text == \
            str(512 << 20)


def test_the_gateway_is_reached_through_the_api_server_with_tls_and_the_token(sandbox, cluster):
    # No route to the pod network is needed: a local listener, each connection a port-forward.
    assert sandbox.host in LOOPBACK
    assert sandbox.gateway_certificate is not None  # TLS, pinned per sandbox
    assert sandbox.run("print('through the API server')").text == "through the API server"
    with pytest.raises(pybox.PyboxError):  # the token stays required
        with pybox.Kernel.connect(sandbox.host, sandbox.port, "wrong-token", timeout=10,
                                  certificate=sandbox.gateway_certificate) as kernel:
            kernel.run("1")


def test_websocket_round_trips_through_the_api_server_are_measured(sandbox):
    sandbox.run("1")
    times = []
    for _ in range(30):
        started = time.perf_counter()
        sandbox.run("print(1)")
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    p99 = sorted(times)[int(len(times) * 0.99) - 1]
    print(f"\nround trip through the API server (port-forward): median {median * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")
    assert median < 1.0


def test_pod_ip_mode_reaches_the_gateway_directly(monkeypatch):
    # This host routes to the CI cluster's pod networks, as a client inside the cluster would.
    monkeypatch.setenv("PYBOX_K8S_CONNECT", "pod-ip")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.host.startswith("10.213.") and sb.port == 8888
        assert sb.run("print('direct')").text == "direct"


def test_binds_are_refused_naming_the_alternative(tmp_path):
    with pytest.raises(pybox.UnsupportedOperation) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND, binds={str(tmp_path): "data"}).start()
    assert "upload" in str(info.value) and "volume" in str(info.value)


def test_a_process_limit_tighter_than_the_clusters_is_refused():
    with pytest.raises(pybox.UnsupportedOperation, match="PYBOX_K8S_POD_PIDS_LIMIT"):
        pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(pids=64)).start()


def test_the_clusters_process_limit_contains_a_fork_bomb():
    limit = int(os.environ.get("PYBOX_K8S_POD_PIDS_LIMIT", "0") or 0)
    if not limit:
        pytest.skip("PYBOX_K8S_POD_PIDS_LIMIT is not set: the cluster's per-pod limit is unknown")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        result = sb.run(
            "import subprocess\nprocs = []\n"
            f"for _ in range({limit + 200}):\n    procs.append(subprocess.Popen(['sleep', '60']))",
            check=False, timeout=120)
        assert result.error is not None, "the pod started more processes than the cluster's limit"
        assert sb.run(f"for p in procs: p.kill()\nprint(len(procs) < {limit})", timeout=60).text == "True"


# -- objects go with the sandbox ----------------------------------------------------------------


@pytest.fixture
def admin_api():
    """A client with the cluster admin's kubeconfig (.ci/start-kubernetes writes it), to look
    at what pybox's own service account may not read (secrets, NetworkPolicies)."""
    from kubernetes import client, config

    path = os.path.join(os.environ.get("PYBOX_CI_DIR", "/tmp/pybox-ci"), "kubeconfig-admin")
    if not os.path.exists(path):
        pytest.skip(f"no admin kubeconfig at {path}")
    configuration = client.Configuration()
    config.load_kube_config(config_file=path, client_configuration=configuration)
    api = client.ApiClient(configuration)
    yield api
    api.close()


def test_pod_secret_and_network_policy_are_removed_with_the_sandbox(cluster, admin_api):
    from kubernetes import client

    sb = pybox.Sandbox(image=IMAGE, backend=BACKEND, network="none").start()
    name = sb.id
    networking = client.NetworkingV1Api(admin_api)
    core = client.CoreV1Api(admin_api)
    assert core.read_namespaced_secret(name, cluster.namespace).metadata.owner_references[0].name == name
    policy = networking.read_namespaced_network_policy(name, cluster.namespace)
    assert policy.spec.egress in (None, [])
    assert policy.spec.pod_selector.match_labels == {"pybox.sandbox": name}
    sb.close()
    assert cluster.inspect(name).status == "removed"
    for read in (core.read_namespaced_secret, networking.read_namespaced_network_policy):
        with pytest.raises(client.ApiException) as info:
            read(name, cluster.namespace)
        assert info.value.status == 404


def test_an_image_no_node_has_is_not_found_without_a_pull(cluster):
    with pytest.raises(pybox.ImageNotFound) as info:
        pybox.Sandbox(image="pybox-k8s-no-such-image:0", backend=BACKEND).start()
    assert "pybox-k8s-no-such-image:0" in str(info.value)
    assert cluster.image_exists(IMAGE) and not cluster.image_exists("pybox-k8s-no-such-image:0")


def test_sandboxes_spread_over_the_nodes(cluster):
    nodes = cluster.core.list_node().items
    if len(nodes) < 2:
        pytest.skip("one node in this cluster (PYBOX_K8S_NODES=2 .ci/start-kubernetes for two)")
    found: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="256m")) as sb:
                assert sb.run(f"print({n})").text == str(n)
                found[sb.id] = read_pod(cluster, sb.id).spec.node_name
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(set(found.values())) >= 2, found
