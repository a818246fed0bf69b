"""The shape of the package: options checked in one place, backends disabled one by
one when their SDK is missing, process-wide hooks that can be turned off, the freeact
layer as an adapter with its old import paths deprecated, no private reach-ins."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from fakes import FakeBackendPlugin

import pybox
from pybox.errors import BackendNotFound, BackendUnavailable, InvalidArgument
from pybox.options import SandboxOptions
from pybox.plugins import Plugins, require_module

ROOT = Path(__file__).resolve().parents[2]


# -- one options type ---------------------------------------------------------------------


def test_options_are_frozen_and_normalized(tmp_path):
    options = SandboxOptions(binds={str(tmp_path): "data"}, env={"A": "1"}, network=["10.0.0.1", "PyPI.org"])
    assert options.binds[0].container == "/app/data" and options.binds[0].host == str(tmp_path)
    assert options.network == ("10.0.0.1", "pypi.org")
    assert options.limits == pybox.Limits() and options.image == pybox.DEFAULT_IMAGE
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.image = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.env["B"] = "2"  # type: ignore[index]
    assert dataclasses.replace(options, read_only=True).binds == options.binds


@pytest.mark.parametrize("kwargs, words", [
    ({"image": "two words"}, "image"),
    ({"port": 0}, "port"),
    ({"port": True}, "port"),
    ({"startup_timeout": 0}, "startup_timeout"),
    ({"startup_timeout": float("nan")}, "startup_timeout"),
    ({"interrupt_grace": -1}, "interrupt_grace"),
    ({"startup_code": 5}, "startup_code"),
    ({"read_only": "yes"}, "read_only"),
    ({"max_output": 10}, "max_output"),
    ({"network": "closed"}, "network"),
    ({"network": ["not a host!"]}, "allowlist"),
    ({"env": {"KG_AUTH_TOKEN": "x"}}, "KG_AUTH_TOKEN"),
    ({"env": {"A": 1}}, "env variable A"),
    ({"limits": {"memory": "1g"}}, "pybox.Limits"),
    ({"binds": ["/tmp"]}, "binds"),
    ({"binds": {"/no/such/path/pybox": "x"}}, "does not exist"),
])
def test_every_bad_option_is_named(kwargs, words):
    with pytest.raises(InvalidArgument, match=re.escape(words)):
        SandboxOptions(**kwargs)


def test_a_blank_or_odd_backend_name_is_not_found(fake_plugins):
    for name in ("  ", 5):
        with pytest.raises(BackendNotFound, match="fake"):
            SandboxOptions(backend=name)  # type: ignore[arg-type]


def test_sandbox_and_kernel_connect_share_the_checks(fake_plugins):
    with pytest.raises(InvalidArgument, match="max_output"):
        pybox.Sandbox(backend="fake", max_output=5)
    with pytest.raises(InvalidArgument, match="max_output"):
        pybox.Kernel.connect("127.0.0.1", 8888, "tok", max_output=5)
    with pytest.raises(InvalidArgument, match="startup_code"):
        pybox.Kernel.connect("127.0.0.1", 8888, "tok", startup_code=b"x")  # type: ignore[arg-type]
    options = SandboxOptions(backend="fake", max_output=1000)
    sandbox = pybox.Sandbox(options=options)
    assert sandbox.options is options and sandbox.max_output == 1000 and sandbox.backend_name == "fake"
    with pytest.raises(InvalidArgument, match="SandboxOptions"):
        pybox.Sandbox(options={"image": "x"})  # type: ignore[arg-type]


# -- a missing SDK disables only its backend ------------------------------------------------


class NeedsMissingSdk:
    @pybox.hookimpl
    def pybox_register_backends(self, register):
        require_module("pybox_no_such_sdk", backend="ghost", extra="ghost")
        raise AssertionError("not reached")


def test_a_backend_without_its_sdk_names_the_extra_and_the_others_still_load():
    plugins = Plugins(load_entry_points=False)
    plugins.register(NeedsMissingSdk(), name="ghost")
    plugins.register(FakeBackendPlugin(), name="fake-plugin")
    assert list(plugins.backends()) == ["fake"]
    assert "pip install 'pybox[ghost]'" in plugins.load_errors["ghost"]
    with pytest.raises(BackendUnavailable, match=re.escape("pip install 'pybox[ghost]'")) as info:
        plugins.backend("ghost")
    assert "pybox_no_such_sdk" in str(info.value)


BLOCK_SDK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {sdk!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("sdk, disabled, extra, working", [
    ("docker", ["docker", "docker-remote"], "docker", "podman"),
    ("podman", ["podman"], "podman", "docker"),
])
def test_the_first_party_backends_without_their_sdk(sdk, disabled, extra, working):
    code = BLOCK_SDK.format(sdk=sdk) + textwrap.dedent(f"""
        import pybox
        from pybox.plugins import get_plugins
        plugins = get_plugins()
        assert {working!r} in plugins.backends(), plugins.load_errors
        for name in {disabled!r}:
            assert name not in plugins.backends()
            try:
                plugins.backend(name)
            except pybox.BackendUnavailable as exc:
                assert "pip install 'pybox[{extra}]'" in str(exc), exc
            else:
                raise AssertionError(name + " loaded without its SDK")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_cli_reports_a_backend_disabled_for_its_missing_sdk():
    code = BLOCK_SDK.format(sdk="docker") + textwrap.dedent("""
        import sys
        from pybox.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    listed = subprocess.run([sys.executable, "-c", code, "backends", "--no-probe"], capture_output=True, text=True,
                            timeout=60)
    assert "docker: DISABLED: the docker backend needs the 'docker' package" in listed.stdout, listed.stderr
    assert "pip install 'pybox[docker]'" in listed.stdout
    assert re.search(r"^podman", listed.stdout, re.M)
    doctor = subprocess.run([sys.executable, "-c", code, "doctor", "--backend", "docker"], capture_output=True,
                            text=True, timeout=60)
    assert doctor.returncode == 1
    assert "[!!] backend 'docker' is disabled" in doctor.stdout and "pybox[docker]" in doctor.stdout


def test_core_install_requires_no_engine_sdk():
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = pyproject.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    assert "docker" not in dependencies and "podman" not in dependencies
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    for extra in ('docker = ["docker', 'podman = ["podman', 'all = ["docker'):
        assert extra in extras


# -- process-wide hooks can be turned off ----------------------------------------------------


HOOKS_PROBE = """
import signal, threading, pybox.ownership as o
{setup}
o.install_process_hooks()
made = []
class Engine:
    def list_containers(self, labels):
        return []
    def close(self):
        pass
o.reap_in_background(lambda: made.append(1) or Engine(), "x")
for thread in threading.enumerate():
    if thread.name == "pybox-reaper":
        thread.join(10)
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, o._atexit_installed, bool(made))
"""


@pytest.mark.parametrize("setup, env, expected", [
    ("", {}, "False True True"),
    ("", {"PYBOX_NO_PROCESS_HOOKS": "1"}, "True False False"),
    ("import pybox; pybox.disable_process_hooks()", {}, "True False False"),
    ("o.install_process_hooks(); import pybox; pybox.disable_process_hooks()", {}, "True False False"),
])
def test_process_hooks_opt_out(setup, env, expected, monkeypatch):
    import os

    child_env = {k: v for k, v in os.environ.items() if k != "PYBOX_NO_PROCESS_HOOKS"} | env
    done = subprocess.run([sys.executable, "-c", HOOKS_PROBE.format(setup=setup)], capture_output=True,
                          text=True, timeout=60, env=child_env)
    assert done.stdout.strip() == expected, done.stderr


# An SDK a backend loads at its first start registers its own exit handler after pybox's
# (the kubernetes client deletes the kubeconfig's certificates): pybox's must still run first.
EXIT_ORDER_PROBE = """
import atexit, pybox.ownership as o
class Sandbox:
    def close(self):
        print("sandbox closed", flush=True)
