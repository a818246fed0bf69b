"""`pybox mcp` driven by the MCP SDK's own client, over stdio and streamable HTTP: a
real server subprocess, real sandboxes, and no container left behind however the
client or the server ends."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from contextlib import asynccontextmanager

import anyio
import pytest

mcp = pytest.importorskip("mcp", reason="pybox mcp needs the mcp extra (pip install 'pybox[mcp]')")

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402
from PIL import Image  # noqa: E402

from pybox.backend import LABEL  # noqa: E402
from pybox.ownership import PID_LABEL  # noqa: E402
from pybox.plugins import get_plugins  # noqa: E402

from .conftest import BACKEND, IMAGE  # noqa: E402

# No test needs the internet: the sandboxes get no network at all.
SERVER = [sys.executable, "-m", "pybox", "mcp", "--backend", BACKEND, "--image", IMAGE, "--network", "none"]
TOOLS = {"execute_ipython_cell", "install_package", "reset"}


@pytest.fixture(scope="module")
def engine():
    backend = get_plugins().backend(BACKEND)()
    yield backend
    backend.close()


def containers_of(engine, pid: int) -> list[str]:
    return engine.list_containers({LABEL: "1", PID_LABEL: str(pid)})


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def server_pid() -> int:
    """The `pybox mcp` child of this process (stdio_client hides its process)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = handle.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            continue
        if parent == me and b"pybox" in cmdline and b"mcp" in cmdline:
            found.append(int(entry))
    assert len(found) == 1, f"expected one pybox mcp child, found {found}"
    return found[0]


@asynccontextmanager
async def stdio_session(*extra: str):
    params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], *extra], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def cell(session: ClientSession, code: str, **arguments):
    return await session.call_tool("execute_ipython_cell", {"code": code, **arguments})


def text_of(result) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


async def check_a_session(session: ClientSession) -> None:
    """What every transport must do: state across calls, errors, images, timeouts, reset."""
    result = await cell(session, "x = 41\nprint('hello')\nx + 1")
    assert not result.is_error and text_of(result) == "hello\n42"
    assert text_of(await cell(session, "print(x)")) == "41"

    result = await cell(session, "print('before')\n1/0")
    assert result.is_error
    text = text_of(result)
    assert text.startswith("before") and "ZeroDivisionError" in text and "\x1b[" not in text

    result = await cell(session, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert not result.is_error
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    picture = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert picture.format == "PNG" and picture.size[0] > 100

    result = await cell(session, "import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=1)
    assert result.is_error
    assert "timed out after 1 s" in text_of(result) and "started" in text_of(result)
    assert text_of(await cell(session, "print(x)")) == "41"  # interrupted, state kept: the next call works

    assert (await session.call_tool("reset", {})).is_error is False
    result = await cell(session, "x")
    assert result.is_error and "NameError" in text_of(result)


def test_stdio_tools_state_errors_images_timeout_reset_and_nothing_left(engine):
    async def main():
        async with stdio_session() as session:
            pid = server_pid()
            assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
            assert containers_of(engine, pid) == []  # started lazily
            await check_a_session(session)
            assert len(containers_of(engine, pid)) == 1  # one sandbox for the whole session

            result = await cell(session, "print('y' * 20000)", max_output_chars=1000)
            text = text_of(result)
            assert "19,000 characters truncated (max_output_chars=1,000)" in text and len(text) < 1100

            chunks = []

            async def progress(done, total, message):
                chunks.append((done, message))

            code = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)"
            result = await session.call_tool("execute_ipython_cell", {"code": code}, progress_callback=progress)
            assert text_of(result) == "line 0\nline 1\nline 2"
            await anyio.sleep(0.2)  # notifications race the result
            assert "".join(message for _, message in chunks) == "line 0\nline 1\nline 2\n"
            assert [done for done, _ in chunks] == sorted({done for done, _ in chunks})  # increasing
        return pid

    pid = anyio.run(main)
    assert wait_until(lambda: containers_of(engine, pid) == [], 10)


def make_wheel(directory) -> str:
    """A tiny pure-Python wheel (installable with no network)."""
    name = "pyboxmcpdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(directory / name, "w") as wheel:
        wheel.writestr("pyboxmcpdemo/__init__.py", "VALUE = 42\n")
        info = "pyboxmcpdemo-1.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: pyboxmcpdemo\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", f"pyboxmcpdemo/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n"
                                         f"{info}/RECORD,,\n")
    return name


