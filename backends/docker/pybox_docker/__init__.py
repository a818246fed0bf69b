"""pybox's local Docker backend, a plugin registered through the ``pybox`` entry-point
group exactly as a third party's backend would be."""

from pybox import hookimpl


@hookimpl
def pybox_register_backends(register):
    from pybox_docker.backend import DockerBackend  # docker-py is imported only when used

    register(DockerBackend)
