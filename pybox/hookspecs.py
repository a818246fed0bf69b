"""The hooks a pybox plugin can implement. Each docstring is the hook's reference.

A plugin is a module (or object) exposed in the ``pybox`` entry-point group::

    # setup.cfg of the plugin's distribution
    [options.entry_points]
    pybox =
        mybackend = pybox_mybackend

and implementing hooks with ``@pybox.hookimpl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from pybox.backend import Backend

PROJECT_NAME = "pybox"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def pybox_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register container backends: call ``register(BackendClass)`` once per class.

    ``BackendClass`` subclasses :class:`pybox.backend.Backend` and sets a unique
    ``name`` (what ``Sandbox(backend=...)`` and ``PYBOX_BACKEND`` select). Called once
    per process, the first time a backend is looked up; keep it cheap (import the
    engine's SDK in the class, not here).
    """
