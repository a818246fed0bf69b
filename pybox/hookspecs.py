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
    from pybox.spec import LaunchPlan

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


@hookspec
def pybox_adjust_launch_plan(plan: LaunchPlan, backend: str) -> None:
    """Adjust how a sandbox container is started, in place, before the backend starts it.

    ``plan`` is the :class:`pybox.spec.LaunchPlan` core decided for the sandbox's
    options (command and user, capabilities, mounts, limits in plain units...);
    ``backend`` is the name of the backend about to start it. Every installed plugin
    implementing this hook is called, for every sandbox on every backend (filter on
    ``backend`` to narrow it). The plan is then checked against what the backend can
    enforce: a plan that needs a feature it lacks is refused, never started without.
    Keep what core decided unless you mean to change it: e.g. the image's init needs
    the capabilities in ``cap_add`` (``image_contract.INIT_CAPS``, and NET_ADMIN for a
    network policy) and refuses to start without them; it keeps none for the kernels.
    """
