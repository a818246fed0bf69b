"""Kernels other than Python: ``Sandbox.kernel(name=...)``, the gateway's kernelspecs, and
``pybox build --kernel`` (its parsing and what reaches the build context). No engine."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from fakes import (
    FakeBackend,
    FakeBackendPlugin,
    FakeGateway,
    ScriptedChannel,
    busy,
    error,
    execute_input,
    idle,
    ok_run,
    reply,
    stdout,
)
from test_gateway import FakeResponse, gateway_with

import pybox
import pybox.sandbox
from pybox import ExecutionError, InvalidArgument, Kernel
from pybox.build import KernelPackage, kernels_file
from pybox.cli import main as cli_main
from pybox.kernel.gateway import Gateway
from pybox.options import check_kernel_name

SANDBOX_IMAGE = Path(__file__).resolve().parents[2] / "images" / "sandbox"

BAD_NAMES = [5, ["bash"], b"bash", "", "ba sh", "../bash", "bash/x", "bash;rm -rf /", "x" * 65, "bäsh"]


@pytest.fixture
def started(fake_plugins, monkeypatch):
    """A started sandbox on the fake backend whose gateway is a FakeGateway, and whose
    kernels talk over ScriptedChannels; with ``startup_code`` each channel starts with
    one ``ok_run`` script queued (for the start-up code, when it runs)."""
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    channels: list[ScriptedChannel] = []
    startup = []

    def channel(*args, **kwargs):
        channels.append(ScriptedChannel(*args, **kwargs))
        if startup:
            channels[-1].add_script(*ok_run())
        return channels[-1]

    monkeypatch.setattr(pybox.sandbox, "Kernel", functools.partial(Kernel, channel_factory=channel))
    made = []

    def make(**kwargs):
        startup[:] = [kwargs.get("startup_code")] if kwargs.get("startup_code") else []
        sb = pybox.Sandbox(backend="fake", **kwargs).start()
        sb._gateway.close()
        sb._gateway = FakeGateway()
        made.append(sb)
        return sb, sb._gateway, channels

    yield make
    for sb in made:
        sb.close()


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["python3", "bash", "ir", "julia-1.10", "my_kernel.v2", "Bash"])
def test_kernelspec_names_are_accepted(name):
    assert check_kernel_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_kernel_names_are_refused_before_anything_happens(fake_plugins, name):
    sb = pybox.Sandbox(backend="fake")  # not even started: the name is checked first
    with pytest.raises(InvalidArgument, match="kernel name must be"):
        sb.kernel(name=name)
    assert FakeBackend.instances == []


def test_bad_kernel_names_reach_no_gateway(started):
    sb, gateway, _ = started()
    for name in BAD_NAMES:
        with pytest.raises(InvalidArgument, match="kernel name must be"):
            sb.kernel(name=name)
    assert gateway.calls == []


def test_connect_checks_the_name_before_connecting():
    with pytest.raises(InvalidArgument, match="kernel name must be"):
        Kernel.connect("127.0.0.1", 8888, "token", name="no such/kernel")
    with pytest.raises(InvalidArgument, match="not with kernel_id"):
        Kernel.connect("127.0.0.1", 8888, "token", kernel_id="k1", name="bash")


# -- kernels the image has, and one it lacks --------------------------------------------------


def test_unknown_kernel_names_the_kernels_the_image_has(started):
    sb, gateway, _ = started(image="pybox-custom:1")
    with pytest.raises(InvalidArgument) as info:
        sb.kernel(name="ruby")
    message = str(info.value)
    assert "no kernel named 'ruby' in image 'pybox-custom:1'" in message
    assert "(it has: bash, python3)" in message
    assert "pybox build --kernel" in message
    assert isinstance(info.value, ValueError)
    assert ("create", "ruby") not in gateway.calls and gateway.count("create") == 0
    assert sb.kernel_names() == ["bash", "python3"]


def test_a_named_kernel_is_that_kernelspec_without_the_python_startup_code(started):
    sb, gateway, channels = started(startup_code="x = 1")
    with sb.kernel(name="bash") as bash:
        assert ("create", "bash") in gateway.calls
        assert (bash.name, bash.language) == ("bash", "bash")
        assert "(bash)" in repr(bash)
        channel = channels[-1]
        assert channel.requests == []  # Python start-up code is not sent to bash
        channel._scripts.clear()  # the start-up script the fixture queued stays unplayed
        channel.add_script(*ok_run(stdout("hi\n")))
        assert bash.run("echo hi").text == "hi"
        with pytest.raises(InvalidArgument, match="needs a Python kernel"):
            bash.module_sources(["os"])
    with sb.kernel(name="python3") as python:  # a Python kernelspec by name: start-up code runs
        assert python.language == "python"
        assert [r["content"]["code"] for r in channels[-1].requests] == ["x = 1"]
    with sb.kernel() as default:  # no name: the gateway's default, as before
        assert ("create", "") in gateway.calls
        assert default.name is None and default.language is None
        assert [r["content"]["code"] for r in channels[-1].requests] == ["x = 1"]


def test_bash_exit_status_is_an_execution_error(started):
    """What bash_kernel 0.10 sends when the cell's last command fails: an error output
    and an error reply, both with an empty ename and the exit status as evalue."""
    sb, _, channels = started()
    with sb.kernel(name="bash") as bash:
        channels[-1].add_script(
            busy(), execute_input("ls /nonexistent"),
            stdout("ls: cannot access '/nonexistent': No such file or directory\n"),
            error("", "2", []), reply("error", ename="", evalue="2", traceback=[]), idle())
        with pytest.raises(ExecutionError) as info:
            bash.run("ls /nonexistent")
    assert (info.value.ename, info.value.evalue, info.value.traceback) == ("", "2", "")
    assert str(info.value) == "the kernel reported an error: 2"
    assert "No such file" in info.value.result.stdout


def test_execution_error_messages():
    assert str(ExecutionError("ValueError", "bad", "")) == "ValueError: bad"
    assert str(ExecutionError("KeyboardInterrupt", "", "")) == "KeyboardInterrupt"
    assert str(ExecutionError("", "", "")) == "the kernel reported an error"


def test_gateway_lists_kernelspecs_and_names_them_for_an_unknown_one():
    listing = {"default": "python3", "kernelspecs": {
        "python3": {"name": "python3", "spec": {"language": "python", "display_name": "Python 3"}, "resources": {}},
        "bash": {"name": "bash", "spec": {"language": "bash", "display_name": "Bash"}, "resources": {}},
    }}
    gateway, session = gateway_with(*[FakeResponse(200, listing) for _ in range(3)])
    assert gateway.kernelspecs() == {"python3": {"language": "python", "display_name": "Python 3"},
                                     "bash": {"language": "bash", "display_name": "Bash"}}
    assert gateway.kernelspec("BASH")["language"] == "bash"  # case-insensitive, as jupyter_client
    with pytest.raises(InvalidArgument, match=re.escape(
            "no kernel named 'r' on the gateway at http://127.0.0.1:8888 (it has: bash, python3)")):
        gateway.kernelspec("r")
    assert {(method, url.removeprefix(gateway.base_url)) for method, url, _ in session.requests} == {
        ("GET", "/api/kernelspecs")}


# -- pybox build --kernel ------------------------------------------------------------------


@pytest.mark.parametrize("text, package", [
    ("bash_kernel", KernelPackage("bash_kernel")),
    ("bash_kernel==0.10.0:bash_kernel.install", KernelPackage("bash_kernel==0.10.0", ("bash_kernel.install",))),
    ("metakernel_python>=0.30,<1:metakernel_python install", KernelPackage(
        "metakernel_python>=0.30,<1", ("metakernel_python", "install"))),
    ("pkg[extra]~=1.2: pkg.install --name=py-two", KernelPackage("pkg[extra]~=1.2", ("pkg.install", "--name=py-two"))),
])
def test_kernel_packages_parse(text, package):
    assert KernelPackage.parse(text) == package


@pytest.mark.parametrize("text, message", [
    ("", "not a package requirement"),
    ("pkg @ https://example.com/pkg.whl", "not a package requirement"),
    ("https://example.com/pkg.whl", "not a Python module name"),  # "https" parses as a name
    ("pkg;rm -rf /", "not a package requirement"),
    ("$(reboot)", "not a package requirement"),
    ("pkg:", "nothing after ':'"),
    ("pkg:1module", "not a Python module name"),
    ("pkg:mod.install $(reboot)", "may only have"),
    ("pkg:mod.install 'quoted'", "may only have"),
])
def test_malformed_kernel_packages_are_refused(text, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        KernelPackage.parse(text)


def test_kernels_file_has_one_checked_line_each():
    assert kernels_file([]) == ""
    assert kernels_file(["a_kernel", "b_kernel==1:b_kernel.install --user-less"]) == (
        "a_kernel\nb_kernel==1 b_kernel.install --user-less\n")
    with pytest.raises(InvalidArgument, match="list"):
        kernels_file("bash_kernel")  # type: ignore[arg-type]


class BuildingBackend(FakeBackend):
    """Records what a build gets: the context's kernels file and Dockerfile."""

    name = "fakebuild"
    built: list[dict] = []

    def build_image(self, context, tag, buildargs, progress):
        type(self).built.append({"tag": tag, "buildargs": buildargs,
                                 "kernels": (context / "extra-kernels.txt").read_text(),
                                 "dockerfile": (context / "Dockerfile").read_text()})


