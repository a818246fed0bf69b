"""The kubernetes backend's decisions that need no cluster: its settings (PYBOX_K8S_*),
the pod, Secret and NetworkPolicy it makes from a launch plan, label handling, and the
state it reads back from a pod. (The cluster itself: tests/integration, tox env
integration-kubernetes.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pybox_kubernetes.config import Settings
from pybox_kubernetes.manifests import (
    LABELS_ANNOTATION,
    check_pids,
    label_selector,
    network_policy_manifest,
    pod_manifest,
    secret_manifest,
)

from pybox.errors import BackendUnavailable, UnsupportedOperation
from pybox.image_contract import INIT, NETWORK_ENV, TOKEN_ENV
from pybox.launch import plan_launch
from pybox.ownership import creation_labels
from pybox.spec import ContainerSpec, Limits


def plan(**spec):
    spec.setdefault("image", "pybox:latest")
    spec.setdefault("env", {TOKEN_ENV: "secret-token"})
    spec.setdefault("labels", creation_labels())
    return plan_launch(ContainerSpec(**spec))


# -- settings ----------------------------------------------------------------------------------


def test_defaults_need_no_variable():
    settings = Settings.from_environment({})
    assert (settings.namespace, settings.connect, settings.image_pull_policy, settings.network_policies) == \
        (None, "auto", None, True)


def test_every_variable_is_read():
    settings = Settings.from_environment({
        "PYBOX_K8S_NAMESPACE": "sandboxes", "PYBOX_K8S_SERVICE_ACCOUNT": "runner",
        "PYBOX_K8S_NODE_SELECTOR": "pool=sandboxes, kubernetes.io/os=linux",
        "PYBOX_K8S_TOLERATIONS": '[{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]',
        "PYBOX_K8S_IMAGE_PULL_SECRETS": "regcred,other", "PYBOX_K8S_IMAGE_PULL_POLICY": "Always",
        "PYBOX_K8S_CONNECT": "pod-ip", "PYBOX_K8S_START_TIMEOUT": "90", "PYBOX_K8S_NETWORK_POLICIES": "0",
        "PYBOX_K8S_POD_PIDS_LIMIT": "512"})
    assert settings.namespace == "sandboxes" and settings.service_account == "runner"
    assert settings.node_selector == {"pool": "sandboxes", "kubernetes.io/os": "linux"}
    assert settings.tolerations == [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]
    assert settings.image_pull_secrets == ["regcred", "other"] and settings.image_pull_policy == "Always"
    assert (settings.connect, settings.start_timeout, settings.network_policies, settings.pod_pids_limit) == \
        ("pod-ip", 90.0, False, 512)


@pytest.mark.parametrize("variable, value", [
    ("PYBOX_K8S_NAMESPACE", "Not_A_Namespace"),
    ("PYBOX_K8S_SERVICE_ACCOUNT", "UPPER"),
    ("PYBOX_K8S_NODE_SELECTOR", "pool"),
    ("PYBOX_K8S_NODE_SELECTOR", "pool=bad value"),
    ("PYBOX_K8S_TOLERATIONS", "{not json"),
    ("PYBOX_K8S_TOLERATIONS", '{"key": "a"}'),
    ("PYBOX_K8S_TOLERATIONS", '[{"key": "a", "operator": "Maybe"}]'),
    ("PYBOX_K8S_TOLERATIONS", '[{"key": "a", "effect": "Sometimes"}]'),
    ("PYBOX_K8S_TOLERATIONS", '[{"key": "a", "surprise": 1}]'),
    ("PYBOX_K8S_IMAGE_PULL_SECRETS", "ok,Not OK"),
    ("PYBOX_K8S_IMAGE_PULL_POLICY", "Sometimes"),
    ("PYBOX_K8S_CONNECT", "tunnel"),
    ("PYBOX_K8S_START_TIMEOUT", "soon"),
    ("PYBOX_K8S_START_TIMEOUT", "-3"),
    ("PYBOX_K8S_NETWORK_POLICIES", "yes"),
    ("PYBOX_K8S_POD_PIDS_LIMIT", "3"),
])
def test_a_wrong_value_is_refused_naming_the_variable(variable, value):
    with pytest.raises(BackendUnavailable) as info:
        Settings.from_environment({variable: value})
    assert variable in str(info.value) and repr(value) in str(info.value) and info.value.hint


# -- the pod ----------------------------------------------------------------------------------


def test_the_pod_runs_the_plan_and_nothing_more():
    the_plan = plan(limits=Limits(memory="512m", cpus=0.5, pids=None))
    pod = pod_manifest("pybox-abc", the_plan, Settings())
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == [INIT]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": list(the_plan.cap_add)}
    assert "NET_ADMIN" in security["capabilities"]["add"]  # the default network policy
    assert security["runAsUser"] == 0 and security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False and security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Guaranteed QoS: requests = limits
    assert container["resources"] == {"limits": {"memory": str(512 << 20), "cpu": "500m"},
                                      "requests": {"memory": str(512 << 20), "cpu": "500m"}}
    assert container["readinessProbe"]["tcpSocket"] == {"port": the_plan.gateway_port}
    # no API credentials, no service list, never restarted
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    # the token is in the Secret only
    assert "secret-token" not in json.dumps(pod)
    assert container["envFrom"] == [{"secretRef": {"name": "pybox-abc"}}]
    assert secret_manifest("pybox-abc", the_plan)["stringData"][TOKEN_ENV] == "secret-token"
    # a local image (no registry) is never pulled implicitly
    assert container["imagePullPolicy"] == "Never"


def test_a_read_only_plan_gets_memory_scratch_and_a_prepared_volume():
    the_plan = plan(read_only=True, limits=Limits(pids=None))
    pod = pod_manifest("pybox-ro", the_plan, Settings())
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(256 << 20)}
    assert mounts["/app"]["emptyDir"] == {}
    (prepare,) = pod["spec"]["initContainers"]
    script = prepare["command"][-1]
    assert "chmod 1777 /tmp" in script and "chmod 755 /app && chown 1000:1000 /app" in script
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def test_settings_reach_the_pod():
    settings = Settings.from_environment({
        "PYBOX_K8S_SERVICE_ACCOUNT": "runner", "PYBOX_K8S_NODE_SELECTOR": "pool=a",
        "PYBOX_K8S_TOLERATIONS": '[{"key": "k", "operator": "Exists"}]',
        "PYBOX_K8S_IMAGE_PULL_SECRETS": "regcred", "PYBOX_K8S_IMAGE_PULL_POLICY": "Always"})
    spec = pod_manifest("p", plan(limits=Limits(pids=None)), settings)["spec"]
    assert spec["serviceAccountName"] == "runner" and spec["nodeSelector"] == {"pool": "a"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    registry = pod_manifest("p", plan(image="registry.example:5000/pybox:1", limits=Limits(pids=None)),
                            Settings())["spec"]
    assert registry["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_a_process_limit_is_accepted_only_when_the_cluster_enforces_one_as_tight():
    with pytest.raises(UnsupportedOperation, match="PYBOX_K8S_POD_PIDS_LIMIT"):
        check_pids(plan(), Settings())  # the default Limits has pids=1024
    with pytest.raises(UnsupportedOperation, match="enforce 2048 per pod"):
        check_pids(plan(), Settings(pod_pids_limit=2048))
    check_pids(plan(), Settings(pod_pids_limit=1024))
    check_pids(plan(limits=Limits(pids=None)), Settings())


def test_every_owner_label_comes_back_exactly():
    labels = creation_labels()
    pod = pod_manifest("p", plan(labels=labels, limits=Limits(pids=None)), Settings())
    assert json.loads(pod["metadata"]["annotations"][LABELS_ANNOTATION]) == labels
    # pid:[4026531836] is no valid label value: selected by annotation only
    assert "pybox.pidns" not in pod["metadata"]["labels"] and pod["metadata"]["labels"]["pybox"] == "1"
    selector, rest = label_selector({"pybox": "1", "pybox.pidns": "pid:[1]"})
    assert selector == "pybox=1" and rest == {"pybox.pidns": "pid:[1]"}


# -- the NetworkPolicy ------------------------------------------------------------------------


def test_network_none_denies_all_egress_and_admits_the_gateway_only():
    policy = network_policy_manifest("p", plan(network="none"))
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": {"pybox.sandbox": "p"}}
    assert policy["spec"]["egress"] == []
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8888}]}]


def test_the_default_policy_excludes_private_and_local_networks():
    the_plan = plan()
    the_plan.env[NETWORK_ENV] = "default:203.0.113.5"
    policy = network_policy_manifest("p", the_plan)
    assert policy is not None
    v4 = policy["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert v4["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16", "203.0.113.5/32"} <= set(v4["except"])


def test_an_allowlist_allows_its_addresses_only_and_open_has_no_policy():
    policy = network_policy_manifest("p", plan(network=("10.213.9.1", "192.0.2.0/24")))
    assert policy is not None
    peers = policy["spec"]["egress"][0]["to"]
    assert peers == [{"ipBlock": {"cidr": "10.213.9.1/32"}}, {"ipBlock": {"cidr": "192.0.2.0/24"}}]
    assert network_policy_manifest("p", plan(network="open")) is None


# -- pods read back -----------------------------------------------------------------------------


def _pod(state=None, phase="Running", deleting=False, conditions=()):
    container = SimpleNamespace(name="sandbox", state=state)
    status = SimpleNamespace(phase=phase, container_statuses=[container], init_container_statuses=[],
                             conditions=list(conditions), reason=None, message=None)
    return SimpleNamespace(metadata=SimpleNamespace(deletion_timestamp="now" if deleting else None, name="p"),
                           status=status)


def test_pod_states_map_to_container_states():
    pytest.importorskip("kubernetes")
    from pybox_kubernetes.backend import pod_state

    assert pod_state(None).status == "removed"
    running = SimpleNamespace(running=object(), terminated=None, waiting=None)
    assert pod_state(_pod(running)).running
    oom = SimpleNamespace(running=None, waiting=None,
                          terminated=SimpleNamespace(reason="OOMKilled", exit_code=137, message=None))
    state = pod_state(_pod(oom, phase="Failed"))
    assert state.oom_killed and state.exit_code == 137 and "OOM" in state.describe()
    assert pod_state(_pod(running, deleting=True)).status == "removing"
    unschedulable = SimpleNamespace(type="PodScheduled", status="False", reason="Unschedulable",
                                    message="0/1 nodes are available: 1 Insufficient memory.")
    pending = pod_state(_pod(None, phase="Pending", conditions=[unschedulable]))
    assert not pending.running and "Insufficient memory" in pending.error


# -- the port-forward: a local websocket server speaks the API server's portforward ---------


def _port_frames(conn) -> None:
    for channel in (0, 1):  # each channel's first frame names the port (8888, little-endian)
        conn.send_binary(bytes((channel, 8888 & 0xFF, 8888 >> 8)))


def test_the_forwarder_pipes_each_connection_through_its_own_stream():
    import socket

    import websocket
    from pybox_kubernetes.forward import PROTOCOL, PortForwarder, PortStream
    from wsserver import WsServer

    def echo(conn, frame):  # the pod's port: answers each chunk upper-cased, on the data channel
        if frame[:1] == b"\0":
            conn.send_binary(b"\0" + frame[1:].upper())

    server = WsServer(on_binary=echo)
    streams = []

    def open_stream():
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/portforward",
                                         header=[f"sec-websocket-protocol: {PROTOCOL}"])
        _port_frames(server.next_conn())
        streams.append(PortStream(ws, "test"))
        return streams[-1]

    forwarder = PortForwarder(open_stream, "test")
    try:
        for _ in range(2):
            with socket.create_connection((forwarder.host, forwarder.port), timeout=5) as client:
                payload = b"x" * 300_000
                client.sendall(payload)
                received = b""
                while len(received) < len(payload) and (chunk := client.recv(65536)):
                    received += chunk
                assert received == payload.upper()
        assert len(streams) == 2  # one stream per connection
        with pytest.raises(OSError):
            PortForwarder(open_stream, "busy", forwarder.port)  # a taken port is refused
    finally:
        forwarder.close()
        server.close()
    with pytest.raises(OSError):
        socket.create_connection((forwarder.host, forwarder.port), timeout=2)


def test_the_port_forward_goes_to_the_pods_portforward_with_the_kubeconfigs_token():
    import socket
    import threading

    pytest.importorskip("kubernetes")
    from kubernetes import client
    from pybox_kubernetes.backend import KubernetesBackend
    from wsserver import WsServer

    server = WsServer(on_binary=lambda conn, frame: conn.send_binary(b"\0pong") if frame == b"\0ping" else None)
    backend = KubernetesBackend()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.port}")
    configuration.api_key = {"authorization": "the-token"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    backend._configuration, backend._namespace = configuration, "team a"
    try:
        stream = backend._open_port_forward("pybox-1", 8888)
        conn = server.next_conn()
        assert conn.path == "/api/v1/namespaces/team%20a/pods/pybox-1/portforward?ports=8888"
        assert conn.headers["authorization"] == "Bearer the-token"
        assert conn.headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
        _port_frames(conn)
        local, remote = socket.socketpair()
        closed = threading.Event()
        pump = threading.Thread(target=stream.pump, args=(remote, closed), daemon=True)
        pump.start()
        local.sendall(b"ping")
        local.settimeout(5)
        assert local.recv(100) == b"pong"
        local.close()
        pump.join(5)
        assert not pump.is_alive()  # the local end ended the stream
    finally:
        server.close()


def test_a_pod_flooding_a_reader_that_paused_fills_no_unbounded_buffer_in_the_client():
    # What the gateway sends through a port-forward is the sandbox's (kernel output). When
    # pybox's reader pauses (a stream consumer's backpressure: it may last as long as the
    # consumer takes one output per 10 s), the pod must feel it, as over TCP: nothing may
    # pile up in this process. (The kubernetes client's own port-forward proxy read every
    # frame the API server sent into an unbounded buffer.)
    import socket
    import threading
    import time

    import websocket
    from pybox_kubernetes.forward import PortForwarder, PortStream
    from wsserver import accept_header

    cap, chunk = 128 << 20, b"\0" + b"x" * (64 << 10)  # channel 0: the port's data
    frame = bytes((0x82, 127)) + len(chunk).to_bytes(8, "big") + chunk
    sent = [0]
    server = socket.create_server(("127.0.0.1", 0))

    def api_server():  # a websocket peer speaking the port-forward protocol, then flooding
        connection, _ = server.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        key = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:")][0]
        connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: " + accept_header(key.decode()).encode() + b"\r\n\r\n")
        for channel in (0, 1):
            connection.sendall(bytes((0x82, 3, channel, 8888 & 0xFF, 8888 >> 8)))
        connection.settimeout(2)  # blocked 2 s: the client pushed back
        try:
            while sent[0] < cap:
                connection.sendall(frame)
                sent[0] += len(chunk) - 1
        except OSError:
            pass

    threading.Thread(target=api_server, daemon=True).start()

    def open_stream():
        return PortStream(websocket.create_connection(f"ws://127.0.0.1:{server.getsockname()[1]}/"), "flood")

    forwarder = PortForwarder(open_stream, "flood")
    try:
        with socket.create_connection((forwarder.host, forwarder.port), timeout=5) as paused:
            paused.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            # Never reads: the pod's sends must stall (3 s without progress) within socket buffers.
            deadline = time.monotonic() + 14
            while not sent[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            before, changed = -1, time.monotonic()
            while sent[0] < cap and time.monotonic() < deadline and time.monotonic() - changed < 3:
                if sent[0] != before:
                    before, changed = sent[0], time.monotonic()
                time.sleep(0.2)
    finally:
        forwarder.close()
        server.close()
    assert 0 < sent[0] < 24 << 20, f"{sent[0] >> 20} MiB taken from the pod while nothing was read"
