"""The plugin proves itself against pybox's backend contract on the engine named by
PYBOX_TEST_BACKEND (docker by default; podman too), plus what it adds."""

import os

import pytest

import pybox
from pybox.testing import GATEWAY_PROBE, BackendContract

BACKEND = os.environ.get("PYBOX_TEST_BACKEND", "docker")


class TestHardenedContract(BackendContract):
    backend = BACKEND


@pytest.fixture(scope="module")
def sandbox():
    with pybox.Sandbox(backend=BACKEND) as sb:
        yield sb


def test_the_plugin_is_loaded():
    from pybox.plugins import get_plugins

    assert "hardened" not in get_plugins().load_errors


def test_root_filesystem_is_read_only(sandbox):
    result = sandbox.run("open('/etc/pybox-was-here', 'w')", check=False)
    assert result.error is not None and result.error.ename in ("OSError", "PermissionError")
    assert "Read-only file system" in result.error.evalue or "Permission denied" in result.error.evalue


def test_app_and_tmp_are_writable(sandbox):
    sandbox.run("open('/app/ok.txt', 'w').write('ok'); open('/tmp/ok.txt', 'w').write('ok')")
    assert sandbox.run("print(open('/app/ok.txt').read() + open('/tmp/ok.txt').read())").text == "okok"


def test_no_capabilities(sandbox):
    capabilities = sandbox.run("print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0])").text
    assert capabilities.split()[-1] == "0000000000000000"


def test_default_limits_apply_when_the_sandbox_sets_none():
    no_limits = pybox.Limits(memory=None, cpus=None, pids=None)
    with pybox.Sandbox(backend=BACKEND, limits=no_limits) as sb:
        pids_max = sb.run("print(open('/sys/fs/cgroup/pids/pids.max').read().strip() if __import__('os')"
                          ".path.exists('/sys/fs/cgroup/pids/pids.max') else open('/sys/fs/cgroup/pids.max')"
                          ".read().strip())").text
        assert pids_max == "256"


def test_a_network_policy_still_applies_and_leaves_no_capabilities():
    with pybox.Sandbox(backend=BACKEND, network="none") as sb:
        capabilities = sb.run("print([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0])").text
        assert capabilities.split()[-1] == "0000000000000000"
        # The engine's bridge gateway (this machine): dropped by the policy (EPERM, or a
        # timeout), where an open sandbox is answered at once (nothing listens on port 9).
        assert sb.run(GATEWAY_PROBE).text in ("EPERM", "EAGAIN")
        assert sb.run("open('/etc/x', 'w')", check=False).error is not None  # still read-only
    with pybox.Sandbox(backend=BACKEND, network="open") as open_sandbox:
        assert open_sandbox.run(GATEWAY_PROBE).text == "ECONNREFUSED"


def test_the_default_network_policy_applies_under_the_plugin():
    with pybox.Sandbox(backend=BACKEND) as sb:  # network="default", read-only, no capabilities
        assert sb.run(GATEWAY_PROBE).text in ("EPERM", "EAGAIN")
        capabilities = sb.run("print([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0])").text
        assert capabilities.split()[-1] == "0000000000000000"


def test_a_read_only_allowlist_with_a_domain_starts():
    with pybox.Sandbox(backend=BACKEND, network=["localhost"]) as sb:
        assert sb.run("print('up')").text == "up"
