"""Backend plugins: registration, lookup, entry points, and the core/backend boundary."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
import pybox.hookspecs
import pybox.plugins
from pybox import BackendError, BackendNotFound
from pybox.plugins import DEFAULT_BACKEND, ENTRY_POINT_GROUP, Plugins, resolve_backend_name

PYBOX_DIR = Path(pybox.__file__).parent


class OtherBackend(FakeBackend):
    name = "other"


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.delenv("PYBOX_BACKEND", raising=False)
    monkeypatch.delenv("PYBOX_DISABLE_PLUGINS", raising=False)
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(FakeBackend, OtherBackend), name="fakes")
    return plugins


def test_registered_backend_is_found_by_name(plugins):
    assert plugins.backend("fake") is FakeBackend
    assert plugins.backend(" other ") is OtherBackend
    info = plugins.backends()["fake"]
    assert (info.name, info.cls, info.plugin, info.distribution) == ("fake", FakeBackend, "fakes", "")
    assert sorted(plugins.backends()) == ["fake", "other"]


def test_unknown_backend_lists_the_available_ones(plugins):
    with pytest.raises(BackendNotFound) as info:
        plugins.backend("podman")
    err = info.value
    assert isinstance(err, BackendError)
    assert err.name == "podman"
    assert sorted(err.available) == ["fake", "other"]
    assert "'podman'" in str(err)
    assert "fake, other" in str(err)


def test_no_plugins_says_none_installed():
    with pytest.raises(BackendNotFound, match="none installed"):
        Plugins(load_entry_points=False).backend("docker")


def test_pybox_backend_env_picks_the_backend(plugins, monkeypatch):
    monkeypatch.setenv("PYBOX_BACKEND", "other")
    assert plugins.backend() is OtherBackend
    assert plugins.backend("fake") is FakeBackend  # an explicit name wins


def test_default_backend_is_docker(monkeypatch):
    monkeypatch.delenv("PYBOX_BACKEND", raising=False)
    assert DEFAULT_BACKEND == "docker"
    assert resolve_backend_name(None) == "docker"
    monkeypatch.setenv("PYBOX_BACKEND", "")
    assert resolve_backend_name(None) == "docker"


@pytest.mark.parametrize("name", ["", "   ", 3])
def test_blank_or_non_str_backend_name_is_not_found(fake_plugins, name):
    with pytest.raises(BackendNotFound) as info:
        resolve_backend_name(name)
    assert info.value.available == ["fake"]


@pytest.mark.parametrize("registered, message", [
    (dict, "not a pybox.backend.Backend"),
    ("fake", "not a pybox.backend.Backend"),
    (type("Nameless", (FakeBackend,), {"name": ""}), "without a name"),
])
def test_registering_a_bad_class_is_a_backend_error(registered, message):
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(registered), name="bad-plugin")
    with pytest.raises(BackendError, match=message) as info:
        plugins.backends()
    assert "bad-plugin" in str(info.value)


def test_two_classes_with_one_name_is_a_backend_error():
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(FakeBackend), name="first")
    plugins.register(FakeBackendPlugin(type("Impostor", (FakeBackend,), {})), name="second")
    with pytest.raises(BackendError, match="registered twice"):
        plugins.backends()


def test_registering_after_lookup_is_seen(plugins):
    assert "third" not in plugins.backends()
    plugins.register(FakeBackendPlugin(type("Third", (FakeBackend,), {"name": "third"})), name="late")
    assert plugins.backend("third").name == "third"


def test_entry_points_provide_the_docker_backend(monkeypatch):
    monkeypatch.delenv("PYBOX_DISABLE_PLUGINS", raising=False)
    plugins = Plugins()
    info = plugins.backends()["docker"]
    assert info.plugin == "docker"
    assert info.distribution.startswith("pybox ")
    assert info.cls.name == "docker"
    assert info.cls.__module__.startswith("pybox_docker")
    # A backend whose optional SDK is missing here (an extra not installed) says how to
    # install it; nothing else fails to load.
    assert all("is not installed. Install it with" in why for why in plugins.load_errors.values()), \
        plugins.load_errors


def test_disabled_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setenv("PYBOX_DISABLE_PLUGINS", " docker , other")
    with pytest.raises(BackendNotFound):
        Plugins().backend("docker")


def test_a_broken_plugin_is_reported_when_its_backend_is_asked_for(monkeypatch):
    class BrokenEntryPoint:
        name = "broken"
        dist = None

        def load(self):
            raise ImportError("No module named 'pybox_broken'")

    monkeypatch.setattr(pybox.plugins.metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    plugins = Plugins()
    assert plugins.load_errors == {"broken": "ImportError: No module named 'pybox_broken'"}
    with pytest.raises(BackendError, match="failed to load: ImportError") as info:
        plugins.backend("broken")
    assert not isinstance(info.value, BackendNotFound)


def test_get_plugins_is_loaded_once(monkeypatch):
    monkeypatch.setattr(pybox.plugins, "_plugins", None)
    first = pybox.plugins.get_plugins()
    assert pybox.plugins.get_plugins() is first


def test_entry_point_group_is_declared_for_docker():
    from importlib import metadata

    names = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names.get("docker") == "pybox_docker:local"
    assert names.get("docker-remote") == "pybox_docker:remote_plugin"
    assert names.get("swarm") == "pybox_docker:swarm_plugin"
    assert names.get("podman") == "pybox_podman"


def test_entry_points_still_register_after_the_backend_modules_were_imported():
    # pybox_docker.remote / .swarm (the modules) once shadowed the plugin objects of the same
    # name: a second plugin manager in the process registered neither backend.
    pytest.importorskip("docker")
    import pybox_docker.remote  # noqa: F401
    import pybox_docker.swarm  # noqa: F401

    for _ in range(2):
        backends = Plugins().backends()
        assert {"docker", "docker-remote", "swarm"} <= set(backends), sorted(backends)


# -- the boundary -------------------------------------------------------------------------


def test_core_sources_never_name_pybox_docker():
    sources = sorted(PYBOX_DIR.rglob("*.py"))
    assert PYBOX_DIR / "sandbox.py" in sources and PYBOX_DIR / "kernel" / "kernel.py" in sources
    offenders = [str(p.relative_to(PYBOX_DIR)) for p in sources if "pybox_docker" in p.read_text()]
    assert offenders == []


def test_importing_pybox_does_not_import_a_backend():
    code = "import sys, pybox; print(sorted(m for m in sys.modules if m.startswith(('pybox_docker', 'docker'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- hook specifications ------------------------------------------------------------------


def test_every_hook_has_a_docstring():
    marker = f"{pybox.hookspecs.PROJECT_NAME}_spec"
    hooks = {name: fn for name, fn in vars(pybox.hookspecs).items()
             if inspect.isfunction(fn) and hasattr(fn, marker)}
    assert "pybox_register_backends" in hooks
    for name, fn in hooks.items():
        doc = inspect.getdoc(fn)
        assert doc and len(doc.split()) >= 5, f"hook {name} has no real docstring"


def test_hookimpl_is_exported():
    assert pybox.hookimpl is pybox.hookspecs.hookimpl
