"""Network policy: default, open, none, allowlists; enforced although the kernel runs
unprivileged. Two TCP listeners on the project's own test addresses (10.213.9.1 and
10.213.9.2, added to this host's loopback interface) play the outside world; for the
default policy, servers on a local interface the test adds (cloud metadata 169.254.169.254
and the private 10.213.9.9), on the engine's gateway and this host's own address, and in a network
namespace of the test's own (198.18.0.10, a reserved range standing in for the public
internet, routed through this host) play the rest. No test sends traffic elsewhere."""

import os
import shutil
import subprocess
import sys
import time

import pytest

import pybox

from .conftest import BACKEND, IMAGE
from .conftest import engine_command as engine

ALLOWED, BLOCKED = "10.213.9.1", "10.213.9.2"
PORT = 18931

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="the test servers' addresses need root and iproute2")


@pytest.fixture(scope="module")
def servers():
    for address in (ALLOWED, BLOCKED):
        subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "lo"], check=True)
    processes = [listen(address, PORT) for address in (ALLOWED, BLOCKED)]
    for address in (ALLOWED, BLOCKED):
        wait_listening(address, PORT)
    yield
    for process in processes:
        process.kill()
        process.wait()
    for address in (ALLOWED, BLOCKED):
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


REACH = f"""
import socket
def reach(host):
    try:
        socket.create_connection((host, {PORT}), timeout=3).close()
        return "reached"
    except OSError as exc:
        return "blocked"
def resolve(name):
    try:
        socket.getaddrinfo(name, 443)
        return "resolved"
    except OSError:
        return "unresolved"
print(reach({ALLOWED!r}), reach({BLOCKED!r}), resolve("pypi.org"))
"""


def probe(**kwargs):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, **kwargs) as sb:
        return sb, sb.run(REACH, timeout=60).text


def test_open_network_reaches_both(servers):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network="open") as sb:
        # No name resolved here: an open sandbox would ask the real resolver.
        seen = sb.run(REACH.rsplit("\n", 2)[0] + f"\nprint(reach({ALLOWED!r}), reach({BLOCKED!r}))", timeout=60).text
    assert seen == "reached reached"


def test_no_network_reaches_nothing_and_resolves_nothing(servers):
    _, seen = probe(network="none")
    assert seen == "blocked blocked unresolved"


def test_allowlist_lets_only_the_listed_address_through(servers):
    _, seen = probe(network=[ALLOWED])
    assert seen == "reached blocked unresolved"


def test_allowlist_by_cidr_and_domain(servers):
    _, seen = probe(network=["10.213.9.0/31", "localhost"])
    assert seen == "reached blocked unresolved"


def test_code_cannot_lift_the_policy(servers):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network=[ALLOWED]) as sb:
        assert sb.run("import os\nprint(os.getuid())").text == "1000"
        capabilities = sb.run("print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0])").text
        assert capabilities.split()[-1] == "0000000000000000"
        flush = sb.run("import subprocess\nr = subprocess.run(['iptables', '-P', 'OUTPUT', 'ACCEPT'], "
                       "capture_output=True)\nprint(r.returncode)").text
        assert flush != "0"
        assert sb.run(REACH, timeout=60).text == "reached blocked unresolved"


def test_ipv6_is_blocked_unless_listed(servers):
    from pybox.plugins import get_plugins

    engine = get_plugins().backend(BACKEND)()
    try:
        for network, expected in ((["10.213.9.1"], "IPv6 allowed: none"),
                                  (["10.213.9.1", "2001:db8::7"], "IPv6 allowed: 2001:db8::7")):
            with pybox.Sandbox(image=IMAGE, backend=BACKEND, network=network) as sb:
                assert sb.run("print('up')").text == "up"
                assert expected in engine.logs(sb.id)  # ip6tables applied (the start fails if not)
    finally:
        engine.close()


@pytest.mark.skipif(not os.environ.get("PYBOX_TEST_EXTERNAL_DNS"),
                    reason="the init would ask the machine's DNS resolver, which is not on this machine "
                           "(tests send traffic only to this machine); set PYBOX_TEST_EXTERNAL_DNS=1 to run it")
def test_an_unresolvable_allowed_domain_fails_the_start_clearly():
    with pytest.raises(pybox.StartupTimeout) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND, network=["no-such-host.pybox-test.invalid"]).start()
    assert "cannot resolve the allowed domain no-such-host.pybox-test.invalid" in str(info.value)



