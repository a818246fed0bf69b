"""pybox's remote Docker backend (``docker-remote``): an engine on another host via
DOCKER_HOST=tcp://... (TLS) or ssh://..., no shared filesystem assumed. A plugin
registered through the ``pybox`` entry-point group like any third party's."""

from pybox import hookimpl


@hookimpl
def pybox_register_backends(register):
    from pybox_docker_remote.backend import RemoteDockerBackend  # docker-py is imported only when used

    register(RemoteDockerBackend)
