"""pybox: run Python code in a stateful IPython kernel inside a container, from
plain blocking Python.

    import pybox
    with pybox.Sandbox() as sb:
        print(sb.run("print('Hello, world!')").text)
"""

__version__ = "0.2.0"

import logging
from typing import Any

from pybox.backend import Backend, ContainerSpec, ContainerState, Endpoint, LaunchPlan, Limits, PullProgress
from pybox.errors import (
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    ChannelError,
    DownloadTooLarge,
    ExecutionError,
    ExecutionTimeout,
    ImageNotFound,
    ImagePullError,
    IncompatibleImage,
    InvalidArgument,
    KernelDied,
    KernelError,
    PoolTimeout,
    PyboxError,
    SandboxClosed,
    StartupTimeout,
    UnsafeArchive,
    UnsupportedOperation,
)
from pybox.hookspecs import hookimpl
from pybox.image_contract import DEFAULT_IMAGE
from pybox.kernel import DEFAULT_TIMEOUT, Kernel
from pybox.kernel.execution import Execution
from pybox.options import SandboxOptions
from pybox.outputs import DisplayData, ErrorOutput, ExecuteResult, Output, Result, Stderr, Stdout
from pybox.ownership import disable_process_hooks
from pybox.pool import Pool, PoolStats
from pybox.sandbox import Sandbox

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_TIMEOUT",
    "Backend",
    "BackendError",
    "BackendNotFound",
    "BackendUnavailable",
    "ChannelError",
    "ContainerSpec",
    "ContainerState",
    "DisplayData",
    "DownloadTooLarge",
    "Endpoint",
    "ErrorOutput",
    "ExecuteResult",
    "Execution",
    "ExecutionError",
    "ExecutionTimeout",
    "ImageNotFound",
    "ImagePullError",
    "IncompatibleImage",
    "InvalidArgument",
    "Kernel",
    "KernelDied",
    "KernelError",
    "LaunchPlan",
    "Limits",
    "Output",
    "Pool",
    "PoolStats",
    "PoolTimeout",
    "PullProgress",
    "PyboxError",
    "Result",
    "Sandbox",
    "SandboxClosed",
    "SandboxOptions",
    "StartupTimeout",
    "Stderr",
    "Stdout",
    "UnsafeArchive",
    "UnsupportedOperation",
    "disable_process_hooks",
    "hookimpl",
]

# pybox logs under "pybox" (and "pybox.<module>"); silent unless the application
# configures logging.
logging.getLogger("pybox").addHandler(logging.NullHandler())

# The freeact layer moved to pybox.freeact; its old names here work until pybox 0.3.
_MOVED_TO_FREEACT = ("CodeExecutor", "ExecutionEnvironment", "ExecutionLog", "Workspace", "execution_environment")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_FREEACT:
        import warnings

        from pybox import freeact

        warnings.warn(f"pybox.{name} is deprecated: use pybox.freeact.{name}", DeprecationWarning, stacklevel=2)
        return getattr(freeact, name)
    raise AttributeError(f"module 'pybox' has no attribute {name!r}")
