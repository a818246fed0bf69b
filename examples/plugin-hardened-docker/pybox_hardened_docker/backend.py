"""Docker, hardened: read-only root filesystem, all capabilities dropped, no privilege
escalation, default memory and process limits. The kernel's working directory /app is
a volume of the container's own (files still move with upload/download), scratch space
is tmpfs.
"""

from pybox_docker.backend import DockerBackend

from pybox.backend import ContainerSpec

#: Limits applied when the sandbox sets none.
DEFAULT_MEMORY = "1g"
DEFAULT_PIDS = 256
# Writable scratch for what the gateway and IPython write at run time (connection
# files, matplotlib's config); the image's font cache in ~/.cache stays readable.
TMPFS = {
    "/tmp": "rw,nosuid,nodev,size=256m",
    "/home/sandbox/.local": "rw,nosuid,nodev,size=64m,uid=1000,gid=1000",
    "/home/sandbox/.config": "rw,nosuid,nodev,size=16m,uid=1000,gid=1000",
    "/home/sandbox/.jupyter": "rw,nosuid,nodev,size=16m,uid=1000,gid=1000",
}


class HardenedDockerBackend(DockerBackend):
    name = "hardened-docker"
    description = "Docker with a read-only root filesystem, no capabilities and default limits (example plugin)"

    def host_config_options(self, spec: ContainerSpec) -> dict:
        options = super().host_config_options(spec)
        options.update(
            read_only=True,
            tmpfs=TMPFS,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=spec.limits.memory or DEFAULT_MEMORY,
            pids_limit=spec.limits.pids or DEFAULT_PIDS,
        )
        return options

    def container_options(self, spec: ContainerSpec) -> dict:
        options = super().container_options(spec)
        options["volumes"] = ["/app"]  # anonymous volume, removed with the container
        return options