sandbox = Sandbox()
o.install_process_hooks()
atexit.register(print, "sdk cleaned up", flush=True)
o.track_live(sandbox)
o.install_process_hooks()
"""


def test_the_exit_handler_runs_before_those_registered_by_sdks_loaded_after_it():
    done = subprocess.run([sys.executable, "-c", EXIT_ORDER_PROBE], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["sandbox closed", "sdk cleaned up"], done.stderr


def test_importing_pybox_installs_nothing():
    code = "import atexit, signal, pybox, pybox.ownership as o; print(o._atexit_installed, " \
           "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False True", done.stderr


# -- the freeact layer is an adapter ----------------------------------------------------------


def test_freeact_names_left_the_core_namespace_with_a_deprecation():
    from pybox import freeact

    for name in ("Workspace", "CodeExecutor", "ExecutionLog", "ExecutionEnvironment", "execution_environment"):
        assert name not in pybox.__all__
        with pytest.warns(DeprecationWarning, match=f"pybox.freeact.{name}"):
            old = getattr(pybox, name)
        assert old is getattr(freeact, name)
    with pytest.raises(AttributeError):
        pybox.NoSuchThing  # noqa: B018


def test_the_old_workspace_module_still_imports_with_a_deprecation():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import pybox.workspace\nexcept DeprecationWarning as w:\n    print('warned:', w)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "warned: pybox.workspace is deprecated" in done.stdout, done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pybox.workspace

    from pybox import freeact

    assert pybox.workspace.Workspace is freeact.Workspace


def test_the_freeact_adapter_uses_public_api_only():
    source = (ROOT / "pybox" / "freeact.py").read_text()
    assert not re.search(r"\._[a-z]", source.replace("self._", "")), "private attribute of another object"
    imported = re.findall(r"^from (pybox[\w.]*) import", source, re.M)
    assert set(imported) <= {"pybox.errors", "pybox.image_contract", "pybox.kernel", "pybox.outputs",
                             "pybox.sandbox"}


# -- no private reach-ins inside pybox --------------------------------------------------------


def test_no_module_imports_or_writes_another_objects_private_names():
    problems = []
    for path in sorted((ROOT / "pybox").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"^\s*from pybox[\w.]* import .*\b_[a-z]\w*", code):
                problems.append(f"{path.name}:{number}: imports a private name: {line.strip()}")
            for match in re.finditer(r"\b(\w+)\._[a-z]\w*\s*=[^=]", code):
                if match.group(1) not in ("self", "cls"):
                    problems.append(f"{path.name}:{number}: writes a private attribute: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_there_are_no_import_cycles_in_pybox():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_import_cycles.py"), str(ROOT / "pybox")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycles" in done.stdout


# -- the agent framework adapters are outside core -------------------------------------------

INTEGRATIONS = sorted((ROOT / "pybox" / "integrations").glob("[!_]*.py"))


def test_there_are_agent_framework_adapters():
    assert {p.stem for p in INTEGRATIONS} >= {"smolagents", "deepagents"}


@pytest.mark.parametrize("path", INTEGRATIONS, ids=lambda p: p.stem)
def test_an_adapter_uses_only_pybox_public_names(path):
    source = path.read_text()
    imported = re.findall(r"^from (pybox[\w.]*) import", source, re.M)
    assert set(imported) == {"pybox"}, "only the top-level public names of pybox"
    names = re.search(r"^from pybox import \(?([^)]*?)\)?$", source, re.M | re.S)
    assert names and set(re.findall(r"\w+", names.group(1))) <= set(pybox.__all__)
    assert not re.search(r"\b(?!self\b)\w+\._[a-z]", source), "private attribute of another object"


def test_core_never_imports_the_adapters_or_their_frameworks():
    core = [p for p in (ROOT / "pybox").rglob("*.py") if "integrations" not in p.parts]
    offenders = [p.name for p in core if re.search(r"^\s*(from|import) (pybox\.integrations|smolagents|deepagents|"
                                                   r"langchain)", p.read_text(), re.M)]
    assert not offenders
    code = ("import sys, pybox, pybox.integrations; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('smolagents', 'deepagents', 'langchain')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("framework", ["smolagents", "deepagents"])
def test_an_adapter_without_its_framework_names_the_extra(framework):
    code = BLOCK_SDK.format(sdk=framework) + textwrap.dedent(f"""
        try:
            import pybox.integrations.{framework}
        except ModuleNotFoundError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"pip install 'pybox[{framework}]'" in done.stdout
