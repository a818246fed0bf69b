"""Attacks by code in the sandbox, run for real on every engine (SECURITY.md lists what
each one proves). The code is hostile and knows pybox's source: the host, other
sandboxes and the calling process must stay untouched and responsive."""

from __future__ import annotations

import gc
import hashlib
import os
import time

import pytest

import pybox
from pybox.backend import PIDS_LIMIT
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE, engine_command


@pytest.fixture(scope="module")
def engine():
    backend = get_plugins().backend(BACKEND)()
    yield backend
    backend.close()


# -- downloads never escape the target ---------------------------------------------------


def test_download_through_chained_links_is_refused_and_leaves_nothing(sandbox, tmp_path):
    (tmp_path / "secret.txt").write_text("host file")
    os.chmod(tmp_path / "secret.txt", 0o600)
    sandbox.run("import os\nos.makedirs('evil/d1', exist_ok=True)\nos.symlink('..', 'evil/d1/up')\n"
                "os.symlink('d1/up/d1/up/../../secret.txt', 'evil/escape')\n"
                "open('evil/innocent.txt', 'w').write('x')")
    with pytest.raises(pybox.UnsafeArchive):
        sandbox.download("evil", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["secret.txt"]
    assert (tmp_path / "secret.txt").read_text() == "host file"
    assert os.stat(tmp_path / "secret.txt").st_mode & 0o777 == 0o600


def test_a_download_never_writes_through_a_link_at_or_in_the_target(sandbox, tmp_path):
    (tmp_path / "victim.txt").write_text("host file")
    (tmp_path / "report.txt").symlink_to(tmp_path / "victim.txt")
    sandbox.run("open('report.txt', 'w').write('from the sandbox')")
    with pytest.raises(pybox.UnsafeArchive, match="symbolic link"):  # the target itself is a link
        sandbox.download("report.txt", tmp_path / "report.txt")
    sandbox.download("report.txt", tmp_path)  # into the directory, where a link has the name
    assert (tmp_path / "victim.txt").read_text() == "host file"
    assert (tmp_path / "report.txt").read_text() == "from the sandbox"
    assert not (tmp_path / "report.txt").is_symlink()


def test_a_huge_download_stops_at_the_cap(sandbox, tmp_path):
    sandbox.run("with open('huge.bin', 'wb') as f:\n    f.truncate(3 << 30)")  # sparse in the sandbox
    started = time.monotonic()
    with pytest.raises(pybox.DownloadTooLarge):
        sandbox.download("huge.bin", tmp_path / "huge.bin")
    assert not (tmp_path / "huge.bin").exists() and os.listdir(tmp_path) == []
    assert time.monotonic() - started < 60
    sandbox.run("import os; os.remove('huge.bin')")


# -- the gateway is out of the kernel's reach ------------------------------------------

#: The gateway's pid, as code in the sandbox finds it.
FIND_GATEWAY = """
import os
def cmdline(pid):
    try:
        return open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        return b''
gateway = next(int(p) for p in os.listdir('/proc') if p.isdigit() and b'pybox-gateway' in cmdline(p))
"""

#: Everything kernel code can read that might hold the token: every process's environment,
#: command line and memory, the gateway's home and the files of the image's config and
#: scratch directories. The test sends only the token's SHA-256: code compares the hash of
#: every token-shaped string it finds (secrets.token_urlsafe(32): 43 characters).
SEARCH_FOR_TOKEN = FIND_GATEWAY + """
import glob, hashlib, re
tried = {}
blobs = [repr(dict(os.environ)).encode()]
def read(path):
    try:
        with open(path, 'rb') as f:
            blobs.append(f.read(4 << 20))
        tried[path] = 'read'
    except OSError as e:
        tried[path] = type(e).__name__
for pattern in ('/proc/[0-9]*/environ', '/proc/[0-9]*/cmdline', '/proc/[0-9]*/mem'):
    for path in glob.glob(pattern):
        read(path)
for root in ('/var/lib/pybox', '/etc/pybox', '/opt/pybox/etc', '/tmp', '/home/sandbox', '/app', '/run'):
    for directory, _, names in os.walk(root):
        for name in names:
            read(os.path.join(directory, name))
hashes = {hashlib.sha256(m).hexdigest() for blob in blobs for m in re.findall(rb'[A-Za-z0-9_-]{43}', blob)}
print(HASH in hashes, tried[f'/proc/{gateway}/environ'], tried[f'/proc/{gateway}/mem'],
      open(f'/proc/{gateway}/status').read().split('Uid:')[1].split()[0], os.getuid(),
      os.access('/var/lib/pybox', os.R_OK))
"""


def test_kernel_code_cannot_find_the_gateway_token(fresh_sandbox):
    digest = hashlib.sha256(fresh_sandbox.token.encode()).hexdigest()
    found = fresh_sandbox.run(SEARCH_FOR_TOKEN.replace("HASH", repr(digest)), timeout=120).text.split()
    # The gateway runs as its own user (999): its environment and memory are closed to the
    # kernel (1000), and the token is not in the environment kernels inherit.
    assert found == ["False", "PermissionError", "PermissionError", "999", "1000", "False"]


SIGNAL_THE_GATEWAY = FIND_GATEWAY + """
import signal
outcomes = []
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSTOP, signal.SIGKILL):
    try:
        os.kill(gateway, number)
        outcomes.append('delivered')
    except PermissionError:
        outcomes.append('refused')
print(*outcomes)
"""


def test_kernel_code_cannot_signal_the_gateway(fresh_sandbox):
    assert fresh_sandbox.run(SIGNAL_THE_GATEWAY).text.split() == ["refused"] * 5
    assert fresh_sandbox.kernel().run("print('the gateway still starts kernels')").text \
        == "the gateway still starts kernels"


REWRITE_THE_GATEWAY = """
import os, sysconfig
site = sysconfig.get_paths()['purelib']
files = [site + '/kernel_gateway/gatewayapp.py', site + '/jupyter_server/__init__.py', site + '/pybox_boot.py',
         site + '/pybox_adopt.py', site + '/usercustomize.py', '/opt/pybox/bin/pybox-gateway', '/opt/pybox/pyvenv.cfg',
         '/opt/pybox/share/jupyter/kernels/python3/kernel.json', '/etc/pybox/pybox_gateway_config.py',
         '/usr/local/sbin/pybox-init', '/etc/passwd', '/etc/hosts']
directories = ['/opt/pybox', '/opt/pybox/bin', site, site + '/kernel_gateway', '/etc/pybox', '/usr/local/sbin',
               '/usr/local/bin', '/usr/sbin', '/usr/bin', '/var/lib/pybox']
def attempt(action):
    try:
        action()
        return 'done'
    except PermissionError:
        return 'refused'
    except OSError as e:
        return type(e).__name__
outcomes = {}
for path in files:
    outcomes[path + ' write'] = attempt(lambda: open(path, 'r+b').close())
    outcomes[path + ' rename'] = attempt(lambda: os.rename(path, path + '.x'))
    outcomes[path + ' chmod'] = attempt(lambda: os.chmod(path, 0o777))
for path in directories:
    outcomes[path + ' create'] = attempt(lambda: open(path + '/planted.py', 'x').close())
print({k: v for k, v in outcomes.items() if v != 'refused'})
"""


def test_kernel_code_cannot_rewrite_what_the_gateway_and_the_init_run(sandbox):
    assert sandbox.run(REWRITE_THE_GATEWAY).text == "{}"


PLANT = r"""
import os, site
marker = "import os; open('/tmp/planted-%d' % os.getuid(), 'w').close()\n"
user_site = site.getusersitepackages()
os.makedirs(user_site, exist_ok=True)
with open(os.path.join(user_site, 'aaa_planted.pth'), 'w') as f:
    f.write(marker)
for name in ('sitecustomize.py', 'jupyter_server.py', 'kernel_gateway.py', 'tornado.py'):
    with open(os.path.join(user_site, name), 'w') as f:
        f.write(marker)
# Every directory of the init's and the gateway's PATH it can write to (none), and others.
for directory in ('/opt/pybox/bin', '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin',
                  os.path.expanduser('~/.local/bin'), '/app', '/tmp'):
    for name in ('iptables-restore', 'ip6tables-restore', 'setpriv', 'env', 'python', 'python3', 'getent', 'mountpoint',
                 'chown', 'stat', 'mkdir', 'id', 'grep'):
        path = os.path.join(directory, name)
        try:
            os.makedirs(directory, exist_ok=True)
            if os.path.exists(path):
                os.rename(path, path + '.orig')
            with open(path, 'w') as f:
                f.write("#!/bin/sh\ntouch /tmp/planted-$(id -u)\n")
            os.chmod(path, 0o755)
        except PermissionError:
            pass
print('planted')
"""


def test_code_planted_for_the_init_and_the_gateway_never_runs_as_them_after_a_restart():
    # The container's writable layer keeps what code wrote there across a restart; the init
    # (root) and the gateway (999) start again and must run none of it.
    if BACKEND == "docker-remote":
        pytest.skip("restarts the container with the engine's CLI, which reaches the local engine only here")
    if BACKEND == "swarm":
        pytest.skip("a swarm sandbox is never restarted (restart condition none); restarting its container "
                    "behind the node agent's back ends the task")
    if BACKEND == "kubernetes":
        pytest.skip("a sandbox pod is never restarted (restartPolicy Never): nothing planted survives into a new start")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.run(PLANT).text == "planted"
        engine_command("exec", "-u", "0", sb.id, "/bin/sh", "-c", "/bin/rm -f /tmp/planted-*")
        engine_command("restart", "-t", "1", sb.id)
        # The prelaunched kernel (the sandbox user's) imports the planted .pth: once its
        # marker is there, the init and the gateway have started too.
        markers: list[str] = []
        for _ in range(300):
            markers = engine_command("exec", "-u", "0", sb.id, "/bin/ls", "/tmp", check=False).stdout.split()
            if "planted-1000" in markers:
                break
            time.sleep(0.1)
        processes = engine_command("exec", "-u", "0", sb.id, "/bin/sh", "-c",
                                   "for p in /proc/[0-9]*; do echo $(/usr/bin/stat -c %u $p) "
                                   "$(/usr/bin/tr '\\0' ' ' < $p/cmdline); done", check=False).stdout
    assert "planted-1000" in markers, (markers, processes)
    assert [m for m in markers if m.startswith("planted-") and m != "planted-1000"] == []
    assert "999 /opt/pybox/bin/python -I /opt/pybox/bin/pybox-gateway" in processes


def test_the_init_refuses_to_start_without_the_capabilities_it_needs(monkeypatch):
    import pybox.launch

    monkeypatch.setattr(pybox.launch, "INIT_CAPS", ("CHOWN",))  # as a plugin dropping them would
    with pytest.raises(pybox.StartupTimeout) as info:
        pybox.Sandbox(image=IMAGE, backend=BACKEND, network="open", startup_timeout=60).start()
    assert "the container lacks capabilities the sandbox needs" in str(info.value)
    assert "KILL, SETGID, SETUID and SETPCAP must be granted" in str(info.value)


#: Code that waits for an upload into /app/project and, as soon as the engine has written
#: the member `f0150.txt` there (inotify), swaps the directory for a link to a root-owned
#: directory in one call (renameat2 RENAME_EXCHANGE): the engine, extracting as root, would
#: then write the remaining members through the link.
SWAP_DURING_UPLOAD = r"""
import ctypes, os, struct, subprocess, sys
racer = '''
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
os.symlink("/opt/pybox/share/pybox", "/app/.swap")
while not os.path.isdir("/app/project"):
    pass
fd = libc.inotify_init()
libc.inotify_add_watch(fd, b"/app/project", 0x4 | 0x8 | 0x100)  # attrib, close_write, create
while True:
    data = os.read(fd, 65536)
    if b"f0150.txt" in data:
        libc.renameat2(-100, b"/app/project", -100, b"/app/.swap", 2)
        break
'''
subprocess.Popen([sys.executable, "-c", racer], start_new_session=True)
print("racing")
"""


def test_an_upload_cannot_be_redirected_by_swapping_its_directory_for_a_link(fresh_sandbox, tmp_path):
    source = tmp_path / "project"
    source.mkdir()
    for i in range(300):
        (source / f"f{i:04d}.txt").write_text(f"file {i}\n")
    before = fresh_sandbox.run("import os; print(sorted(os.listdir('/opt/pybox/share/pybox')))").text
    assert fresh_sandbox.run(SWAP_DURING_UPLOAD).text == "racing"
    time.sleep(0.5)
    try:
        fresh_sandbox.upload(source, "project")
    except pybox.PyboxError:
        pass  # refusing is fine too; writing as root through the link is not
    time.sleep(0.5)
    after = fresh_sandbox.run("import os; print(sorted(os.listdir('/opt/pybox/share/pybox')))").text
    assert after == before


# -- the host's disk and memory are bounded ----------------------------------------------


def test_the_sandbox_cannot_fill_the_host_disk_through_its_log(engine):
    if BACKEND not in ("docker", "podman"):
        pytest.skip("reads the log file on this host")
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        # Straight to the container's stdout, past the kernel: the engine's log file.
        sb.run("import os\nchunk = b'x' * (1 << 20) + b'\\n'\nfor _ in range(40):\n    os.write(1, chunk)",
               timeout=120)
        logs = engine.logs(sb.id, tail=1_000_000)
        assert len(logs) < 25 << 20, f"{len(logs)} bytes of log kept for 40 MiB written"


@pytest.mark.parametrize("memory", ["0", "0g", "0.5b", 0])
def test_limits_that_would_mean_unlimited_are_refused(memory):
    with pytest.raises(pybox.InvalidArgument, match="memory limit"):
        pybox.Limits(memory=memory)


def test_the_default_limits_are_finite(fresh_sandbox):
    read = ("import os\nv1, v2 = '/sys/fs/cgroup/{v1}', '/sys/fs/cgroup/{v2}'\n"
            "print(open(v1 if os.path.exists(v1) else v2).read().strip())")
    memory = fresh_sandbox.run(read.format(v1="memory/memory.limit_in_bytes", v2="memory.max")).text
    pids = fresh_sandbox.run(read.format(v1="pids/pids.max", v2="pids.max")).text
    assert int(memory) == 2 << 30
    if PIDS_LIMIT in get_plugins().backend(BACKEND).features:
        assert pids == "1024"


# -- forgotten sandboxes are collected -----------------------------------------------------


def test_a_forgotten_sandbox_with_a_kernel_open_is_collected_and_its_container_removed(engine):
    sandbox = pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    sandbox.run("x = 1")
    kernel = sandbox.kernel()
    kernel.run("y = 2")
    container = sandbox.id
    # the del is inside too: without a reference cycle (or with an automatic collection in
    # between) the sandbox is collected by the del itself, not by gc.collect()
    with pytest.warns(ResourceWarning, match="unclosed"):
        del sandbox, kernel
        gc.collect()
    deadline = time.monotonic() + 30
    while engine.inspect(container).status != "removed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.inspect(container).status == "removed"


# -- the kernel fork server runs as the sandbox user: kernel code can kill, stop or replace it


FIND_FORK_SERVER = """
import os
def fork_server():
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()
            parent = open(f'/proc/{pid}/status').read().split('PPid:')[1].split()[0]
            parent_uid = open(f'/proc/{parent}/status').read().split('Uid:')[1].split()[0]
        except (OSError, IndexError):
            continue
        # kernels forked from it say the same but have threads (an orphan's parent is the gateway too)
        if b'pybox_forkserver.py' in cmdline and parent_uid == '999' and len(os.listdir(f'/proc/{pid}/task')) == 1:
            return int(pid)
"""

def _start_the_fork_server(sb):
    sb.kernel().close()  # the second kernel of a sandbox starts the server (and a spare)
    found = sb.run(FIND_FORK_SERVER + "import time\nfor _ in range(300):\n    if fork_server():\n        break\n"
                   "    time.sleep(0.1)\nprint(fork_server() is not None)", timeout=60).text
    assert found == "True"


KERNEL_FACTS = "import os\nprint(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])"


def _kernels_still_start(sb):
    for _ in range(3):  # the stock launch, then forks from a fresh server, then its spare
        kernel = sb.kernel()
        assert kernel.run(KERNEL_FACTS).text == "1000 0000000000000000"
    assert sb.run("print('the first kernel is untouched')").text == "the first kernel is untouched"


def test_killing_the_fork_server_costs_no_kernel(fresh_sandbox):
    fresh_sandbox.run("x = 41")
    _start_the_fork_server(fresh_sandbox)
    killed = fresh_sandbox.run(FIND_FORK_SERVER + "import signal\nos.kill(fork_server(), signal.SIGKILL)\n"
                               "print('killed')").text
    assert killed == "killed"
    _kernels_still_start(fresh_sandbox)
    assert fresh_sandbox.run("print(x + 1)").text == "42"
    assert "pybox_forkserver" in fresh_sandbox.run(FIND_FORK_SERVER + "print(open(f'/proc/{fork_server()}/cmdline')"
                                                  ".read())").text  # a fresh one


def test_a_stopped_fork_server_delays_a_kernel_start_but_never_blocks_it(fresh_sandbox):
    _start_the_fork_server(fresh_sandbox)
    fresh_sandbox.run(FIND_FORK_SERVER + "import signal\nos.kill(fork_server(), signal.SIGSTOP)")
    started = time.monotonic()
    kernel = fresh_sandbox.kernel()  # the gateway gives up on the server after 10 s
    assert kernel.run(KERNEL_FACTS).text == "1000 0000000000000000"
    assert time.monotonic() - started < 60
    _kernels_still_start(fresh_sandbox)


LYING_FORK_SERVER = r"""
import os, site
user_site = site.getusersitepackages()
os.makedirs(user_site, exist_ok=True)
# Run by the fork server at its start (it is the sandbox user's Python, user site on):
# the gateway is told the kernel it asked for is pid 1, the gateway itself.
with open(os.path.join(user_site, 'zzz_lie.py'), 'w') as f:
    f.write("import os, sys\n"
            "if sys.argv and sys.argv[0].endswith('pybox_forkserver.py'):\n"
            "    real_fork = os.fork\n"
            "    def lying_fork():\n"
            "        pid = real_fork()\n"
            "        return pid if pid == 0 else 1\n"
            "    os.fork = lying_fork\n")
with open(os.path.join(user_site, 'zzz_lie.pth'), 'w') as f:
    f.write("import zzz_lie\n")
"""


def test_a_fork_server_naming_another_process_is_not_believed(fresh_sandbox):
    _start_the_fork_server(fresh_sandbox)
    fresh_sandbox.run(LYING_FORK_SERVER)
    # The planted file changed the user's site-packages: the server in place exits at
    # the next request, the next one starts with the lie planted.
    for _ in range(3):
        try:
            fresh_sandbox.kernel().run("print(1)", timeout=30)
        except pybox.PyboxError:
            pass  # the start that caught the lie may lose its ports to the liar's kernel
    _kernels_still_start(fresh_sandbox)
    # Killed, not restarted. Polled: a lying server's orphaned kernels (it forked them for
    # real) look like a server while they start, single-threaded (CI's podman run, loaded).
    deadline = time.monotonic() + 15
    while (found := fresh_sandbox.run(FIND_FORK_SERVER + "print(fork_server())").text) != "None":
        assert time.monotonic() < deadline, f"a fork server (pid {found}) still runs"
        time.sleep(0.5)
    # The gateway (pid 1 in the container) is alive and never signalled itself.
    assert fresh_sandbox.run("print(open('/proc/1/status').read().split('Uid:')[1].split()[0])").text == "999"


MUTE_FORK_SERVER = r'''
import os, site
user_site = site.getusersitepackages()
os.makedirs(user_site, exist_ok=True)
with open(os.path.join(user_site, 'zzz_mute.py'), 'w') as f:
    f.write("""
import os, sys
if sys.argv and sys.argv[0].endswith('pybox_forkserver.py'):
    import array, fcntl, json, termios, time
    fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ: the gateway's request pipe holds one page now
    os.write(1, json.dumps({"ready": os.getpid()}).encode() + b"\\n")
    buf = b""
    while b"\\n" not in buf:
        buf += os.read(0, 65536)
    ident = json.loads(buf.split(b"\\n")[0])["id"]
    os.write(1, json.dumps({"id": ident, "error": "busy"}).encode() + b"\\n")
    seen = 0
    while True:  # never reads again: answers each new request (the pipe grew) with a refusal
        n = array.array("i", [0])
        fcntl.ioctl(0, termios.FIONREAD, n)
        if n[0] > seen:
            seen = n[0]
            ident += 1
            os.write(1, json.dumps({"id": ident, "error": "busy"}).encode() + b"\\n")
        time.sleep(0.01)
""")
with open(os.path.join(user_site, 'zzz_mute.pth'), 'w') as f:
    f.write("import zzz_mute\n")
print("planted")
'''


def test_a_fork_server_that_stops_reading_its_requests_never_freezes_the_gateway(fresh_sandbox):
    # A planted server shrinks its request pipe to one page (F_SETPIPE_SZ: it holds the read
    # end) and answers every request with a refusal without reading it: the gateway keeps
    # it (a refusal is no lie) and writes request after request until the pipe is full; a
    # blocking write there stops the gateway's event loop, every kernel with it.
    _start_the_fork_server(fresh_sandbox)
    assert fresh_sandbox.run(MUTE_FORK_SERVER).text == "planted"
    for _ in range(6):
        with fresh_sandbox.kernel() as kernel:
            assert kernel.run(KERNEL_FACTS, timeout=30).text == "1000 0000000000000000"
    assert fresh_sandbox.run("print('the first kernel answers')", timeout=30).text == "the first kernel answers"
