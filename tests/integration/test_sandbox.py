"""The public API end to end on a real engine."""

import hashlib
import threading
import time

import pytest
import requests
from PIL.Image import Image

import pybox
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE


def test_readme_hello_world():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        assert sb.run("print('Hello, world!')").text == "Hello, world!"


def test_state_is_kept_between_runs(sandbox):
    sandbox.run("counter = 41")
    assert sandbox.run("counter += 1; print(counter)").text == "42"


def test_result_fields(sandbox):
    r = sandbox.run("import sys; print('out'); print('err', file=sys.stderr); 6 * 7")
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert r.text == "out\n42"
    assert r.data[-1]["text/plain"] == "42"
    assert isinstance(r.execution_count, int) and r.execution_count > 0
    assert 0 < r.duration < 10
    assert r.error is None


def test_two_kernels_have_own_state_and_share_files(sandbox):
    with sandbox.kernel() as first, sandbox.kernel() as second:
        first.run("secret = 'only in first'")
        with pytest.raises(pybox.ExecutionError) as info:
            second.run("secret")
        assert info.value.ename == "NameError"
        first.run("open('shared.txt', 'w').write('from first')")
        assert second.run("print(open('/app/shared.txt').read())").text == "from first"


def test_streaming_is_incremental(sandbox):
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.4)"
    arrivals = []
    execution = sandbox.submit(code)
    for chunk in execution.stream(timeout=30):
        arrivals.append((time.monotonic(), chunk))
    text = "".join(chunk for _, chunk in arrivals)
    assert text == "0\n1\n2\n3\n"
    assert len(arrivals) >= 4
    # Output arrives as it is printed, not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 1.0
    assert execution.result().stdout == text  # immediate once streamed


def test_events_are_typed(sandbox):
    execution = sandbox.submit("import sys\nprint('a')\nprint('b', file=sys.stderr)\n1 + 1")
    events = list(execution.events(timeout=30))
    kinds = [type(e) for e in events]
    assert kinds == [pybox.Stdout, pybox.Stderr, pybox.ExecuteResult]
    assert events[2].data["text/plain"] == "2"


def test_plot_comes_back_as_image(sandbox):
    r = sandbox.run(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(4, 3), dpi=50)\n"
        "ax.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.show()"
    )
    assert len(r.images) == 1
    image = r.images[0]
    assert isinstance(image, Image)
    width, height = image.size  # the inline backend crops to the drawn area
    assert 150 <= width <= 200 and 110 <= height <= 150


def test_ten_megabytes_of_stdout_arrive_byte_exact(sandbox):
    code = (
        "import sys\n"
        "for i in range(170_000):\n"
        "    sys.stdout.write(f'{i:08d}' + 'abcdefghij' * 5 + 'xyz\\n')\n"
    )
    expected = "".join(f"{i:08d}" + "abcdefghij" * 5 + "xyz\n" for i in range(170_000))
    assert len(expected) > 10_000_000
    r = sandbox.run(code, timeout=120, max_output=None)  # all of it (the default keeps 1,000,000 characters)
    assert len(r.stdout) == len(expected)
    assert hashlib.sha256(r.stdout.encode()).hexdigest() == hashlib.sha256(expected.encode()).hexdigest()


def test_user_error_raises_execution_error(sandbox):
    with pytest.raises(pybox.ExecutionError) as info:
        sandbox.run("print('before')\nraise ValueError('bad value')")
    error = info.value
    assert error.ename == "ValueError"
    assert error.evalue == "bad value"
    assert "\x1b[" not in error.traceback
    assert "raise ValueError('bad value')" in error.traceback
    assert error.result.stdout == "before\n"


def test_check_false_returns_error_in_result(sandbox):
    r = sandbox.run("1 / 0", check=False)
    assert r.error is not None and r.error.ename == "ZeroDivisionError"


def test_timeout_interrupts_and_keeps_state(sandbox):
    sandbox.run("kept = 'still here'")
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionTimeout) as info:
        sandbox.run("import time\nprint('partial', flush=True)\ntime.sleep(60)", timeout=1)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, TimeoutError)
    assert info.value.interrupted and not info.value.restarted
    assert info.value.result.stdout == "partial\n"
    assert sandbox.run("print(kept)").text == "still here"


