"""pybox's Podman backend, a plugin registered through the ``pybox`` entry-point
group exactly as a third party's backend would be.

The podman SDK is imported only when the backend is used; without it (``pip install
'pybox[podman]'``) this backend is disabled and says so, the others load.
"""

from pybox import hookimpl
from pybox.plugins import require_module


@hookimpl
def pybox_register_backends(register):
    require_module("podman", backend="podman", extra="podman")
    from pybox_podman.backend import PodmanBackend

    register(PodmanBackend)
