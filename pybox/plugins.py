"""Typed access to pybox's plugins: core asks this module for backends, never
``pm.hook.*`` directly and never imports a backend.

Plugins come from the ``pybox`` entry-point group. ``PYBOX_DISABLE_PLUGINS``
(comma-separated entry-point names) blocks some; a plugin that fails to import or to
register (e.g. its engine's SDK is not installed: ``require_module``) is recorded and
reported when its backend is asked for, instead of breaking the rest.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from importlib import metadata

import pluggy

from pybox import hookspecs
from pybox.backend import Backend
from pybox.errors import BackendError, BackendNotFound, BackendUnavailable, PyboxError
from pybox.spec import LaunchPlan

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pybox"
#: Backend used when neither ``Sandbox(backend=...)`` nor ``PYBOX_BACKEND`` picks one.
DEFAULT_BACKEND = "docker"


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend and where it came from."""

    name: str
    cls: type[Backend]
    plugin: str  # plugin (entry-point) name
    distribution: str  # "pybox 0.1.0", or "" when registered in-process


class Plugins:
    """pybox's plugin manager: loads plugins once, hands out backend classes."""

    def __init__(self, load_entry_points: bool = True):
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._distributions: dict[str, str] = {}
        self._load_errors: dict[str, str] = {}
        self._load_exceptions: dict[str, PyboxError] = {}
        self._backends: dict[str, BackendInfo] | None = None
        self._lock = threading.Lock()
        for name in _blocked():
            self._pm.set_blocked(name)
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self._pm.is_blocked(ep.name) or self._pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the others
                self._load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("pybox plugin %r failed to load: %s", ep.name, self._load_errors[ep.name])
                continue
            self._pm.register(plugin, name=ep.name)
            dist = getattr(ep, "dist", None)
            self._distributions[ep.name] = f"{dist.name} {dist.version}" if dist else ""

    @property
    def load_errors(self) -> dict[str, str]:
        """Plugins that failed to load or to register (e.g. their SDK is missing), by
        plugin name: the reason."""
        self.backends()
        return dict(self._load_errors)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object in-process (tests, applications embedding a backend)."""
        with self._lock:
            self._pm.register(plugin, name=name)
            self._backends = None

    def backends(self) -> dict[str, BackendInfo]:
        """All registered backends by name."""
        with self._lock:
            if self._backends is None:
                self._backends = self._collect()
            return dict(self._backends)

    def _collect(self) -> dict[str, BackendInfo]:
        found: dict[str, BackendInfo] = {}
        for impl in self._pm.hook.pybox_register_backends.get_hookimpls():
            plugin_name = self._pm.get_name(impl.plugin) or ""

            def register(cls: type[Backend], _plugin: str = plugin_name) -> None:
                if not (isinstance(cls, type) and issubclass(cls, Backend)):
                    raise _MisRegistered(f"plugin {_plugin!r} registered {cls!r}, which is not a pybox.backend.Backend")
                if not cls.name:
                    raise _MisRegistered(f"plugin {_plugin!r} registered {cls.__name__} without a name")
                if cls.name in found and found[cls.name].cls is not cls:
                    raise _MisRegistered(
                        f"backend name {cls.name!r} registered twice: by plugin "
                        f"{found[cls.name].plugin!r} and by {_plugin!r}"
                    )
                found[cls.name] = BackendInfo(cls.name, cls, _plugin, self._distributions.get(_plugin, ""))

            try:
                impl.function(register=register)
            except _MisRegistered:
                raise  # the plugin registered something wrong: its author must know
            except Exception as exc:  # a plugin that cannot register must not break the others
                self._load_errors[plugin_name] = str(exc) if isinstance(exc, PyboxError) else (
                    f"{type(exc).__name__}: {exc}")
                if isinstance(exc, PyboxError):
                    self._load_exceptions[plugin_name] = exc
                log.info("pybox plugin %r disabled: %s", plugin_name, self._load_errors[plugin_name])
        return found

    def adjust_launch_plan(self, plan: LaunchPlan, backend: str) -> None:
        """Let every plugin adjust ``plan`` (hook ``pybox_adjust_launch_plan``)."""
        self._pm.hook.pybox_adjust_launch_plan(plan=plan, backend=backend)

    def backend(self, name: str | None = None) -> type[Backend]:
        """The backend class called ``name`` (None: ``PYBOX_BACKEND`` or the default)."""
        name = resolve_backend_name(name)
        backends = self.backends()
        if name in backends:
            return backends[name].cls
        if name in self._load_exceptions:
            raise self._load_exceptions[name].with_traceback(None)
        if name in self._load_errors:
            raise BackendError(f"the plugin providing backend {name!r} failed to load: {self._load_errors[name]}")
        raise BackendNotFound(name, list(backends))


class _MisRegistered(BackendError):
    """A plugin called ``register`` with something that is not a usable backend."""


def require_module(module: str, *, backend: str, extra: str) -> None:
    """For a backend plugin's register hook: raise BackendUnavailable naming the extra
    to install when the engine SDK ``module`` is missing. The plugin is then disabled
    and says why; the other backends still load."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        found = False
    if not found:
        raise BackendUnavailable(
            f"the {backend} backend needs the {module!r} package, which is not installed",
            f"Install it with `pip install 'pybox[{extra}]'`",
        )


def resolve_backend_name(name: str | None) -> str:
    if name is None:
        name = os.environ.get("PYBOX_BACKEND") or DEFAULT_BACKEND
    if not isinstance(name, str) or not name.strip():
        raise BackendNotFound(repr(name), list(get_plugins().backends()))
    return name.strip()


def _blocked() -> list[str]:
    return [n.strip() for n in os.environ.get("PYBOX_DISABLE_PLUGINS", "").split(",") if n.strip()]


_plugins: Plugins | None = None
_plugins_lock = threading.Lock()


def get_plugins() -> Plugins:
    """The process-wide plugin manager, loaded on first use."""
    global _plugins
    with _plugins_lock:
        if _plugins is None:
            _plugins = Plugins()
        return _plugins