# -- the default policy: the public internet only ----------------------------------------------

METADATA, PRIVATE, PUBLIC = "169.254.169.254", "10.213.9.9", "198.18.0.10"
DUMMY = "pyboxdummy0"
NETNS, VETH_HOST, VETH_NS = "pyboxpub", "pyboxpub-h", "pyboxpub-n"
VETH_HOST_ADDR, VETH_NS_ADDR = "10.213.9.17", "10.213.9.18"
TCP_PORT = 18932
REMOTE_NETNS = "pybox-remote"  # .ci/start-remote-dockerd: the remote engine's host
SWARM_NODE1_NETNS = "pybox-swarm1"  # .ci/start-swarm: node 1 (this module's sandboxes run there)
#: Where the engine's host is, for listeners on it and connections from it.
#: .ci/start-kubernetes: the (first) node, where the integration run's pods are.
K8S_NODE_NETNS = "pybox-k8s-1"
ENGINE_NETNS = {"docker-remote": REMOTE_NETNS, "swarm": SWARM_NODE1_NETNS, "kubernetes": K8S_NODE_NETNS}.get(BACKEND)


@pytest.fixture(scope="module", autouse=True)
def on_one_swarm_node():
    """On a swarm, this module's sandboxes all run on node 1, whose namespace the
    listeners and connections of 'the engine's host' use."""
    if BACKEND != "swarm":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYBOX_SWARM_CONSTRAINTS", "node.labels.pybox.node==1")
        yield


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def in_netns(netns, command):
    return ["ip", "netns", "exec", netns, *command] if netns else command


