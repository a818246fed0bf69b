"""Sandbox.snapshot on a real engine: the round trip (a package installed from a local
wheel, files), what the image holds and what it does not (the token, env, owner labels,
the gateway's runtime files), what code planted cannot do in a sandbox started from it,
the protections of such a sandbox, Pool(image=tag), and the errors. Every image made
here is removed."""

from __future__ import annotations

import json
import textwrap
import time
import uuid

import pytest

import pybox
from pybox import BackendError, InvalidArgument, UnsupportedOperation
from pybox.image_contract import GATEWAY_HOME, TOKEN_ENV
from pybox.snapshot import SNAPSHOT_BASE_ID_LABEL, SNAPSHOT_LABEL

from .conftest import BACKEND, IMAGE, engine_command

pytestmark = pytest.mark.skipif(BACKEND in ("swarm", "kubernetes"),
                                reason=f"the {BACKEND} backend refuses snapshots (an image on one node only)")

# A wheel made in the sandbox, installed with pip from the file (no index, no network).
MAKE_WHEEL = textwrap.dedent('''
    import base64, hashlib, os, subprocess, sys, zipfile
    files = {
        "snapdemo/__init__.py": "VALUE = 'from-a-wheel'\\n",
        "snapdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: snapdemo\\nVersion: 1.0\\n",
        "snapdemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: pybox-test\\nRoot-Is-Purelib: true\\n"
                                        "Tag: py3-none-any\\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("snapdemo-1.0.dist-info/RECORD,,")
    files["snapdemo-1.0.dist-info/RECORD"] = "\\n".join(record) + "\\n"
    wheel = "/tmp/snapdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           "--disable-pip-version-check", wheel], capture_output=True, text=True)
    print(done.returncode, done.stdout[-300:], done.stderr[-300:])
''')

WRITE_FILES = textwrap.dedent('''
    import os
    open("/app/data.txt", "w").write("app file")
    open(os.path.expanduser("~/notes.txt"), "w").write("home file")
    open("/tmp/scratch.txt", "w").write("tmp file")
    state_in_memory = 41
''')


def tag_name(what: str) -> str:
    return f"pybox-snaptest-{what}:{uuid.uuid4().hex[:10]}"


def image_config(tag: str) -> dict:
    return json.loads(engine_command("image", "inspect", "--format", "{{json .Config}}", tag).stdout)


