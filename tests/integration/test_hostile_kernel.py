"""Code in a real sandbox attacks the client through the kernel: malformed messages sent
on the kernel's own iopub socket, image bombs, floods, cells that ignore SIGINT, broken
websockets. The calling process must stay untouched and responsive, and the kernel
usable. (Frames a replaced gateway could send are the unit tests' job:
tests/unit/test_channel.py, test_hostile_gateway.py, test_fuzz_channel.py.)"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import pybox
from pybox import ChannelError, ExecutionTimeout, KernelError
from pybox.freeact import CodeExecutor, ExecutionLog, Workspace
from pybox.kernel import channel as channel_module

from .conftest import BACKEND, IMAGE


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# Sends, on the kernel's own iopub socket with the running cell as parent, messages no
# honest kernel sends. jupyter_client packs a str content as is: any JSON gets through.
MALFORMED = r'''
k = get_ipython().kernel
parent = k.get_parent()
send = lambda *a, **kw: k.session.send(k.iopub_socket, *a, **kw)
send("stream", content={"name": "stdout", "text": 5}, parent=parent)
send("stream", content='["content", "a", "list"]', parent=parent)
send("stream", content='"content a string"', parent=parent)
send("stream", content={"name": "stdout", "text": "wrong parent\n"}, parent={"msg_id": ["a", "list"]})
send("stream", content={"name": "stdout", "text": "int parent\n"}, parent={"msg_id": 7})
send("display_data", content={"data": ["not a bundle"], "metadata": {}}, parent=parent)
send("display_data", content={"data": {"image/png": "!!not base64!!", "text/plain": "img"}}, parent=parent)
send("error", content={"ename": ["L"], "evalue": {"a": 1}, "traceback": [1, None]}, parent=parent)
send("status", content={"execution_state": {"idle": True}}, parent=parent)
send("execute_input", content={"execution_count": "one"}, parent=parent)
send("execute_reply", content={"status": ["ok"], "payload": "x"}, parent={"msg_id": "not-ours"})
send("no_such_message_type", content={"x": 1}, parent=parent)
print("end")
'''


def test_malformed_messages_from_the_kernel_are_dropped_and_the_kernel_stays_usable(sandbox):
    result = sandbox.run(MALFORMED, timeout=60, check=False)
    assert result.stdout.endswith("end\n")
    assert "wrong parent" not in result.stdout and "int parent" not in result.stdout
    assert result.images == []  # the undecodable image is refused, not raised
    assert {"image/png": "!!not base64!!", "text/plain": "img"} in result.data
    repr(result)
    assert sandbox.run("print(6 * 7)", timeout=60).text == "42"


IMAGE_BOMB = r'''
import base64, struct, zlib
from IPython.display import display
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
side = 50_000
z = zlib.compressobj(9)
row = b"\0" * (side + 1)
idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
print(len(png))
display({"image/png": base64.b64encode(png).decode(), "text/plain": "bomb"}, raw=True)
'''


def test_an_image_bomb_is_kept_as_data_and_never_decoded(sandbox, tmp_path):
    before = rss_mb()
    result = sandbox.run(IMAGE_BOMB, timeout=120)
    assert int(result.stdout) < 3_000_000  # under 3 MB of PNG for 2.5 gigapixels
    assert result.images == []
    assert "images=1" in repr(result)
    (bundle,) = result.data
    assert bundle["text/plain"] == "bomb" and len(bundle["image/png"]) > 1_000_000
    assert result.outputs[-1].image is None
    assert rss_mb() - before < 100


def test_freeact_logs_an_execution_with_an_image_bomb(sandbox, tmp_path):
    log = ExecutionLog(tmp_path / "log.jsonl")
    with sandbox.kernel() as kernel:
        executor = CodeExecutor(kernel, Workspace(tmp_path / "ws"), "attacker", log)
        result = executor.run(IMAGE_BOMB + "\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
                              timeout=120)
    assert len(result.image_paths) == 1  # the plot; the bomb is refused
    (record,) = [r for r in log.records() if "IHDR" in r["code"]]
    assert record["outputs"]["images"] == [str(result.image_paths[0])]


def test_the_default_max_output_bounds_a_flood_and_none_keeps_all(sandbox):
    flood = "import sys\n_ = sys.stdout.write('x' * 5_000_000)"
    kept = sandbox.run(flood, timeout=120)
    assert len(kept.stdout) < 1_000_200 and kept.truncated == 5_000_000 - 1_000_000
    assert len(sandbox.run(flood, timeout=120, max_output=None).stdout) == 5_000_000


# -- timeouts and cancel act on their own execution only ----------------------------------


def test_cancel_of_a_finished_execution_does_not_touch_the_next(sandbox):
    first = sandbox.submit("print('a')")
    assert first.result(timeout=60).stdout == "a\n"
    first.cancel()
    unread = sandbox.submit("print('unread')")
    deadline = time.monotonic() + 30
    while not unread.done and time.monotonic() < deadline:  # finished in the kernel; never read
        time.sleep(0.01)
    unread.cancel()
    result = sandbox.run("import time\ntime.sleep(1)\nprint('b')", timeout=60)
    assert result.stdout == "b\n" and result.error is None


def test_a_deadline_passing_in_the_queue_means_the_code_never_runs(sandbox):
    sandbox.run("import os\nif os.path.exists('queued-ran'): os.remove('queued-ran')")
    first = sandbox.submit("import time\ntime.sleep(3)\nprint('first')")
    queued = sandbox.submit("open('queued-ran', 'w').write('it ran')")
    with pytest.raises(ExecutionTimeout) as info:
        queued.result(timeout=0.5)
    assert (info.value.sent, info.value.started) == (False, False)
    assert first.result(timeout=60).stdout == "first\n"  # not interrupted
    assert sandbox.run("import os\nprint(os.path.exists('queued-ran'))").text == "False"


def test_a_cell_ignoring_sigint_is_restarted_even_when_nobody_waits(sandbox):
    with sandbox.kernel() as kernel:
        kernel.run("state = 1")
        execution = kernel.submit("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                  "time.sleep(120)")
        execution.events(timeout=1)  # arms the deadline; never iterated
        deadline = time.monotonic() + 1 + sandbox.interrupt_grace + 30
        while not execution.done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert execution.done
        with pytest.raises(ExecutionTimeout) as info:
            execution.result()
        assert info.value.interrupted and info.value.restarted
        assert kernel.run("print('state' in globals())", timeout=60).text == "False"


# -- a broken websocket ----------------------------------------------------------------------


def test_the_next_run_reconnects_a_dropped_websocket_and_keeps_the_state(sandbox):
    kernel = sandbox.default_kernel
    sandbox.run("kept = 'still here'")
    kernel._channel._sock.shutdown(socket.SHUT_RDWR)  # the connection dies under pybox
    deadline = time.monotonic() + 10
    while not kernel._channel.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sandbox.run("print(kept)", timeout=60).text == "still here"
    assert sandbox.default_kernel is kernel


def test_a_default_kernel_shut_down_behind_pybox_is_replaced(fresh_sandbox):
    sb = fresh_sandbox
    first = sb.default_kernel
    sb.run("x = 1")
    sb._gateway.delete_kernel(first.id)  # someone (the code itself could) shuts it down
    # The gateway keeps the websocket open: the code is sent and never starts; at its
    # deadline pybox asks the gateway, which no longer has the kernel.
    started = time.monotonic()
    with pytest.raises(KernelError, match="is gone"):
        sb.run("print(x)", timeout=2)
    assert time.monotonic() - started < 10
    assert sb.run("print('fresh')", timeout=60).text == "fresh"
    assert sb.default_kernel is not first and first.closed


def test_keepalive_ends_a_run_without_timeout_when_the_gateway_stops_answering(sandbox, monkeypatch):
    """A TCP proxy between the client and the real gateway stops forwarding, closing
    nothing (a half-open connection): run(timeout=None) ends with ChannelError."""
    monkeypatch.setattr(channel_module, "PING_INTERVAL", 0.5)
    monkeypatch.setattr(channel_module, "PONG_TIMEOUT", 1.0)
    proxy = _PausableProxy(sandbox.host, sandbox.port)
    try:
        with pybox.Kernel.connect("127.0.0.1", proxy.port, sandbox.token,
                                  certificate=sandbox.gateway_certificate) as kernel:
            assert kernel.run("print('through the proxy')").text == "through the proxy"
            execution = kernel.submit("import time\ntime.sleep(30)")
            time.sleep(0.5)
            proxy.pause()
            started = time.monotonic()
            with pytest.raises(ChannelError, match="sent nothing for"):
                execution.result(timeout=None)
            assert time.monotonic() - started < 0.5 + 1.0 + 3
            kernel.close(shutdown=False)
    finally:
        proxy.close()


class _PausableProxy:
    """Forwards 127.0.0.1:port to the gateway until pause(): then nothing moves and
    nothing is closed."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paused = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self) -> None:
        self.paused.set()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if self.paused.is_set():
                    self.paused.wait()
                    time.sleep(3600)
                dst.sendall(data)
        except OSError:
            return


def test_a_sandbox_made_with_max_output_none_keeps_everything():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, max_output=None) as sb:
        assert sb.max_output is None
        assert len(sb.run("print('y' * 3_000_000)", timeout=120).stdout) == 3_000_001


NESTED_FORK_ANSWER = '''
class Nested:
    # Unpickled in the fork: its answer to the client starts with a JSON nesting no
    # parser follows (the receiving kernel then prints its own list after it).
    def __reduce__(self):
        return (exec, ("import sys; sys.stdout.write('[' * 200000)",))
trap = Nested()
'''


def test_a_fork_answering_with_deeply_nested_json_raises_kernel_error(fresh_sandbox):
    # What the fork prints is parsed by the client: too deep a nesting is a KernelError
    # like any other answer that cannot be used, never a RecursionError from json.
    fresh_sandbox.run(NESTED_FORK_ANSWER)
    with pytest.raises(KernelError, match="fork"):
        fresh_sandbox.default_kernel.fork(timeout=60)
    assert fresh_sandbox.run("print('still here')").text == "still here"
