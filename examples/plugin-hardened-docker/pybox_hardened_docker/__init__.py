"""A third-party pybox backend plugin, registered through the ``pybox`` entry point.

It changes nothing in pybox: it registers one more backend, ``hardened-docker``.
"""

import pybox


@pybox.hookimpl
def pybox_register_backends(register):
    from pybox_hardened_docker.backend import HardenedDockerBackend

    register(HardenedDockerBackend)