@pytest.fixture
def tags():
    """Tags the test snapshots to; removed afterwards."""
    made: list[str] = []
    yield made
    for tag in made:
        engine_command("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def snapshot():
    """A sandbox with a wheel installed and files written, its snapshot's tag and id."""
    tag = tag_name("module")
    try:
        with pybox.Sandbox(image=IMAGE, backend=BACKEND, env={"MYKEY": "s3cr3t-value"}) as sb:
            installed = sb.run(MAKE_WHEEL, timeout=120).text
            assert installed.startswith("0"), installed
            sb.run(WRITE_FILES)
            started = time.monotonic()
            image_id = sb.snapshot(tag)
            took = time.monotonic() - started
            # The original sandbox runs on, its kernel's state and files untouched.
            assert sb.run("state_in_memory += 1; print(state_in_memory, open('/app/data.txt').read())").text \
                == "42 app file"
            token = sb.token
        print(f"snapshot on {BACKEND} in {took:.2f} s")
        yield tag, image_id, token
    finally:
        engine_command("rmi", "-f", tag, check=False)


def test_a_sandbox_from_the_snapshot_has_the_package_and_the_files_not_the_memory(snapshot):
    tag, _, _ = snapshot
    with pybox.Sandbox(image=tag, backend=BACKEND) as sb:
        out = sb.run(textwrap.dedent('''
            import os, snapdemo
            print(snapdemo.VALUE, snapdemo.__file__.startswith(os.path.expanduser("~/.local/")))
            print(open("/app/data.txt").read(), open(os.path.expanduser("~/notes.txt")).read(),
                  open("/tmp/scratch.txt").read(), sep="|")
            print("state_in_memory" in globals(), repr(os.environ.get("MYKEY")))
        ''')).text
    assert out.splitlines() == ["from-a-wheel True", "app file|home file|tmp file", "False ''"]


def test_the_image_has_the_base_configuration_and_nothing_of_the_container(snapshot):
    tag, image_id, token = snapshot
    config, base = image_config(tag), image_config(IMAGE)
    assert engine_command("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip().split(":")[-1] == \
        image_id.split(":")[-1]
    # Anywhere in the image's metadata (Docker up to 24 records the committed container's
    # configuration as ContainerConfig) or history.
    text = engine_command("image", "inspect", tag).stdout + engine_command("history", "--no-trunc", tag).stdout
    assert token not in text and "s3cr3t-value" not in text
    env = dict(entry.split("=", 1) for entry in config["Env"])
    base_env = dict(entry.split("=", 1) for entry in base["Env"])
    # (Podman puts its defaults in every container: left as they are.)
    engine_env = {"TERM": "xterm", "container": "podman"} if BACKEND == "podman" else {}
    assert {k: v for k, v in env.items() if v} == {**{k: v for k, v in base_env.items() if v}, **engine_env}
    assert env[TOKEN_ENV] == "" and env["MYKEY"] == ""
    assert config["Cmd"] == base["Cmd"] and not config.get("Entrypoint") and not base.get("Entrypoint")
    assert config.get("User") == base.get("User") and config.get("WorkingDir") == base.get("WorkingDir")
    labels = config["Labels"]
    assert {k: v for k, v in labels.items() if v and not k.startswith("org.pybox.snapshot.")} == base["Labels"]
    assert labels["pybox"] == "" and labels["pybox.pid"] == ""  # pybox's owner labels: emptied
    assert labels[SNAPSHOT_LABEL] == IMAGE and labels[SNAPSHOT_BASE_ID_LABEL]


def test_the_image_holds_no_runtime_file_of_the_gateway(snapshot):
    tag, _, _ = snapshot
    found = engine_command("run", "--rm", "--network", "none", "--entrypoint", "/usr/bin/find", tag,
                           GATEWAY_HOME, "/tmp", "/home/sandbox", "/app", "-name", "kernel-*.json", "-o",
                           "-path", f"{GATEWAY_HOME}/*", "-o", "-name", "*.pem").stdout
    assert found.strip() == ""


def test_a_snapshot_of_a_snapshot(snapshot, tags):
    tag, _, _ = snapshot
    second = tag_name("second")
    tags.append(second)
    with pybox.Sandbox(image=tag, backend=BACKEND) as sb:
        sb.run("open('/app/second.txt', 'w').write('2')")
        sb.snapshot(second)
    with pybox.Sandbox(image=second, backend=BACKEND) as sb:
        assert sb.run("import snapdemo; print(open('/app/second.txt').read(), snapdemo.VALUE)").text == \
            "2 from-a-wheel"
    assert image_config(second)["Labels"][SNAPSHOT_LABEL] == tag


def test_a_pool_starts_from_the_snapshot(snapshot):
    tag, _, _ = snapshot
    with pybox.Pool(size=1, image=tag, backend=BACKEND) as pool, pool.sandbox() as sb:
        assert sb.run("import snapdemo; print(snapdemo.VALUE)").text == "from-a-wheel"


def test_a_sandbox_from_the_snapshot_keeps_the_protections(snapshot):
    tag, _, _ = snapshot
    limits = pybox.Limits(memory="300m", cpus=1.0, pids=128)
    with pybox.Sandbox(image=tag, backend=BACKEND, network="none", limits=limits) as sb:
        out = sb.run(textwrap.dedent('''
            import os, socket
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(("1.1.1.1", 80)); print("connected")
            except OSError:
                print("blocked")
            print(os.getuid(), open("/proc/self/status").read().split("CapEff:")[1].split()[0])
            try:
                open("/var/lib/pybox/planted", "w")
            except OSError:
                print("gateway home closed")
            def read(*paths):
                for path in paths:
                    try:
                        return open(path).read().strip()
                    except OSError:
                        pass
            print(read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
            print(read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"))
        ''')).text.splitlines()
    assert out == ["blocked", "1000 0000000000000000", "gateway home closed", str(300 << 20), "128"]


def test_a_read_only_sandbox_from_the_snapshot(snapshot):
    tag, _, _ = snapshot
    with pybox.Sandbox(image=tag, backend=BACKEND, read_only=True) as sb:
        out = sb.run(textwrap.dedent('''
            import os
            try:
                open("/usr/planted", "w")
            except OSError:
                print("read-only root")
            print(open("/app/data.txt").read())
            try:
                import snapdemo
                print("package", snapdemo.VALUE)
            except ImportError:
                print("no package")
        ''')).text.splitlines()
    assert out[:2] == ["read-only root", "app file"]
    assert out[2] == "package from-a-wheel"


# -- what hostile code plants ---------------------------------------------------------------

PLANT = textwrap.dedent('''
    import os, site
    marker = "import os; open('/tmp/ran-as-' + str(os.getuid()), 'a').write('x')"
    user_site = site.getusersitepackages()
    os.makedirs(user_site, exist_ok=True)
    for name in ("sitecustomize.py", "usercustomize.py"):
        open(os.path.join(user_site, name), "w").write(marker + "\\n")
    open(os.path.join(user_site, "zzz-planted.pth"), "w").write(marker + "\\n")
    # Modules the gateway imports, and Jupyter config files where a Jupyter app might look
    # (the gateway's working directory is /app): the gateway would run them as uid 999.
    for directory in (user_site, "/app"):
        open(os.path.join(directory, "kernel_gateway.py"), "w").write(marker + "\\n")
    os.makedirs(os.path.expanduser("~/.jupyter"), exist_ok=True)
    for directory in ("/app", os.path.expanduser("~/.jupyter")):
        for name in ("jupyter_config.py", "jupyter_server_config.py", "jupyter_kernel_gateway_config.py",
                     "jupyter_notebook_config.py"):
            open(os.path.join(directory, name), "w").write(marker + "\\n")
    # Files that look like the gateway's, where code can write.
    for path in ("/tmp/kernel-pybox-0000.json", "/app/kernel-pybox-0001.json"):
        open(path, "w").write('{"key": "planted", "transport": "tcp"}')
    os.makedirs("/tmp/tls", exist_ok=True)
    open("/tmp/tls/key.pem", "w").write("planted")
    refused = []
    for path in ("/var/lib/pybox/kernel-planted.json", "/opt/pybox/bin/planted", "/usr/local/sbin/planted",
                 "/etc/pybox/planted", "/opt/pybox/lib/planted.pth"):
        try:
            open(path, "w").write("x")
        except OSError:
            refused.append(path)
    print(len(refused))
''')


def test_what_code_plants_runs_only_as_the_sandbox_user_in_a_sandbox_from_the_snapshot(tags):
    tag = tag_name("planted")
    tags.append(tag)
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.run(PLANT).text == "5"  # nothing outside what the sandbox user owns
        sb.snapshot(tag)
    with pybox.Sandbox(image=tag, backend=BACKEND) as sb:
        sb.run("import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'])")
        with sb.kernel() as second:
            second.run("1")
        out = sb.run(textwrap.dedent('''
            import os
            print(sorted(n for n in os.listdir("/tmp") if n.startswith("ran-as-")))
            uids = set()
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        uids.add(int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0]))
                    except (OSError, IndexError):
                        pass
            print(sorted(uids))
        ''')).text.splitlines()
    # The planted code ran in the sandbox user's own processes (that is its state), never
    # as root (no root process is left: the init became the gateway) or as the gateway.
    assert out == ["['ran-as-1000']", "[999, 1000]"]
    listed = engine_command("run", "--rm", "--network", "none", "--entrypoint", "/usr/bin/find", tag,
                            GATEWAY_HOME, "-mindepth", "1").stdout
    assert listed.strip() == ""


def test_a_scratch_directory_made_a_link_in_the_snapshot_gives_the_sandbox_user_nothing(tags):
    # A read-only sandbox from a snapshot gets ~/.local, ~/.config and ~/.jupyter as volumes
    # (keep_image_content); code made them links before the snapshot. The engine mounts a
    # volume at a link's target (resolved in the container), and the init (root) chowned
    # "the scratch mount" to the sandbox user, through the link: /usr/bin became the sandbox
    # user's, a planted /usr/bin/setpriv then ran as the gateway (uid 999, its capabilities)
    # at the kernel's restart. Such a snapshot must not start read-only.
    tag = tag_name("links")
    tags.append(tag)
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.run(textwrap.dedent('''
            import os, shutil
            for name, target in ((".local", "/usr/bin"), (".config", "/opt/pybox/lib"), (".jupyter", "/etc/pybox")):
                path = os.path.expanduser("~/" + name)
                shutil.rmtree(path, ignore_errors=True)
                os.symlink(target, path)
            print("linked")
        ''')).text == "linked"
        sb.snapshot(tag)
    with pytest.raises(pybox.StartupTimeout, match="symbolic link"):
        with pybox.Sandbox(image=tag, backend=BACKEND, read_only=True, startup_timeout=60) as sb:
            owners = sb.run("import os\nprint(*(os.stat(p).st_uid for p in ('/usr/bin', '/opt/pybox/lib', "
                            "'/etc/pybox')))").text
            pytest.fail(f"started; owners of /usr/bin, /opt/pybox/lib, /etc/pybox: {owners}")


def test_a_bind_path_made_a_link_in_the_snapshot_does_not_shadow_the_init(tags, tmp_path):
    # Binds go under /app, the sandbox user's: code can make /app/data a link to
    # /usr/local/sbin before a snapshot. A sandbox from the snapshot binding a host
    # directory at "data" then gets it mounted at the link's target (engines resolve mount
    # targets in the container): the container's command, /usr/local/sbin/pybox-init,
    # becomes whatever that directory holds (written by an earlier sandbox that had the
    # same bind) and runs as root with the container's capabilities, before any policy.
    if BACKEND == "docker-remote":
        pytest.skip("binds a directory of this machine")
    host = tmp_path / "data"
    host.mkdir()
    host.chmod(0o777)  # a directory the sandbox may write to, as binds are meant to be
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, binds={str(host): "data"}) as sb:
        assert sb.run(textwrap.dedent('''
            import os
            with open("/app/data/pybox-init", "w") as f:
                f.write("#!/bin/sh\\nid -u > /usr/local/sbin/ran-as\\nexec sleep 3600\\n")
            os.chmod("/app/data/pybox-init", 0o755)
            print("planted")
        ''')).text == "planted"
    tag = tag_name("bindlink")
    tags.append(tag)
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        sb.run("import os\nos.rmdir('/app/data') if os.path.isdir('/app/data') else None\n"
               "os.symlink('/usr/local/sbin', '/app/data')")
        sb.snapshot(tag)
    try:
        with pybox.Sandbox(image=tag, backend=BACKEND, binds={str(host): "data"}, startup_timeout=15) as sb:
            sb.run("1")
    except pybox.PyboxError:
        pass  # refused, or the start failed: what matters is what ran
    assert not (host / "ran-as").exists(), f"the planted init ran as uid {(host / 'ran-as').read_text().strip()}"


# -- errors -----------------------------------------------------------------------------------


def test_errors_name_the_tag_or_the_state(fresh_sandbox, tags):
    with pytest.raises(InvalidArgument, match="'Not A Tag'"):
        fresh_sandbox.snapshot("Not A Tag")
    with pytest.raises(InvalidArgument, match="digest"):
        fresh_sandbox.snapshot("env@sha256:" + "0" * 64)
    container = fresh_sandbox.id
    engine_command("rm", "-f", container)
    tag = tag_name("gone")
    tags.append(tag)
    with pytest.raises(BackendError, match=f"as image {tag}: it is not running") as caught:
        fresh_sandbox.snapshot(tag)
    assert type(caught.value) is BackendError


def test_a_read_only_sandbox_is_refused(tags):
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, read_only=True) as sb:
        with pytest.raises(UnsupportedOperation, match="read-only"):
            sb.snapshot(tag_name("read-only"))


def test_the_container_is_frozen_while_the_engine_copies_it(tags):
    tag = tag_name("frozen")
    tags.append(tag)
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        # A thread of the kernel's notes the time every 2 ms, and 50 MB give the engine work.
        sb.run(textwrap.dedent('''
            import os, threading, time
            with open("/app/ballast", "wb") as f:
                f.write(os.urandom(50 << 20))
            ticks = []
            def tick():
                while len(ticks) < 200_000:
                    ticks.append(time.time()); time.sleep(0.002)
            threading.Thread(target=tick, daemon=True).start()
            time.sleep(0.3)
        '''))
        started = time.time()
        sb.snapshot(tag)
        ended = time.time()
        gap = float(sb.run(f"window = [t for t in ticks if {started} - 0.5 < t < {ended} + 0.5]\n"
                           f"print(max(b - a for a, b in zip(window, window[1:])))").text)
    took = ended - started
    # Unfrozen, the thread would tick every few ms; frozen, it stops for most of the commit.
    assert gap >= 0.5 * took and gap > 0.05, (gap, took)
