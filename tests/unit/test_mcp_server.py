"""The pure parts of `pybox mcp`: flag parsing (no MCP SDK needed), output shaping and
the HTTP guard's refusals (need the mcp extra; skipped without it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pybox
from pybox.cli import main, mcp_sandbox_options, parse_bind_flag, parse_env_flag, parse_network_flag, parser
from pybox.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]


# -- flags (no SDK needed) -----------------------------------------------------------------


def test_env_flags(monkeypatch):
    monkeypatch.setenv("FROM_HERE", "v1")
    assert parse_env_flag("KEY=a=b") == ("KEY", "a=b")
    assert parse_env_flag("EMPTY=") == ("EMPTY", "")
    assert parse_env_flag("FROM_HERE") == ("FROM_HERE", "v1")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InvalidArgument, match="NOT_SET_ANYWHERE is not set"):
        parse_env_flag("NOT_SET_ANYWHERE")
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        parse_env_flag("=value")


def test_bind_flags():
    assert parse_bind_flag("./data:data") == ("./data", "data")
    assert parse_bind_flag("/a:b:/app/c") == ("/a:b", "/app/c")  # the last colon splits
    for bad in ("data", ":data", "data:"):
        with pytest.raises(InvalidArgument, match="HOST_PATH:SANDBOX_PATH"):
            parse_bind_flag(bad)


def test_network_flags():
    assert parse_network_flag("none") == "none"
    assert parse_network_flag(" default ") == "default"
    assert parse_network_flag("pypi.org, 10.0.0.0/8") == ("pypi.org", "10.0.0.0/8")
    with pytest.raises(InvalidArgument, match="--network"):
        parse_network_flag(" , ")


def test_every_sandbox_option_is_a_flag(tmp_path, monkeypatch, fake_plugins):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    args = parser().parse_args(["mcp", "--backend", "fake", "--image", "my:img", "--network", "none",
                                "--memory", "512m", "--cpus", "1.5", "--pids", "64", "--bind", "data:in",
                                "--env", "A=1", "--env", "B=2", "--read-only"])
    options = mcp_sandbox_options(args)
    assert isinstance(options, pybox.SandboxOptions)
    assert (options.backend, options.image, options.network, options.read_only) == ("fake", "my:img", "none", True)
    assert options.limits == pybox.Limits(memory="512m", cpus=1.5, pids=64)
    assert dict(options.env) == {"A": "1", "B": "2"}
    assert [(b.host, b.container) for b in options.binds] == [(str(tmp_path / "data"), "/app/in")]
    defaults = mcp_sandbox_options(parser().parse_args(["mcp"]))
    assert defaults == pybox.SandboxOptions()  # no flag: pybox's own defaults


def test_bad_sandbox_flags_are_named(fake_plugins, capsys):
    with pytest.raises(InvalidArgument, match="memory limit"):
        mcp_sandbox_options(parser().parse_args(["mcp", "--memory", "lots"]))
    with pytest.raises(InvalidArgument, match="does not exist"):
        mcp_sandbox_options(parser().parse_args(["mcp", "--bind", "/no/such/dir:x"]))


def test_a_negative_pool_is_refused_before_anything_starts(capsys):
    pytest.importorskip("mcp")
    from pybox.cli import main

    assert main(["mcp", "--pool", "-1"]) != 0
    assert "--pool must be 0 (no pool) or a number of sandboxes, got -1" in capsys.readouterr().err


def test_core_never_imports_the_mcp_sdk():
    for path in sorted((ROOT / "pybox").rglob("*.py")):
        if path.name == "mcp_server.py":
            continue
        assert not re.search(r"^\s*(from|import) mcp\b", path.read_text(), re.M), path


def test_the_mcp_adapter_uses_public_api_only():
    source = (ROOT / "pybox" / "mcp_server.py").read_text()
    assert not re.search(r"\._[a-z]", source.replace("self._", "")), "private attribute of another object"
    imported = set(re.findall(r"^from (pybox[\w.]*) import", source, re.M))
    assert imported <= {"pybox.errors"}


# -- with the SDK ----------------------------------------------------------------------------


@pytest.fixture
def mcp_server():
    pytest.importorskip("mcp", reason="needs the mcp extra (pip install 'pybox[mcp]')")
    from pybox import mcp_server

    return mcp_server


def test_truncation_keeps_both_ends_and_says_how_much_is_gone(mcp_server):
    assert mcp_server.truncate("short", 100) == "short"
    text = "A" * 600 + "B" * 600
    cut = mcp_server.truncate(text, 200)
    assert cut.startswith("A" * 100) and cut.endswith("B" * 100)
    assert "[... 1,000 characters truncated (max_output_chars=200) ...]" in cut


def result_of(*outputs):
    result = pybox.Result()
    for output in outputs:
        result.add(output)
    return result


def test_cell_text_is_every_stream_in_order_without_ansi(mcp_server):
    result = result_of(pybox.Stdout("\x1b[31mred\x1b[0m\n"), pybox.Stderr("warn\n"),
                       pybox.ExecuteResult({"text/plain": "42"}, {}, 1))
    shaped = mcp_server.cell_result(result, 1000)
    assert not shaped.is_error and [block.text for block in shaped.content] == ["red\nwarn\n42"]
    failed = mcp_server.cell_result(result, 1000, error="Traceback: boom")
    assert failed.is_error and failed.content[0].text == "red\nwarn\n42\n\nTraceback: boom"
    assert mcp_server.cell_result(result_of(), 1000).content == []


def test_images_become_png_blocks(mcp_server):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(buffer, format="JPEG")
    result = result_of(pybox.DisplayData({"image/jpeg": base64.b64encode(buffer.getvalue()).decode(),
                                          "text/plain": "<Figure>"}))
    [block] = mcp_server.cell_result(result, 1000).content  # the image's text/plain is not repeated
    assert block.type == "image" and block.mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(block.data))).size == (4, 3)


def test_pip_code_passes_the_spec_as_data(mcp_server):
    code = mcp_server.pip_install_code("x'); import os; os.system('boom")
    assert "__pybox_pip(\"x'); import os; os.system('boom\")" in code
    compile(code, "<pip>", "exec")


def test_local_paths_are_confined_to_the_allowed_dirs(mcp_server, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "f").write_text("x")
    (allowed / "out").symlink_to(tmp_path)
    assert mcp_server.allowed_path(str(allowed / "f"), [allowed], must_exist=True) == allowed / "f"
    for path, words in ((str(tmp_path / "f"), "outside"), (str(allowed / "out" / "f"), "outside"),
                        (str(allowed / ".." / "f"), "outside"), ("relative/f", "absolute"),
                        (str(allowed / "missing"), "does not exist")):
        with pytest.raises(PermissionError, match=words):
            mcp_server.allowed_path(path, [allowed], must_exist=True)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.com", False)])
def test_loopback(mcp_server, host, loopback):
    assert mcp_server.is_loopback(host) is loopback


def test_http_refuses_a_non_loopback_bind_unless_allowed(mcp_server, fake_plugins, capsys):
    assert main(["mcp", "--transport", "http", "--host", "0.0.0.0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_http_guard_refuses_missing_and_wrong_tokens(mcp_server):
    import anyio

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = mcp_server.HttpGuard(app, server=None, token="s3cret")

    async def call(headers):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
        await guard(scope, None, send)
        return sent[0]["status"]

    async def run():
        assert await call([]) == 401
        assert await call([(b"authorization", b"Bearer wrong")]) == 401
        assert await call([(b"authorization", b"s3cret")]) == 401
        assert await call([(b"authorization", b"Bearer s3cret")]) == 200

    anyio.run(run)
    assert reached == ["/mcp"]


def test_without_the_extra_pybox_mcp_names_it(monkeypatch, capsys, fake_plugins):
    import sys

    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")] + ["mcp"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the SDK were not installed
    monkeypatch.delitem(sys.modules, "pybox.mcp_server", raising=False)
    monkeypatch.delattr(pybox, "mcp_server", raising=False)
    assert main(["mcp"]) == 1
    assert "pip install 'pybox[mcp]'" in capsys.readouterr().err
