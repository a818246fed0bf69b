"""Network policy: open, none, allowlists; enforced although the kernel runs
unprivileged. Two HTTP servers on the project's own test addresses (10.213.9.1 and
10.213.9.2, added to this host's loopback interface) play the outside world."""

import os
import shutil
import subprocess
import sys
import time

import pytest

import pybox

from .conftest import BACKEND, IMAGE

ALLOWED, BLOCKED = "10.213.9.1", "10.213.9.2"
PORT = 18931

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="the test servers' addresses need root and iproute2")


@pytest.fixture(scope="module")
def servers():
    for address in (ALLOWED, BLOCKED):
        subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "lo"], check=True)
    processes = [subprocess.Popen([sys.executable, "-m", "http.server", str(PORT), "--bind", address],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for address in (ALLOWED, BLOCKED)]
    time.sleep(1.0)
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
    _, seen = probe()
    assert seen.split()[:2] == ["reached", "reached"]


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


def test_an_unresolvable_allowed_domain_fails_the_start_clearly():
    with pytest.raises(pybox.StartupTimeout) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND, network=["no-such-host.pybox-test.invalid"]).start()
    assert "cannot resolve the allowed domain no-such-host.pybox-test.invalid" in str(info.value)
