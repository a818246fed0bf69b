"""A backend written from scratch by a third party (tests/integration/cli_backend.py:
the docker CLI, nothing of pybox's Docker backend) gets every policy right by
translating the launch plan: it passes the contract, and network policies, read-only
roots and limits hold in its sandboxes."""

import re

import pytest

import pybox
from pybox.plugins import get_plugins
from pybox.testing import BackendContract

from .cli_backend import DockerCliBackend, DockerCliPlugin
from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND != "docker", reason="drives the local docker CLI")

if "docker-cli" not in get_plugins().backends():
    get_plugins().register(DockerCliPlugin(), name="docker-cli")


class TestDockerCliContract(BackendContract):
    backend = "docker-cli"
    image = IMAGE


GATEWAY_CONNECT = """
import errno, socket, struct
with open('/proc/net/route') as routes:
    gateway = next(socket.inet_ntoa(struct.pack('<L', int(f[2], 16))) for f in (l.split() for l in routes)
                   if f[1] == '00000000')
s = socket.socket()
s.settimeout(3)
print(errno.errorcode.get(s.connect_ex((gateway, 9)), 'connected or timed out'))
"""


def test_a_network_policy_holds_without_a_line_of_policy_in_the_backend():
    with pybox.Sandbox(image=IMAGE, backend="docker-cli", network="none") as sb:
        assert sb.run(GATEWAY_CONNECT).text in ("EPERM", "EAGAIN")
        bounding = sb.run("print([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0])").text
        assert bounding.split()[-1] == "0000000000000000"
        assert sb.run("import os; print(os.getuid())").text == "1000"
    with pybox.Sandbox(image=IMAGE, backend="docker-cli") as sb:
        assert sb.run(GATEWAY_CONNECT).text == "ECONNREFUSED"


READ_CGROUP = """
import os
v1, v2 = '/sys/fs/cgroup/{v1}', '/sys/fs/cgroup/{v2}'
print(open(v1 if os.path.exists(v1) else v2).read().strip())
"""


def test_read_only_and_limits_hold():
    with pybox.Sandbox(image=IMAGE, backend="docker-cli", read_only=True,
                       limits=pybox.Limits(memory="256m", pids=100)) as sb:
        assert sb.run("open('/etc/x', 'w')", check=False).error is not None
        sb.run("open('/app/ok', 'w').write('ok'); open('/tmp/ok', 'w').write('ok')")
        assert sb.run(READ_CGROUP.format(v1="pids/pids.max", v2="pids.max")).text == "100"
        limit = sb.run(READ_CGROUP.format(v1="memory/memory.limit_in_bytes", v2="memory.max")).text
        assert int(limit) == 256 << 20


def test_the_token_never_appears_on_the_command_line():
    plan_env = {"KG_AUTH_TOKEN": "secret-token-value", "A": "b"}
    from pybox.backend import LaunchPlan

    args = DockerCliBackend()._create_args(LaunchPlan(image=IMAGE, env=plan_env))
    assert not any(re.search("secret-token-value", arg) for arg in args)
    assert args[args.index("KG_AUTH_TOKEN") - 1] == "--env"
