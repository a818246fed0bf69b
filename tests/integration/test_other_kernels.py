"""Kernels other than Python in the sandbox image: the bash kernel (bash_kernel), a kernel
the image lacks, read-only roots and network policies with it, and `pybox build --kernel`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import pybox

from .conftest import BACKEND, IMAGE

KERNEL_TEST_TAG = "pybox-kernels-test:latest"


@pytest.fixture(scope="module")
def bash(sandbox):
    """One bash kernel in the module's sandbox (each test leaves it usable)."""
    with sandbox.kernel(name="bash") as kernel:
        yield kernel


def test_the_image_has_python_and_bash(sandbox):
    assert {"python3", "bash"} <= set(sandbox.kernel_names())


def test_bash_runs_as_the_sandbox_user_in_app(bash):
    assert bash.run("id -un; id -u; pwd").text == "sandbox\n1000\n/app"
    assert (bash.name, bash.language) == ("bash", "bash")


def test_bash_keeps_state_and_shares_files_with_python(sandbox, bash):
    bash.run("greeting=hello; cd /app")
    assert bash.run('echo "$greeting"').text == "hello"
    sandbox.run("open('from-python.txt', 'w').write('written by python')")
    assert bash.run("cat from-python.txt").text == "written by python"
    bash.run("echo written by bash > from-bash.txt")
    assert sandbox.run("print(open('from-bash.txt').read().strip())").text == "written by bash"


def test_bash_output_streams_while_it_runs(bash):
    execution = bash.submit("for i in 1 2 3; do echo line $i; sleep 0.4; done")
    started = time.monotonic()
    arrivals = []
    for chunk in execution.stream(timeout=30):
        arrivals.append((time.monotonic() - started, chunk))
    assert "".join(chunk for _, chunk in arrivals) == "line 1\nline 2\nline 3\n"
    assert arrivals[0][0] < 0.6 < arrivals[-1][0]  # the first line came before the loop ended
    assert execution.result().stdout == "line 1\nline 2\nline 3\n"


def test_bash_stderr_arrives_on_stdout(bash):
    """bash_kernel runs bash on a pseudo-terminal: stdout and stderr are one stream."""
    result = bash.run("echo to-stderr >&2; echo to-stdout")
    assert (result.stdout, result.stderr) == ("to-stderr\nto-stdout\n", "")


def test_a_failing_last_command_is_an_execution_error(bash):
    with pytest.raises(pybox.ExecutionError) as info:
        bash.run("echo before; ls /nonexistent")
    error = info.value
    assert (error.ename, error.evalue) == ("", "2")  # bash_kernel: no name, the exit status
    assert str(error) == "the kernel reported an error: 2"
    assert "before\n" in error.result.stdout and "No such file or directory" in error.result.stdout
    result = bash.run("false", check=False)
    assert result.error is not None and result.error.evalue == "1"
    assert bash.run("false; echo only the last status counts").error is None
    assert bash.run("echo still usable").text == "still usable"


def test_timeout_interrupts_bash_and_the_next_run_works(bash):
    bash.run("kept=yes")
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionTimeout) as info:
        bash.run("echo start; sleep 60", timeout=2)
    assert time.monotonic() - started < 10
    assert info.value.interrupted and not info.value.restarted  # SIGINT stopped the sleep
    assert info.value.result.stdout.startswith("start\n")  # (bash may echo a newline for the ^C)
    assert bash.run('echo "after the timeout: $kept"').text == "after the timeout: yes"


def test_timeout_restarts_bash_when_sigint_is_ignored(bash):
    bash.run("lost=no")
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionTimeout) as info:
        bash.run("trap '' INT; sleep 60", timeout=2)
    assert time.monotonic() - started < 15
    assert info.value.restarted  # the kernel did not settle within the grace period
    assert bash.run('echo "after the restart: ${lost:-unset}"').text == "after the restart: unset"


def test_cancel_ends_a_bash_execution_with_an_execution_error(bash):
    execution = bash.submit("echo one; sleep 30")
    threading.Timer(1.0, execution.cancel).start()
    started = time.monotonic()
    with pytest.raises(pybox.ExecutionError) as info:
        execution.result(timeout=20)
    assert time.monotonic() - started < 10
    assert info.value.ename == "Aborted" and info.value.result.stdout.startswith("one\n")
    assert bash.run("echo next").text == "next"


def test_a_kernel_the_image_lacks_is_refused_naming_those_it_has(sandbox):
    with pytest.raises(pybox.InvalidArgument) as info:
        sandbox.kernel(name="no-such-kernel")
    assert "no kernel named 'no-such-kernel'" in str(info.value)
    assert "bash" in str(info.value) and "python3" in str(info.value)
    with pytest.raises(pybox.InvalidArgument, match="kernel name must be"):
        sandbox.kernel(name="bash; reboot")


def test_the_python_kernels_keep_pybox_kernel_classes(sandbox):
    """ipython_kernel_config.py gives pybox's classes to the Python kernel only (bash_kernel
    loads the same profile, and must stay a bash kernel: the tests above)."""
    code = "import sys; print(type(get_ipython().kernel).__name__, type(sys.stdout).__name__)"
    assert sandbox.run(code).text == "PyboxKernel FastOutStream"
    with sandbox.kernel(name="python3") as python:
        assert python.run(code).text == "PyboxKernel FastOutStream"


def test_bash_starts_on_a_read_only_root_without_the_python_startup_code():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, read_only=True, startup_code="started = True") as sb:
        assert sb.run("print(started)").text == "True"
        with sb.kernel(name="bash") as bash:
            assert bash.run("echo ok > /app/written; cat /app/written").text == "ok"
            result = bash.run("touch /etc/pybox-test", check=False)
            assert result.error is not None and "Read-only file system" in result.stdout
            assert bash.run("started=${started:-no}; echo $started").text == "no"  # no Python ran here


def test_bash_starts_under_a_network_policy():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, network="none") as sb:
        with sb.kernel(name="bash") as bash:
            assert bash.run("id -un; pwd").text == "sandbox\n/app"
            result = bash.run("timeout 5 python -c \"import socket; socket.create_connection(('1.1.1.1', 53), 1)\"",
                              check=False)
            assert result.error is not None  # no traffic out


@pytest.mark.skipif(BACKEND == "docker-remote", reason="a build on the remote engine takes minutes")
@pytest.mark.skipif(BACKEND == "swarm", reason="the swarm backend does not build images")
@pytest.mark.skipif(BACKEND == "kubernetes", reason="the kubernetes backend does not build images")
def test_build_adds_a_kernel():
    """`pybox build --kernel`: the package installed, its kernelspec registered with an
    install module and arguments. ipykernel registering a second Python kernelspec is the
    cheapest such kernel (nothing to download: the layers before are cached)."""
    out = subprocess.run([sys.executable, "-m", "pybox", "build", "--backend", BACKEND, "--tag", KERNEL_TEST_TAG,
                          "--kernel", "ipykernel:ipykernel install --name=pyextra --display-name=Extra"],
                         capture_output=True, text=True, timeout=900, env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with pybox.Sandbox(image=KERNEL_TEST_TAG, backend=BACKEND) as sb:
        assert {"python3", "bash", "pyextra"} <= set(sb.kernel_names())
        with sb.kernel(name="pyextra") as extra:
            assert extra.language == "python"
            assert extra.run("import sys; print(sys.prefix)").text == "/opt/pybox"
