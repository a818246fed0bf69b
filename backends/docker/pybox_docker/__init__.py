"""pybox's Docker backends, plugins registered through the ``pybox`` entry-point group
exactly as a third party's would be:

- ``docker`` (entry point ``pybox_docker:local``): the engine DOCKER_HOST or the local
  socket names;
- ``docker-remote`` (entry point ``pybox_docker:remote_plugin``): an engine on another host,
  the same backend minus the shared-filesystem and shared-network assumptions;
- ``swarm`` (entry point ``pybox_docker:swarm_plugin``): a Docker Swarm, one service per
  sandbox, DOCKER_HOST naming a manager.

docker-py is imported only when a backend is used; without it (``pip install
'pybox[docker]'``) these backends are disabled and say so, the others load.
"""

from pybox import hookimpl
from pybox.plugins import require_module


class LocalDockerPlugin:
    @hookimpl
    def pybox_register_backends(self, register):
        require_module("docker", backend="docker", extra="docker")
        from pybox_docker.backend import DockerBackend

        register(DockerBackend)


class RemoteDockerPlugin:
    @hookimpl
    def pybox_register_backends(self, register):
        require_module("docker", backend="docker-remote", extra="docker")
        from pybox_docker.remote import RemoteDockerBackend

        register(RemoteDockerBackend)


class SwarmPlugin:
    @hookimpl
    def pybox_register_backends(self, register):
        require_module("docker", backend="swarm", extra="docker")
        from pybox_docker.swarm import SwarmBackend

        register(SwarmBackend)


# The plugin objects' names must differ from the submodules' (remote.py, swarm.py): importing
# ``pybox_docker.remote`` sets the package's attribute ``remote`` to that module, and an entry
# point ``pybox_docker:remote`` resolved afterwards (a second plugin manager in one process)
# got the module, which registers nothing.
local = LocalDockerPlugin()
remote_plugin = RemoteDockerPlugin()
swarm_plugin = SwarmPlugin()