def listen(address, port, netns=None):
    """A TCP listener accepting and closing connections (not http.server: it looks its
    address up in DNS)."""
    code = (f"import socket\nserver = socket.create_server(({address!r}, {port}))\n"
            f"while True:\n    server.accept()[0].close()")
    return subprocess.Popen(in_netns(netns, [sys.executable, "-c", code]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port():
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("0.0.0.0", 0))
        return probe_socket.getsockname()[1]


def wait_listening(address, port, netns=None):
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    for _ in range(50):
        if subprocess.run(in_netns(netns, [sys.executable, "-c", code]), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {address}:{port}")


def host_reach(address, port, netns=None):
    """Whether this host (or the remote engine's, in its namespace) connects to address:port."""
    code = (f"import socket\ntry:\n    socket.create_connection(({address!r}, {port}), timeout=3).close()\n"
            f"    print('reached')\nexcept OSError:\n    print('blocked')")
    return subprocess.run(in_netns(netns, [sys.executable, "-c", code]), capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def outside():
    """Listeners on TCP_PORT: METADATA and PRIVATE on an interface of this host, PUBLIC in
    a namespace routed through this host; all removed at the end."""
    processes = []
    ip("link", "del", DUMMY, check=False)
    ip("netns", "del", NETNS, check=False)
    ip("link", "del", VETH_HOST, check=False)
    try:
        ip("netns", "add", NETNS)
        ip("link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        ip("link", "set", VETH_NS, "netns", NETNS)
        ip("addr", "add", f"{VETH_HOST_ADDR}/30", "dev", VETH_HOST)
        ip("link", "set", VETH_HOST, "up")
        # METADATA and PRIVATE: this host's own, on a dummy interface (or, where the
        # kernel has no dummy driver, on the host's end of the veth pair).
        local = DUMMY if ip("link", "add", DUMMY, "type", "dummy", check=False).returncode == 0 else VETH_HOST
        for address in (METADATA, PRIVATE):
            ip("addr", "add", f"{address}/32", "dev", local)
        ip("link", "set", local, "up")
        ip("-n", NETNS, "addr", "add", f"{VETH_NS_ADDR}/30", "dev", VETH_NS)
        ip("-n", NETNS, "addr", "add", f"{PUBLIC}/32", "dev", VETH_NS)
        ip("-n", NETNS, "link", "set", VETH_NS, "up")
        ip("-n", NETNS, "link", "set", "lo", "up")
        # No default route there: it answers the host's end only (containers' traffic is
        # masqueraded to VETH_HOST_ADDR), and nothing it sends leaves this machine.
        ip("route", "add", f"{PUBLIC}/32", "via", VETH_NS_ADDR)
        processes = [listen(METADATA, TCP_PORT), listen(PRIVATE, TCP_PORT), listen(PUBLIC, TCP_PORT, NETNS)]
        for address, netns in ((METADATA, None), (PRIVATE, None), (PUBLIC, NETNS)):
            wait_listening(address, TCP_PORT, netns)
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()
        ip("route", "del", f"{PUBLIC}/32", check=False)
        ip("link", "del", VETH_HOST, check=False)
        ip("netns", "del", NETNS, check=False)
        ip("link", "del", DUMMY, check=False)


@pytest.fixture(scope="module")
def on_engine_host():
    """A listener on every address of the engine's host (bind 0.0.0.0, a free port)."""
    port = free_port()
    process = listen("0.0.0.0", port, ENGINE_NETNS)
    try:
        wait_listening("127.0.0.1", port, ENGINE_NETNS)
        yield port
    finally:
        process.kill()
        process.wait()


CONNECT = """
import socket, struct
def gateway():
    with open('/proc/net/route') as routes:
        return next(socket.inet_ntoa(struct.pack('<L', int(f[2], 16))) for f in (l.split() for l in routes)
                    if f[1] == '00000000')
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "reached"
    except OSError:
        return "blocked"
"""


def host_address():
    """This host's own address outside the ranges the default policy blocks anyway (a
    local engine's host), or None."""
    from pybox.launch import host_addresses

    found = [a for a in host_addresses(None) if ":" not in a]
    return found[0] if found and BACKEND not in ("docker-remote", "swarm", "kubernetes") else None


def test_default_reaches_the_public_internet_only(outside, on_engine_host):
    # (Python expression of the host, port)
    targets = [(repr(METADATA), TCP_PORT), (repr(PRIVATE), TCP_PORT), (repr(PUBLIC), TCP_PORT),
               ("gateway()", on_engine_host)]
    own = host_address()
    if own:
        targets.append((repr(own), on_engine_host))
    code = CONNECT + "print(" + ", ".join(f"reach({host}, {port})" for host, port in targets) + ")"
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network="open") as sb:
        opened = sb.run(code, timeout=60).text.split()
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.network == "default"
        defaulted = sb.run(code, timeout=60).text.split()
        uid = sb.run("import os; print(os.getuid())").text
    # The open sandbox proves every listener is there and reachable from a container.
    assert opened == ["reached"] * len(targets)
    # Metadata, private, the engine's gateway and this host: blocked; the "public" address: reached.
    assert defaulted == ["blocked", "blocked", "reached", "blocked"] + ["blocked"] * (len(targets) - 4)
    assert uid == "1000"


def test_default_rules_admit_dns_to_the_resolver_only_and_refuse_inbound():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        resolvers = sb.run("print(' '.join(l.split()[1] for l in open('/etc/resolv.conf') "
                           "if l.startswith('nameserver')))").text.split()
        rules = engine("exec", "-u", "0", sb.id, "iptables", "-S").stdout.splitlines()
        rules6 = engine("exec", "-u", "0", sb.id, "ip6tables", "-S").stdout.splitlines()
        has_ipv6 = sb.run("print(any(l.split()[3] == '00' and l.split()[5] != 'lo' "
                          "for l in open('/proc/net/if_inet6')))").text == "True"
    assert rules[:3] == ["-P INPUT DROP", "-P FORWARD DROP", "-P OUTPUT DROP"]
    assert "-A INPUT -p tcp -m tcp --dport 8888 -j ACCEPT" in rules
    assert [r for r in rules if r.startswith("-A INPUT")] == [
        "-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -p tcp -m tcp --dport 8888 -j ACCEPT"]
    dns = [r for r in rules if "--dport 53" in r]
    ipv4_resolvers = [r for r in resolvers if ":" not in r]
    assert dns == [f"-A OUTPUT -d {r}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT"
                   for r in ipv4_resolvers for proto in ("udp", "tcp")]
    first_drop = rules.index("-A OUTPUT -d 10.0.0.0/8 -j DROP")
    assert all(rules.index(r) < first_drop for r in dns)
    for network in ("169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"):
        assert f"-A OUTPUT -d {network} -j DROP" in rules
    assert rules[-1] == "-A OUTPUT -j ACCEPT"  # the rest: the public internet
    # IPv6: blocked outright without a global address (these engines give containers none).
    assert "-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in rules6
    assert ("-A OUTPUT -j ACCEPT" in rules6) == has_ipv6
    if has_ipv6:
        assert "-A OUTPUT -d fc00::/7 -j DROP" in rules6 and "-A OUTPUT -d fe80::/10 -j DROP" in rules6


LISTEN_INSIDE = """
import socket, threading
server = socket.create_server(("0.0.0.0", 9999))
def serve():
    while True:
        server.accept()[0].close()
threading.Thread(target=serve, daemon=True).start()
route = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
route.connect(("198.18.0.10", 9))  # no packet: only the source address is chosen
print(route.getsockname()[0])
"""


@pytest.mark.parametrize("network", ["open", "none", "default", ["10.213.9.1"]])
def test_connections_into_a_sandbox_reach_only_its_gateway(network):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network=network) as sb:
        address = sb.run(LISTEN_INSIDE).text
        inside = host_reach(address, 9999, ENGINE_NETNS)
        gateway = host_reach(address, 8888, ENGINE_NETNS)
        assert sb.run("print('still up')").text == "still up"
    assert gateway == "reached"
    assert inside == ("reached" if network == "open" else "blocked")


def test_a_restarted_container_gets_its_policy_again(outside):
    if BACKEND == "swarm":
        pytest.skip("a swarm sandbox is never restarted (restart condition none); restarting its container "
                    "behind the node agent's back ends the task")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        engine("restart", "-t", "1", sb.id)
        for _ in range(100):
            logs = engine("logs", sb.id).stderr + engine("logs", sb.id).stdout
            if logs.count("policy 'default' applied") >= 2:
                break
            time.sleep(0.1)
        assert logs.count("policy 'default' applied") >= 2, logs
        code = CONNECT + f"print(reach({METADATA!r}, {TCP_PORT}), reach({PRIVATE!r}, {TCP_PORT}), " \
                         f"reach({PUBLIC!r}, {TCP_PORT}))"
        seen = engine("exec", "-u", "1000", sb.id, "python", "-c", code).stdout.strip()
        assert seen == "blocked blocked reached"
        assert "-A OUTPUT -d 169.254.0.0/16 -j DROP" in engine("exec", "-u", "0", sb.id, "iptables", "-S").stdout


def test_an_allowlist_with_ipv6_admits_neighbour_discovery():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network=["10.213.9.1", "2001:db8::7"]) as sb:
        rules6 = engine("exec", "-u", "0", sb.id, "ip6tables", "-S").stdout.splitlines()
    for direction, kind in (("INPUT", 135), ("INPUT", 136), ("OUTPUT", 135), ("OUTPUT", 136)):
        assert f"-A {direction} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j ACCEPT" in rules6
    assert "-A OUTPUT -d 2001:db8::7/128 -j ACCEPT" in rules6
    assert "-A INPUT -p tcp -m tcp --dport 8888 -j ACCEPT" in rules6


def pinned_name():
    """A name this client resolves from its own /etc/hosts (no DNS query), not in the image's."""
    import socket

    name = socket.gethostname()
    with open("/etc/hosts") as hosts:
        known = {word for line in hosts if not line.lstrip().startswith("#") for word in line.split()[1:]}
    return name if name in known and name != "localhost" else None


def test_a_read_only_sandbox_with_an_allowed_domain_starts():
    name = pinned_name()
    if name is None:
        pytest.skip("this host's name is not in its /etc/hosts (resolving it would query DNS)")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network=[name, "localhost"], read_only=True) as sb:
        hosts = sb.run("print(open('/etc/hosts').read())").text
        assert sb.run("open('/etc/x', 'w')", check=False).error is not None  # read-only indeed
    assert any(line.split()[1:] and name in line.split()[1:] for line in hosts.splitlines())


def test_a_rule_that_cannot_be_applied_stops_the_start_naming_it(monkeypatch):
    import pybox.launch

    monkeypatch.setattr(pybox.launch, "host_addresses", lambda engine_host: ("300.1.2.3",))
    with pytest.raises(pybox.StartupTimeout) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    assert "could not apply the IPv4 rule '-A OUTPUT -d 300.1.2.3 -j DROP'" in str(info.value)