@pytest.fixture
def building(fake_plugins, monkeypatch):
    fake_plugins.register(FakeBackendPlugin(BuildingBackend), name="building-plugin")
    monkeypatch.setattr(BuildingBackend, "built", [])
    return BuildingBackend.built


def test_cli_build_kernel_flags_reach_the_build_context(building):
    code = cli_main(["build", "--backend", "fakebuild", "--base", "base:1", "--no-ca-bundle", "-q",
                     "--tag", "pybox-k:1", "--kernel", "octave_kernel==0.36.0",
                     "-k", "bash_kernel==0.10.0:bash_kernel.install"])
    assert code == 0
    (build,) = building
    assert build["tag"] == "pybox-k:1"
    assert build["buildargs"] == {"BASE_IMAGE": "base:1", "PYBOX_VERSION": pybox.__version__}
    assert build["kernels"] == "octave_kernel==0.36.0\nbash_kernel==0.10.0 bash_kernel.install\n"
    assert "COPY extra-kernels.txt" in build["dockerfile"]


def test_cli_build_without_kernels_writes_an_empty_kernels_file(building):
    assert cli_main(["build", "--backend", "fakebuild", "--base", "base:1", "--no-ca-bundle", "-q"]) == 0
    assert building[0]["kernels"] == ""