def test_file_tools_and_install_package(engine, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    wheel = make_wheel(shared)
    (tmp_path / "secret.txt").write_text("not for the sandbox")

    async def main():
        async with stdio_session("--allowed-dir", str(shared)) as session:
            names = {tool.name for tool in (await session.list_tools()).tools}
            assert names == TOOLS | {"upload_file", "download_file"}
            result = await session.call_tool("upload_file", {"relpath": f"wheels/{wheel}",
                                                             "local_path": str(shared / wheel)})
            assert not result.is_error, text_of(result)
            result = await session.call_tool("install_package", {"package_name": f"/app/wheels/{wheel}"})
            assert not result.is_error and "Successfully installed pyboxmcpdemo-1.0" in text_of(result)
            assert text_of(await cell(session, "import pyboxmcpdemo\npyboxmcpdemo.VALUE")) == "42"
            assert text_of(await cell(session, "[n for n in dir() if 'pybox' in n]")) == "['pyboxmcpdemo']"

            result = await session.call_tool("install_package", {"package_name": "/app/no-such.whl"})
            assert result.is_error and "pip install /app/no-such.whl failed" in text_of(result)
            result = await session.call_tool("install_package", {"package_name": "--index-url=http://x"})
            assert result.is_error and "package spec" in text_of(result)

            await cell(session, "open('out.txt', 'w').write('made in the sandbox')")
            result = await session.call_tool("download_file", {"relpath": "out.txt",
                                                               "local_path": str(shared / "got" / "out.txt")})
            assert not result.is_error, text_of(result)
            assert (shared / "got" / "out.txt").read_text() == "made in the sandbox"

            for tool in ("upload_file", "download_file"):  # outside the allowed directory: refused
                result = await session.call_tool(tool, {"relpath": "x", "local_path": str(tmp_path / "secret.txt")})
                assert result.is_error and "outside the directories this server allows" in text_of(result)
            result = await session.call_tool("download_file", {"relpath": "../etc/passwd",
                                                               "local_path": str(shared / "passwd")})
            assert result.is_error and "outside /app" in text_of(result)
            assert not (shared / "passwd").exists()

    anyio.run(main)


CLIENT = textwrap.dedent("""
    import os, sys, anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    async def main():
        params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("execute_ipython_cell", {"code": "print('up')"})
                print(result.content[0].text, flush=True)
                await anyio.sleep(3600)  # until killed

    anyio.run(main)
""")


def test_a_killed_client_leaves_no_container(engine):
    client = subprocess.Popen([sys.executable, "-c", CLIENT, *SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "up"
        pid = server_pid_of(client.pid)
        [container] = containers_of(engine, pid)
        client.send_signal(signal.SIGKILL)
        client.wait()
        # The server reads EOF on stdin: it removes the sandbox and exits.
        assert wait_until(lambda: engine.inspect(container).status == "removed", 30)
        assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    finally:
        client.kill()
        client.wait()


def server_pid_of(parent: int) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if handle.read().rsplit(")", 1)[1].split()[1] == str(parent):
                        return int(entry)
            except OSError:
                continue
    raise AssertionError(f"process {parent} has no child")


def test_a_sigkilled_server_is_reaped_by_the_next_start(engine):
    orphans = []

    async def first():
        async with stdio_session() as session:
            assert text_of(await cell(session, "print('up')")) == "up"
            pid = server_pid()
            orphans.extend(containers_of(engine, pid))
            os.kill(pid, signal.SIGKILL)  # no chance to clean up

    try:
        anyio.run(first)
    except Exception:  # the session may break under the client: expected
        pass
    [orphan] = orphans
    assert engine.inspect(orphan).running  # left behind by the SIGKILL

    async def second():
        async with stdio_session() as session:  # its first sandbox start runs the reaper
            assert text_of(await cell(session, "print('again')")) == "again"
            assert await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: engine.inspect(orphan).status == "removed", 30))

    anyio.run(second)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def http_server(engine):
    port = free_port()
    token = "test-token-" + os.urandom(8).hex()
    process = subprocess.Popen([*SERVER, "--transport", "http", "--port", str(port)],
                               env={**os.environ, "PYBOX_MCP_TOKEN": token}, stderr=subprocess.PIPE, text=True)
    banner = process.stderr.readline()
    assert f"http://127.0.0.1:{port}/mcp" in banner, banner
    url = f"http://127.0.0.1:{port}/mcp"
    assert wait_until(lambda: _answers(port), 20)
    yield process, url, token
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert containers_of(engine, process.pid) == []


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@asynccontextmanager
async def http_session(url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def test_http_needs_the_token(http_server):
    import urllib.error
    import urllib.request

    _, url, token = http_server
    for header in (None, "Bearer wrong", f"Basic {token}"):
        request = urllib.request.Request(url, data=b"{}", method="POST",
                                         headers={"Authorization": header} if header else {})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"


def test_http_sessions_each_get_a_sandbox_removed_when_they_end(http_server, engine):
    process, url, token = http_server

    async def main():
        async with http_session(url, token) as first:
            assert {tool.name for tool in (await first.list_tools()).tools} == TOOLS
            await check_a_session(first)
            async with http_session(url, token) as second:
                await cell(first, "secret = 'first'")
                result = await cell(second, "secret")  # another session: another sandbox
                assert result.is_error and "NameError" in text_of(result)
                assert len(containers_of(engine, process.pid)) == 2
            # The second client closed its session (DELETE): its sandbox goes (after the answer).
            assert await anyio.to_thread.run_sync(lambda: wait_until(
                lambda: len(containers_of(engine, process.pid)) == 1, 10))
            assert text_of(await cell(first, "secret")) == "'first'"

    anyio.run(main)
    assert wait_until(lambda: containers_of(engine, process.pid) == [], 10)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_http_server_stopped_with_a_session_open_removes_its_sandbox(http_server, engine):
    process, url, token = http_server

    async def main():
        async with http_session(url, token) as session:
            assert text_of(await cell(session, "print('up')")) == "up"
            assert len(containers_of(engine, process.pid)) == 1
            process.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(lambda: process.wait(30))

    try:
        anyio.run(main)
    except Exception:  # the server went away under the open session: expected
        pass
    assert containers_of(engine, process.pid) == []


def test_a_sigtermed_stdio_server_removes_its_sandbox(engine):
    stopped = []

    async def main():
        async with stdio_session() as session:
            assert text_of(await cell(session, "print('up')")) == "up"
            pid = server_pid()
            [container] = containers_of(engine, pid)
            os.kill(pid, signal.SIGTERM)
            stopped.append(await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: engine.inspect(container).status == "removed", 20)))

    try:
        anyio.run(main)
    except Exception:  # the server went away under the open session: expected
        pass
    assert stopped == [True]


def test_a_pooled_server_hands_sessions_started_sandboxes_and_removes_them_all(engine):
    """`--pool 2`: sandboxes are started before any session asks; the session's first cell
    runs in one of them; when the client leaves, the pool's ready sandboxes go too."""
    seen = {}

    async def main():
        async with stdio_session("--pool", "2") as session:
            pid = server_pid()
            # The pool fills before any tool call (nothing else would start a sandbox now).
            seen["filled"] = await anyio.to_thread.run_sync(lambda: wait_until(
                lambda: len(containers_of(engine, pid)) >= 2, 120))
            before = set(containers_of(engine, pid))
            assert text_of(await cell(session, "x = 41\nprint(x + 1)")) == "42"
            assert text_of(await cell(session, "print(x)")) == "41"  # one sandbox for the session
            seen["pid"] = pid
            seen["before"] = before
            seen["used"] = text_of(await cell(session, "import socket; print(socket.gethostname())"))

    anyio.run(main)
    assert seen["filled"]
    assert any(container.startswith(seen["used"]) for container in seen["before"]), (seen["used"], seen["before"])
    # The client left: the server removed the session's sandbox and the pool's ready ones.
    assert wait_until(lambda: containers_of(engine, seen["pid"]) == [], 60)
