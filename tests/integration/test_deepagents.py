"""PyboxSandbox against LangChain deep agents' real sandbox backend protocol, and inside a
real deep agent graph whose chat model is LangChain's scripted fake (no network)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("deepagents")

from deepagents import create_deep_agent  # noqa: E402
from deepagents.backends.protocol import SandboxBackendProtocol, execute_accepts_timeout  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402

import pybox  # noqa: E402
from pybox.integrations.deepagents import PyboxSandbox  # noqa: E402

from .conftest import BACKEND, IMAGE  # noqa: E402


@pytest.fixture(scope="module")
def backend(sandbox):
    return PyboxSandbox(sandbox)


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def exists(backend, path):
    return backend.execute(f"test -e {path}").exit_code == 0


def test_it_is_a_sandbox_backend_of_the_protocol(backend, sandbox):
    assert isinstance(backend, SandboxBackendProtocol)
    assert execute_accepts_timeout(PyboxSandbox)
    assert backend.id == sandbox.id


def test_execute_returns_combined_output_and_exit_code(backend):
    r = backend.execute("echo out; echo err >&2; echo again; exit 3")
    assert (r.output, r.exit_code, r.truncated) == ("out\nerr\nagain\n", 3, False)
    r = backend.execute("pwd; id -un; cat")  # stdin is closed: cat ends at once
    assert (r.output, r.exit_code) == ("/app\nsandbox\n", 0)
    assert backend.execute("kill -9 $$").exit_code == 137
    assert backend.execute("   ").exit_code == 1


def test_output_past_the_cap_is_cut(sandbox):
    backend = PyboxSandbox(sandbox, max_output_bytes=1000)
    r = backend.execute("head -c 5000 /dev/zero | tr '\\0' a")
    assert r.truncated and r.output.startswith("a" * 1000 + "\n") and "truncated at 1000 bytes" in r.output
    assert r.exit_code == 0


def test_a_command_past_its_timeout_is_killed_with_its_children(backend):
    backend.execute("rm -f /app/late /app/background-done")
    started = time.monotonic()
    r = backend.execute("echo start; (sleep 2; touch /app/late) & sleep 60", timeout=1)
    assert time.monotonic() - started < 30
    assert r.exit_code == 124 and r.output.startswith("start\n") and "timed out after 1 seconds" in r.output
    # A finished command's background processes live on; a timed-out one's do not.
    assert backend.execute("(sleep 1; touch /app/background-done) &").exit_code == 0
    assert wait_for(lambda: exists(backend, "/app/background-done"))
    assert not exists(backend, "/app/late")
    assert backend.execute("echo still usable").output == "still usable\n"


def test_files_round_trip_anywhere_the_sandbox_user_may_write(backend):
    blob = bytes(range(256)) * 100
    answers = backend.upload_files([("/app/deep/er/data.bin", blob), ("/tmp/elsewhere.txt", b"tmp")])
    assert [a.error for a in answers] == [None, None]
    got = backend.download_files(["/app/deep/er/data.bin", "/tmp/elsewhere.txt"])
    assert [(g.content, g.error) for g in got] == [(blob, None), (b"tmp", None)]
    assert backend.execute("stat -c %U /app/deep/er/data.bin").output == "sandbox\n"
    assert not exists(backend, "/app/.pybox-transfer"), "staging is cleaned up"


def test_file_errors_are_the_protocols_codes_each_on_its_own(backend):
    backend.execute("mkdir -p /app/adir && echo keep > /app/adir/inside && echo f > /app/afile && mkfifo /app/fifo")
    answers = backend.upload_files([
        ("relative.txt", b"x"), ("/etc/pybox.txt", b"x"), ("/app/adir", b"x"),
        ("/app/afile/below", b"x"), ("/app/fine.txt", b"fine"),
    ])
    assert [a.error for a in answers] == ["invalid_path", "permission_denied", "is_directory", "invalid_path", None]
    assert backend.execute("cat /app/adir/inside").output == "keep\n", "a directory is never replaced"
    got = backend.download_files(["/app/missing", "/app/adir", "/etc/shadow", "/app/fine.txt", "no/slash",
                                  "/app/fifo"])
    assert [g.error for g in got] == ["file_not_found", "is_directory", "permission_denied", None, "invalid_path",
                                      "not a regular file"]
    assert [g.content for g in got][3] == b"fine" and got[0].path == "/app/missing"


def test_downloads_are_capped(sandbox):
    backend = PyboxSandbox(sandbox, max_download_bytes=1000)
    backend.execute("head -c 1001 /dev/zero > /app/big")
    (big,) = backend.download_files(["/app/big"])
    assert big.content is None and "larger than 1000 bytes" in big.error
    (endless,) = backend.download_files(["/dev/zero"])
    assert endless.error == "not a regular file"


def test_the_operations_deepagents_builds_on_it(backend):
    assert backend.write("/app/notes/todo.md", "one\ntwo\n").error is None
    assert backend.read("/app/notes/todo.md").file_data["content"] == "one\ntwo"
    big = "x" * 100_000  # large edits travel through upload_files to /tmp
    assert backend.edit("/app/notes/todo.md", "two", big).occurrences == 1
    assert backend.edit("/app/notes/todo.md", big, "three").occurrences == 1
    assert [m["line"] for m in backend.grep("three", "/app/notes").matches] == [2]
    assert [m["path"] for m in backend.glob("*.md", "/app/notes").matches] == ["/app/notes/todo.md"]
    assert "/app/notes/todo.md" in [e["path"] for e in backend.ls("/app/notes").entries]


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model answering with fixed tool calls; tools bound as-is."""

    def bind_tools(self, tools, **kwargs):
        return self


def tool_call(name: str, number: int, **args) -> dict:
    return {"name": name, "args": args, "id": f"call_{number}", "type": "tool_call"}


def test_a_deep_agent_writes_runs_and_reads_in_the_sandbox(backend):
    model = ScriptedChatModel(messages=iter([
        AIMessage(content="", tool_calls=[tool_call("write_file", 1, file_path="/app/hello.py",
                                                    content="print('hello from the sandbox')\n")]),
        AIMessage(content="", tool_calls=[tool_call("execute", 2, command="python3 /app/hello.py && exit 3")]),
        AIMessage(content="", tool_calls=[tool_call("read_file", 3, file_path="/app/nope.txt")]),
        AIMessage(content="done"),
    ]))
    agent = create_deep_agent(model=model, backend=backend)
    messages = agent.invoke({"messages": [{"role": "user", "content": "say hello"}]})["messages"]
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.status for m in tools] == ["success", "success", "error"]
    assert "hello from the sandbox" in tools[1].content and "exit code 3" in tools[1].content
    assert tools[1].artifact["exit_code"] == 3
    assert "file_not_found" in tools[2].content
    assert messages[-1].content == "done"


def test_what_it_refuses_and_a_closed_sandbox(sandbox):
    with pytest.raises(pybox.InvalidArgument, match="not both"):
        PyboxSandbox(sandbox, image=IMAGE)
    with pytest.raises(pybox.InvalidArgument, match="timeout"):
        PyboxSandbox(sandbox, timeout=-1)
    with pytest.raises(pybox.InvalidArgument, match="max_output"):
        PyboxSandbox(sandbox, max_output_bytes=10_000_000)
    with PyboxSandbox(image=IMAGE, backend=BACKEND) as own:
        assert own.execute("echo hi").output == "hi\n"
    assert own.sandbox.closed
    with pytest.raises(pybox.SandboxClosed):
        own.execute("echo hi")
    (answer,) = own.upload_files([("/app/x", b"x")])
    assert answer.error.startswith("upload failed")
