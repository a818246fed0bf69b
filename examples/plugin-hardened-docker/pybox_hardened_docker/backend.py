"""Docker, hardened: read-only root filesystem, all capabilities dropped, no privilege
escalation, default memory and process limits. The kernel's working directory /app is
a volume of the container's own (files still move with upload/download), scratch space
is tmpfs.
"""

from pybox_docker.backend import READ_ONLY_TMPFS, DockerBackend

from pybox.backend import WORKDIR, ContainerSpec

#: Limits applied when the sandbox sets none.
DEFAULT_MEMORY = "1g"
DEFAULT_PIDS = 256


class HardenedDockerBackend(DockerBackend):
    name = "hardened-docker"
    description = "Docker with a read-only root filesystem, no capabilities and default limits (example plugin)"

    def host_config_options(self, spec: ContainerSpec) -> dict:
        options = super().host_config_options(spec)
        options.update(
            read_only=True,
            tmpfs=READ_ONLY_TMPFS,  # the scratch directories pybox's own read-only mode uses
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=spec.limits.memory or DEFAULT_MEMORY,
            pids_limit=spec.limits.pids or DEFAULT_PIDS,
        )
        return options

    def container_options(self, spec: ContainerSpec) -> dict:
        options = super().container_options(spec)
        options["volumes"] = [WORKDIR]  # anonymous volume, removed with the container
        return options
