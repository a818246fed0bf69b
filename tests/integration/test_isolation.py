"""Limits, read-only root, and deaths from outside: each contained and named quickly."""

import threading
import time

import pytest

import pybox
from pybox.backend import PIDS_LIMIT
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE


def test_memory_hog_is_killed_and_named_oom():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(memory="256m")) as sb:
        sb.run("survivor = 1")
        started = time.monotonic()
        with pytest.raises(pybox.KernelDied) as info:
            sb.run("hog = bytearray(1024 ** 3)", timeout=60)
        assert time.monotonic() - started < 5
        assert "OOMKilled" in info.value.reason and "SIGKILL" in info.value.reason
        assert sb.run("print('back')", timeout=60).text == "back"  # restarted, fresh state
        with pytest.raises(pybox.ExecutionError):
            sb.run("survivor")


@pytest.mark.skipif(PIDS_LIMIT not in get_plugins().backend(BACKEND).features,
                    reason="the backend has no process limit per sandbox (a Kubernetes cluster's is per node: "
                           "tests/integration/test_kubernetes.py)")
def test_process_limit_contains_a_fork_bomb():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, limits=pybox.Limits(pids=64)) as sb:
        result = sb.run(
            "import subprocess\nprocs = []\n"
            "for _ in range(1000):\n    procs.append(subprocess.Popen(['sleep', '60']))",
            check=False, timeout=60)
        assert result.error is not None
        assert result.error.ename in ("BlockingIOError", "OSError", "RuntimeError")
        assert sb.run("for p in procs: p.kill()\nprint(len(procs) < 64)", timeout=60).text == "True"


def test_container_killed_from_outside_is_seen_at_once():
    sb = pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    engine = get_plugins().backend(BACKEND)()
    try:
        sb.run("1")
        killer = threading.Timer(1.0, engine.remove, args=(sb.id,))
        killer.start()
        started = time.monotonic()
        with pytest.raises((pybox.KernelDied, pybox.ChannelError)) as info:
            sb.run("import time\ntime.sleep(60)", timeout=120)
        assert time.monotonic() - started < 4
        assert isinstance(info.value, pybox.KernelDied), info.value
        assert "container" in info.value.reason
    finally:
        sb.stop()
        engine.close()


def test_read_only_root_keeps_app_writable(tmp_path):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, read_only=True) as sb:
        denied = sb.run("open('/etc/pybox-was-here', 'w')", check=False)
        assert denied.error is not None and "Read-only file system" in denied.error.evalue
        sb.run("open('/app/ok.txt', 'w').write('ok')")
        (tmp_path / "in.txt").write_text("uploaded")
        sb.upload(tmp_path / "in.txt", "in.txt")
        assert sb.run("print(open('ok.txt').read(), open('in.txt').read())").text == "ok uploaded"
        sb.download("ok.txt", tmp_path / "ok.txt")
        assert (tmp_path / "ok.txt").read_text() == "ok"
        r = sb.run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert len(r.images) == 1
        # The scratch mounts are the sandbox user's (the init gives them their owner on every
        # engine): its site-packages, where `pip install` goes, is there and on sys.path,
        # ahead of the image's root-owned venv.
        where = sb.run("import os, site, sys\np = site.getusersitepackages()\n"
                       "venv = [e for e in sys.path if e.startswith('/opt/pybox/lib')][0]\n"
                       "print(os.access(p, os.W_OK), sys.path.index(p) < sys.path.index(venv), "
                       "os.access(venv, os.W_OK), os.stat(os.path.expanduser('~/.config')).st_uid)").text
        assert where == "True True False 1000"


INSTALL_OFFLINE = '''
import os, subprocess, sys
os.makedirs('/tmp/pkg/pyboxdemo', exist_ok=True)
open('/tmp/pkg/pyboxdemo/__init__.py', 'w').write('ANSWER = 42\\n')
open('/tmp/pkg/pyproject.toml', 'w').write(
    '[project]\\nname = "pyboxdemo"\\nversion = "1.0"\\n'
    '[build-system]\\nrequires = ["setuptools"]\\nbuild-backend = "setuptools.build_meta"\\n')
out = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-build-isolation', '/tmp/pkg'],
                     capture_output=True, text=True)
print(out.returncode, 'user installation' in out.stdout + out.stderr)
import pyboxdemo
print(pyboxdemo.ANSWER, pyboxdemo.__file__.startswith(os.path.expanduser('~/.local/')))
'''


def test_code_installs_packages_into_its_own_site_packages_and_imports_them_at_once():
    # A package made in the sandbox and installed offline (no index): pip, run by the sandbox
    # user, cannot write the image's venv and installs into the user's site-packages, which
    # the running kernel imports from at once; on a read-only root too.
    for read_only in (False, True):
        with pybox.Sandbox(image=IMAGE, backend=BACKEND, read_only=read_only) as sb:
            assert sb.run(INSTALL_OFFLINE, timeout=180).text.split() == ["0", "True", "42", "True"], read_only


def test_default_limits_apply():
    limits = pybox.Limits()
    assert limits.memory == "2g" and limits.pids == 1024
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        text = sb.run("print(open('/sys/fs/cgroup/pids/pids.max').read().strip() if __import__('os').path.exists("
                      "'/sys/fs/cgroup/pids/pids.max') else open('/sys/fs/cgroup/pids.max').read().strip())").text
        assert text == ("1024" if PIDS_LIMIT in get_plugins().backend(BACKEND).features else text)
