"""pybox's Podman backend, a plugin registered through the ``pybox`` entry-point
group exactly as a third party's backend would be."""

from pybox import hookimpl


@hookimpl
def pybox_register_backends(register):
    from pybox_podman.backend import PodmanBackend  # the podman SDK is imported only when used

    register(PodmanBackend)
