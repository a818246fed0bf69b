"""The plugin proves itself against pybox's backend contract, plus what it adds."""

import pytest

import pybox
from pybox.testing import BackendContract


class TestHardenedDocker(BackendContract):
    backend = "hardened-docker"


@pytest.fixture(scope="module")
def sandbox():
    with pybox.Sandbox(backend="hardened-docker") as sb:
        yield sb


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