def test_cli_build_refuses_a_malformed_kernel_before_building(building, capsys):
    code = cli_main(["build", "--backend", "fakebuild", "--base", "base:1", "--no-ca-bundle", "-q",
                     "--kernel", "pkg @ https://example.com/x.whl"])
    assert code == 1
    assert "not a package requirement" in capsys.readouterr().err
    assert building == []


def test_the_image_has_the_bash_kernel_and_installs_extra_kernels_before_its_internals_check():
    dockerfile = (SANDBOX_IMAGE / "Dockerfile").read_text()
    requirements = (SANDBOX_IMAGE / "requirements.txt").read_text()
    assert re.search(r"^bash_kernel==\d+\.\d+\.\d+$", requirements, re.MULTILINE)
    assert "python -m bash_kernel.install --sys-prefix" in dockerfile
    kernels = dockerfile.index("-r /tmp/pybox-build/kernel-requirements.txt")
    assert dockerfile.index("-r /tmp/pybox-build/extra-requirements.txt") < kernels
    assert kernels < dockerfile.index("/opt/pybox/bin/python /tmp/pybox-boot/pybox_internals.py")
    assert "-m $installer --sys-prefix" in dockerfile


def test_an_aborted_execution_is_an_execution_error(started):
    """bash_kernel answers an interrupt (cancel()) with reply status 'abort' and no error
    output; ipykernel answers a request skipped after an error with 'aborted'. Neither
    ran to its end: run() raises."""
    sb, _, channels = started()
    with sb.kernel(name="bash") as bash:
        for status in ("abort", "aborted"):
            channels[-1].add_script(busy(), execute_input("sleep 30"), stdout("one\n"), reply(status), idle())
            with pytest.raises(ExecutionError) as info:
                bash.run("echo one; sleep 30")
            assert info.value.ename == "Aborted" and repr(status) in info.value.evalue
            assert info.value.result.stdout == "one\n"
