"""A third-party pybox plugin, registered through the ``pybox`` entry point: every
sandbox hardened, on Docker and Podman alike.

It adds no backend. It adjusts the launch plan pybox decided (hook
``pybox_adjust_launch_plan``): read-only root filesystem with pybox's own scratch
mounts and a volume at /app, every capability dropped but the few the image's init
checks for (pybox's plan already grants no others; kept here so that another
plugin's additions are undone), no privilege escalation, default memory and process
limits. Core then checks the plan against what the
backend enforces, so a backend that cannot do read-only roots refuses to start
rather than starting unhardened. Turn it off with ``PYBOX_DISABLE_PLUGINS=hardened``.
"""

import pybox
from pybox.image_contract import INIT_CAPS, NETWORK_POLICY_CAPS, SCRATCH_MOUNTS, WORKDIR
from pybox.launch import Scratch

#: Limits applied when the sandbox sets none.
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_PIDS = 256


@pybox.hookimpl
def pybox_adjust_launch_plan(plan, backend):
    plan.read_only = True
    # pybox's scratch mounts a read-only root needs (/tmp, the home's...), where the plan
    # lacks them: a writable plan already has the gateway's home among them.
    present = {scratch.path for scratch in plan.scratch}
    plan.scratch += [Scratch(path, size, owned) for path, size, owned in SCRATCH_MOUNTS if path not in present]
    if WORKDIR not in plan.volumes:
        plan.volumes.append(WORKDIR)
    plan.cap_drop = ["ALL"]
    # What the init needs to prepare the sandbox and run the gateway and kernels as
    # two users (it refuses to start without); the kernels keep none.
    plan.cap_add = [*INIT_CAPS, *(NETWORK_POLICY_CAPS if plan.network_policed else ())]
    plan.no_new_privileges = True
    if plan.memory_bytes is None:
        plan.memory_bytes = DEFAULT_MEMORY_BYTES
        plan.memory_swap_bytes = DEFAULT_MEMORY_BYTES
    if plan.pids is None:
        plan.pids = DEFAULT_PIDS