def test_code_ignoring_sigint_is_restarted(fresh_sandbox):
    fresh_sandbox.run("lost = 1")
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionTimeout) as info:
        fresh_sandbox.run(
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(120)", timeout=1
        )
    assert time.monotonic() - started < 15
    assert info.value.interrupted and info.value.restarted
    assert fresh_sandbox.run("print('alive')").text == "alive"
    with pytest.raises(pybox.ExecutionError):
        fresh_sandbox.run("lost")  # restarted: state is gone


def test_kernel_death_is_reported_quickly(fresh_sandbox):
    started = time.monotonic()
    with pytest.raises(pybox.KernelDied) as info:
        fresh_sandbox.run("import os\nos._exit(3)", timeout=60)
    assert time.monotonic() - started < 5
    assert "exited with code 3" in info.value.reason
    assert fresh_sandbox.run("print('back')", timeout=60).text == "back"


def test_cancel_from_another_thread(sandbox):
    execution = sandbox.submit("import time\ntime.sleep(30)")
    threading.Timer(0.5, execution.cancel).start()
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionError) as info:
        execution.result(timeout=20)
    assert info.value.ename == "KeyboardInterrupt"
    assert time.monotonic() - started < 5


def test_gateway_refuses_requests_without_the_token(sandbox):
    # A remote sandbox's gateway speaks TLS with its own certificate (pybox.tls; its
    # pinning is test_docker_remote's): here only the token matters.
    scheme, verify = ("https", False) if sandbox.gateway_certificate is not None else ("http", True)
    base = f"{scheme}://{sandbox.host}:{sandbox.port}"
    assert requests.get(f"{base}/api/kernels", timeout=5, verify=verify).status_code in (401, 403)
    wrong = {"Authorization": "token not-the-token"}
    assert requests.get(f"{base}/api/kernels", headers=wrong, timeout=5, verify=verify).status_code in (401, 403)
    right = {"Authorization": f"token {sandbox.token}"}
    assert requests.get(f"{base}/api/kernels", headers=right, timeout=5, verify=verify).status_code == 200


def test_websocket_refuses_connections_without_the_token(sandbox):
    import ssl

    import websocket

    kernel_id = sandbox.default_kernel.id
    scheme = "wss" if sandbox.gateway_certificate is not None else "ws"
    url = f"{scheme}://{sandbox.host}:{sandbox.port}/api/kernels/{kernel_id}/channels"
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url, timeout=5, sslopt={"cert_reqs": ssl.CERT_NONE})


def test_code_runs_as_non_root(sandbox):
    assert sandbox.run("import os; print(os.getuid())").text != "0"
    assert sandbox.run("import os; print(os.getcwd())").text == "/app"


def test_gateway_finds_kernelspecs_without_importing_ipython(sandbox):
    # The stock KernelSpecManager imports IPython in the gateway (~45 ms of CPU and ~2.6 MiB
    # per sandbox) to find IPython's directory, which it then makes in the gateway's home;
    # pybox_gateway_config.PyboxKernelSpecManager looks where the kernelspecs are instead.
    # The home is the sandbox group's to traverse: the directory's absence shows.
    assert sandbox.run("import os; print(os.path.exists('/var/lib/pybox/.ipython'))").text == "False"


def test_kernel_connect_attaches_to_a_running_sandbox(sandbox):
    with pybox.Kernel.connect(sandbox.host, sandbox.port, sandbox.token,
                              certificate=sandbox.gateway_certificate) as kernel:
        assert kernel.run("print(2 + 3)").text == "5"


def test_bad_image_raises_image_not_found():
    with pytest.raises(pybox.ImageNotFound) as info:
        pybox.Sandbox(image="pybox-no-such-image:0", backend=BACKEND).start()
    assert "pybox-no-such-image:0" in str(info.value)


def test_stop_removes_the_container():
    sb = pybox.Sandbox(image=IMAGE, backend=BACKEND).start()
    container_id = sb.id
    backend = get_plugins().backend(BACKEND)()
    assert backend.inspect(container_id).running
    sb.stop()
    sb.stop()  # idempotent
    assert backend.inspect(container_id).status == "removed"
    with pytest.raises(pybox.SandboxClosed):
        sb.run("1")
    backend.close()
